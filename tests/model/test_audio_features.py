"""wav2vec2 audio features: reference parity in once and stream mode, loudness, windows, loading errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.model.audio import (
    DEFAULT_AUDIO,
    AudioFeatureConfig,
    StreamingAudioEncoder,
    Wav2Vec2LoadError,
    encode_audio,
    encode_stream_window,
    hidden_states,
    load_wav2vec2,
    loudness_normalize,
    once_chunks,
    pad_for_once,
    window_features,
)

from support.tensors import assert_close

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "audio"


@pytest.fixture(scope="module")
def w2v():
    torch.set_num_threads(1)
    model, extractor = load_wav2vec2(PARITY / "wav2vec2_tiny")
    return model, extractor, load_file(PARITY / "io.safetensors")


def test_fixture_constants_match_defaults():
    cfg = json.loads((PARITY / "config.json").read_text())
    d = DEFAULT_AUDIO
    assert (d.sample_rate, d.fps, d.frame_num, d.motion_frames) == (
        cfg["sample_rate"], cfg["fps"], cfg["frame_num"], cfg["motion_frames_num"])
    assert d.slice_samples == cfg["slice_samples"] and d.target_lufs == cfg["lufs_target"]
    assert list(d.window_offsets) == cfg["window_offsets"]
    assert d.buffer_samples == cfg["stream"]["buffer_samples"]


@pytest.mark.timeout(120)
def test_once_mode_parity(w2v):
    model, extractor, io = w2v
    audio = pad_for_once(io["waveform"].numpy())
    assert audio.shape == io["once_normalised_waveform"].shape

    normalised, lufs = loudness_normalize(audio)
    print(f"audio once loudness: {lufs:.4f} LUFS (reference {io['once_loudness_lufs'].item():.4f})")
    assert abs(lufs - io["once_loudness_lufs"].item()) < 1e-3
    assert_close("once_normalised_waveform", normalised, io["once_normalised_waveform"])

    stack, inter = hidden_states(model, extractor, normalised, intermediates=True)
    assert_close("once_input_values", inter["input_values"], io["once_input_values"])
    assert_close("once_cnn_features_50hz", inter["cnn_features_50hz"], io["once_cnn_features_50hz"])
    assert_close("once_cnn_features_25hz", inter["cnn_features_25hz"], io["once_cnn_features_25hz"])
    assert_close("once_hidden_states_stack", stack, io["once_hidden_states_stack"])

    windows = encode_audio(model, extractor, audio)
    assert_close("once_windows", windows, io["once_windows"])
    chunks = once_chunks(windows)
    assert len(chunks) == 2 and all(c.shape == (1, 33, 5, 2, 32) for c in chunks)
    assert_close("once_chunk0", chunks[0], io["once_chunk0"])


@pytest.mark.timeout(120)
def test_stream_mode_parity(w2v):
    model, extractor, io = w2v
    wav = io["waveform"].numpy()
    enc = StreamingAudioEncoder(model, extractor)
    assert (enc.start, enc.end) == (167, 200)
    for k in range(2):
        out = enc.push(wav[k * DEFAULT_AUDIO.slice_samples : (k + 1) * DEFAULT_AUDIO.slice_samples])
        normalised, lufs = loudness_normalize(enc.buffer)
        print(f"audio stream chunk{k} loudness: {lufs:.4f} LUFS")
        assert abs(lufs - io[f"stream_chunk{k}_loudness_lufs"].item()) < 1e-3
        assert_close(f"stream_chunk{k}_normalised_buffer", normalised, io[f"stream_chunk{k}_normalised_buffer"])
        stack, inter = hidden_states(model, extractor, normalised, intermediates=True)
        assert_close(f"stream_chunk{k}_input_values", inter["input_values"], io[f"stream_chunk{k}_input_values"])
        assert_close(f"stream_chunk{k}_hidden_states_stack", stack, io[f"stream_chunk{k}_hidden_states_stack"])
        assert_close(f"stream_chunk{k}_windows", out, io[f"stream_chunk{k}_windows"])
    # The same through an explicit window (a caller keeping its own 8-s history).
    window = np.zeros(DEFAULT_AUDIO.buffer_samples, dtype=np.float32)
    window[-2 * DEFAULT_AUDIO.slice_samples :] = wav[: 2 * DEFAULT_AUDIO.slice_samples]
    assert_close("stream_window_chunk1", encode_stream_window(model, extractor, window), io["stream_chunk1_windows"])
    with pytest.raises(ValueError, match="128000 samples"):
        encode_stream_window(model, extractor, window[1:])
    # reset() is a new session: chunk 0 again.
    enc.reset()
    assert_close("stream_after_reset", enc.push(wav[: DEFAULT_AUDIO.slice_samples]), io["stream_chunk0_windows"])


def test_window_indices_are_clamped_to_the_range():
    frames = torch.arange(10, dtype=torch.float32).view(10, 1, 1)
    w = window_features(frames, 0, 10)[0, :, :, 0, 0]
    assert w[0].tolist() == [0, 0, 0, 1, 2] and w[9].tolist() == [7, 8, 9, 9, 9]
    w = window_features(frames, 5, 8)[0, :, :, 0, 0]  # clamp at end-1, not at the last encoded frame
    assert w.tolist() == [[3, 4, 5, 6, 7], [4, 5, 6, 7, 7], [5, 6, 7, 7, 7]]
    with pytest.raises(ValueError, match="bad frame range"):
        window_features(frames, 5, 11)


def test_loudness_skips_silence_and_rejects_bad_audio():
    silence = np.zeros(16000, dtype=np.float32)
    out, lufs = loudness_normalize(silence)
    assert lufs == float("-inf") and out.dtype == np.float64 and not out.any()
    with pytest.raises(ValueError, match="at least 0.4 s"):
        loudness_normalize(np.zeros(1000))
    with pytest.raises(ValueError, match="mono"):
        loudness_normalize(np.zeros((16000, 2)))
    with pytest.raises(ValueError, match="NaN"):
        loudness_normalize(np.full(16000, np.nan))
    with pytest.raises(ValueError, match="floating-point"):
        loudness_normalize(np.zeros(16000, dtype=np.int16))


def test_stream_buffer_rolls(w2v):
    model, extractor, _ = w2v
    enc = StreamingAudioEncoder(model, extractor, AudioFeatureConfig(buffer_seconds=2))
    enc.append(np.ones(10))
    assert enc.buffer.shape == (32000,) and enc.buffer[-10:].tolist() == [1.0] * 10 and enc.buffer[:-10].sum() == 0
    enc.append(np.arange(40000, dtype=np.float32))  # longer than the buffer: keeps the newest samples
    assert enc.buffer[0] == 8000 and enc.buffer[-1] == 39999


def test_once_chunks_and_padding():
    cfg = DEFAULT_AUDIO
    assert pad_for_once(np.zeros(21120)).shape == (21120,)
    assert pad_for_once(np.zeros(21121)).shape == (21120 + 17920,)
    w = torch.zeros(1, 33 + 28 * 3, 5, 1, 1)
    assert len(once_chunks(w, cfg)) == 4 and once_chunks(w[:, :32], cfg) == []


@torch.no_grad()
@pytest.mark.parametrize("stable", [False, True])
def test_layer_capture_equals_transformers_hidden_states(stable):
    """Our hook capture is what transformers 4.x returns as encoder hidden_states[1:]."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from flashtalk_live.model.audio import _encoder_layer_outputs

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                         conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group")
    model = Wav2Vec2Model(cfg).eval()
    x = torch.randn(1, 40, 32)
    want = model.encoder(x, output_hidden_states=True, return_dict=True).hidden_states[1:]
    got = _encoder_layer_outputs(model, x)
    assert len(got) == 3
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_training_mode_model_is_rejected(w2v):
    model, extractor, io = w2v
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            hidden_states(model, extractor, io["waveform"].numpy())
    finally:
        model.eval()


def test_loading_errors_name_the_folder(tmp_path):
    with pytest.raises(Wav2Vec2LoadError, match="folder not found"):
        load_wav2vec2(tmp_path / "nope")
    shutil.copytree(PARITY / "wav2vec2_tiny", tmp_path / "w")
    (tmp_path / "w" / "preprocessor_config.json").unlink()
    with pytest.raises(Wav2Vec2LoadError, match="missing preprocessor_config.json"):
        load_wav2vec2(tmp_path / "w")
    shutil.copy(PARITY / "wav2vec2_tiny" / "preprocessor_config.json", tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(Wav2Vec2LoadError, match="cannot load wav2vec2"):
        load_wav2vec2(tmp_path / "w")
