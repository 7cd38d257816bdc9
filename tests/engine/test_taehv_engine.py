"""The engine with model.decoder = "taehv": frame count, geometry and range, per-chunk decoding, Wan motion encode,
and the renderer factory loading the tiny decoder from the folder `models download --only taehv` fills."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flashtalk_live.checkpoints.loader import CheckpointError
from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder, TinyVideoDecoder

from support.chunk_fixture import fixture_engine
from support.chunks import render_chunk

torch.set_num_threads(1)


def _tiny_taehv(seed: int = 3) -> TAEHVDecoder:
    torch.manual_seed(seed)
    m = TAEHVDecoder(TAEHVConfig.tiny())
    with torch.no_grad():  # the last conv's bias at mid-grey, as the fixture recipe, so frames are not all black
        m.decoder[22].bias.add_(0.5)
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def runs():
    """Two chunks with the tiny decoder and one with the Wan VAE, same session, noise and audio."""
    eng, inputs = fixture_engine()
    tiny = TinyVideoDecoder(_tiny_taehv())
    eng.models.decoder = tiny
    traces = []
    for k in range(2):
        trace: dict = {}
        eng.generate(inputs["audio_all"][:, 8 * k : 8 * k + 13], trace=trace)  # chunk/ config.json rule
        traces.append(trace)
    wan, inputs = fixture_engine()
    wan_trace: dict = {}
    wan.generate(inputs["audio_all"][:, :13], trace=wan_trace)
    return eng, tiny, traces, wan_trace


@pytest.mark.timeout(300)
def test_chunk_frames_count_geometry_and_range(runs):
    eng, _, traces, _ = runs
    p = eng.profile
    for tr in traces:
        assert tr["decoded"].shape == (1, 3, p.frame_num, p.height, p.width)  # 13 frames from 4 latents
        assert tr["decoded"].min() >= -1 and tr["decoded"].max() <= 1
        frames = tr["frames"]
        assert frames.dtype == np.uint8 and frames.shape == (p.new_frames, p.height, p.width, 3)
        assert frames.std() > 0


@pytest.mark.timeout(300)
def test_only_the_decode_changes(runs):
    _, tiny, traces, wan_trace = runs
    assert torch.equal(traces[0]["latent_final"], wan_trace["latent_final"]), "sampling does not see the decoder"
    assert not torch.allclose(traces[0]["decoded"], wan_trace["decoded"])
    want = 2 * tiny.taehv.decode(traces[0]["latent_final"][None].transpose(1, 2)).transpose(1, 2) - 1
    assert torch.equal(traces[0]["decoded"], want), "latents go in as sampled (no VAE un-scaling), [0,1] -> [-1,1]"


@pytest.mark.timeout(300)
def test_each_chunk_is_decoded_on_its_own_and_motion_uses_the_wan_encoder(runs):
    eng, tiny, traces, _ = runs
    p = eng.profile
    for tr in traces:  # no decoder state crosses a chunk boundary: a fresh decode of the latents is the same
        fresh = TinyVideoDecoder(tiny.taehv, parallel=False).decode(tr["latent_final"][None])
        assert torch.allclose(tr["decoded"], fresh, atol=1e-5)
        motion = eng.models.vae.encode(tr["colour_corrected"][:, :, -p.motion_frames:])[0]
        assert torch.equal(tr["motion_latents_out"], motion)
    assert torch.equal(traces[1]["motion_latents_in"], traces[0]["motion_latents_out"])


def test_tiny_video_decoder_checks_its_input():
    with pytest.raises(ValueError, match=r"\[B, z, T, h, w\]"):
        TinyVideoDecoder(_tiny_taehv()).decode(torch.zeros(16, 2, 4, 4))


# ------------------------------------------------------------------------------------------ factory


@pytest.mark.timeout(300)
def test_renderer_factory_loads_the_tiny_decoder(tmp_path: Path):
    from flashtalk_live.checkpoints.fake import write_fake_release
    from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer
    from flashtalk_live.config import load_settings
    from flashtalk_live.chunks import RenderChunk

    rel = write_fake_release(tmp_path / "models")
    (tmp_path / "tiny.toml").write_text('base = "quality"\nheight = 64\nwidth = 32\nframe_num = 13\nmotion_frames = 5\n')
    over = [f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"',
            f'model.profile="{tmp_path / "tiny.toml"}"', 'model.device="cpu"', 'model.dtype="float32"',
            "video.chunk_frames=8", "video.width=32", "video.height=64", f'state_dir="{tmp_path / "state"}"',
            'model.decoder="taehv"']
    settings = load_settings(None, over, environ={})
    with pytest.raises(CheckpointError, match="--only taehv"):
        build_flashtalk_renderer(FlashTalkConfig.from_settings(settings))
    (tmp_path / "models" / "taehv").mkdir()
    sd = {k: v.half() for k, v in _tiny_taehv().state_dict().items()}
    save_file(sd, str(tmp_path / "models" / "taehv" / "taew2_1.safetensors"))
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(settings))
    try:
        assert isinstance(r.engine.models.decoder, TinyVideoDecoder)
        assert r.engine.models.decoder.taehv.config == TAEHVConfig.tiny()
        chunk = render_chunk(0, 8, idle=True)
        frames = r.render(chunk)
        assert frames.shape == (8, 64, 32, 3) and frames.dtype == np.uint8
    finally:
        r.close()
