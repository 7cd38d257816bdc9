"""Audio conditioning for FlashTalk: 16 kHz speech -> per-video-frame wav2vec2 layer features, windowed.

The reference path, step by step: BS.1770 loudness normalisation to -23 LUFS (skipped for silence),
``Wav2Vec2FeatureExtractor`` (float32, zero mean / unit variance), the wav2vec2 CNN (50 Hz), linear
interpolation (align_corners=True) of the CNN features to ``int(len * fps / sr)`` frames (25 Hz)
*before* the feature projection and the transformer, ``hidden_states[1:]`` stacked to [T, layers,
hidden], then for each frame the features of frames -2..+2 with indices clamped to the encoded range.

The computation takes an already constructed transformers ``Wav2Vec2Model`` (eval mode) and
``Wav2Vec2FeatureExtractor``; :func:`load_wav2vec2` builds both from a local folder (no network).
:class:`StreamingAudioEncoder` is the reference's default streaming mode: a rolling 8-s buffer,
re-encoded whole for every chunk, from which the newest ``frame_num`` frames are taken.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .transfer import device_constant, to_device

__all__ = [
    "AudioFeatureConfig",
    "DEFAULT_AUDIO",
    "StreamingAudioEncoder",
    "Wav2Vec2LoadError",
    "encode_audio",
    "encode_stream_window",
    "hidden_states",
    "load_wav2vec2",
    "loudness_normalize",
    "once_chunks",
    "pad_for_once",
    "window_features",
]


@dataclass(frozen=True)
class AudioFeatureConfig:
    sample_rate: int = 16000
    fps: int = 25
    target_lufs: float = -23.0
    window_offsets: tuple[int, ...] = (-2, -1, 0, 1, 2)
    frame_num: int = 33  # video frames per chunk
    motion_frames: int = 5  # frames shared with the previous chunk
    buffer_seconds: int = 8  # streaming window

    def __post_init__(self) -> None:
        if self.sample_rate % self.fps:
            raise ValueError("sample_rate must be a multiple of fps")
        if not 0 <= self.motion_frames < self.frame_num:
            raise ValueError("need 0 <= motion_frames < frame_num")
        if self.buffer_seconds * self.fps < self.frame_num:
            raise ValueError("the streaming buffer is shorter than one chunk")

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps

    @property
    def slice_frames(self) -> int:
        """New frames per chunk (28 by default)."""
        return self.frame_num - self.motion_frames

    @property
    def slice_samples(self) -> int:
        """New audio samples per chunk (17,920 by default)."""
        return self.slice_frames * self.samples_per_frame

    @property
    def buffer_samples(self) -> int:
        return self.buffer_seconds * self.sample_rate


DEFAULT_AUDIO = AudioFeatureConfig()

_LOUDNESS_SKIP_ABOVE = 100.0  # |LUFS| above this (silence gives -inf) -> leave the audio untouched


def loudness_normalize(
    audio: np.ndarray, sample_rate: int = 16000, target_lufs: float = -23.0
) -> tuple[np.ndarray, float]:
    """BS.1770 (pyloudnorm) integrated-loudness normalisation, as the reference's ``loudness_norm``.

    Returns ``(float64 audio, measured loudness in LUFS)``; the audio is returned unchanged (as
    float64) when |loudness| > 100, e.g. for digital silence. Needs at least 0.4 s of audio.
    """
    # pyloudnorm (scipy) only where loudness is normalised
    import pyloudnorm

    audio = _as_mono_float64(audio)
    if audio.shape[0] < 0.4 * sample_rate:
        raise ValueError(f"loudness needs at least 0.4 s of audio, got {audio.shape[0]} samples at {sample_rate} Hz")
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Possible clipped samples in output")
        loudness = float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio))
        if not abs(loudness) <= _LOUDNESS_SKIP_ABOVE:
            return audio, loudness
        return pyloudnorm.normalize.loudness(audio, loudness, target_lufs), loudness


def _as_mono_float64(audio) -> np.ndarray:
    if torch.is_tensor(audio):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio [samples], got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"expected floating-point audio in [-1, 1], got {audio.dtype}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    return audio.astype(np.float64, copy=False)


def _check_model(model) -> None:
    if model.training:
        raise ValueError("the wav2vec2 model must be in eval mode (dropout, layerdrop and spec-augment off)")


def _encoder_layer_outputs(model, projected: torch.Tensor) -> list[torch.Tensor]:
    """The reference's ``hidden_states[1:]`` of ``model.encoder``: each transformer layer's output.

    Captured with forward hooks on ``encoder.layers`` rather than ``output_hidden_states``, which
    transformers 5.x no longer returns from a direct ``encoder(...)`` call. For the stable-layer-norm
    variant the last entry is, as in transformers, the final ``encoder.layer_norm`` of the last layer.
    """
    outputs: list[torch.Tensor] = []

    def grab(_module, _inputs, out):
        outputs.append(out[0] if isinstance(out, (tuple, list)) else out)

    handles = [layer.register_forward_hook(grab) for layer in model.encoder.layers]
    try:
        model.encoder(projected)
    finally:
        for h in handles:
            h.remove()
    if len(outputs) != len(model.encoder.layers):
        raise RuntimeError(f"wav2vec2 encoder ran {len(outputs)} of {len(model.encoder.layers)} layers")
    if getattr(model.config, "do_stable_layer_norm", False):
        outputs[-1] = model.encoder.layer_norm(outputs[-1])
    return outputs


@torch.no_grad()
def hidden_states(
    model, feature_extractor, audio: np.ndarray, sample_rate: int = 16000, fps: int = 25, *, intermediates: bool = False
):
    """Loudness-normalised 16 kHz mono audio -> [T, layers, hidden] with T = int(len * fps / sr).

    This is the reference's ``preprocess_audio``. ``model`` is a transformers ``Wav2Vec2Model`` in
    eval mode; ``feature_extractor`` a ``Wav2Vec2FeatureExtractor``. With ``intermediates=True``
    returns ``(stack, dict)`` where the dict holds ``input_values`` [N], ``cnn_features_50hz``
    [1, C, T50] and ``cnn_features_25hz`` [1, T, C].
    """
    _check_model(model)
    audio = _as_mono_float64(audio)
    n_frames = int(audio.shape[0] * fps / sample_rate)
    if n_frames < 1:
        raise ValueError(f"audio of {audio.shape[0]} samples is shorter than one video frame")
    values = np.squeeze(feature_extractor(audio, sampling_rate=sample_rate).input_values)
    param = next(model.parameters())
    x = to_device(torch.from_numpy(np.ascontiguousarray(values)).float(), param.device)[None]
    cnn = model.feature_extractor(x.to(param.dtype))  # [1, C, T50]
    if cnn.shape[-1] < 2:
        raise ValueError(f"audio of {audio.shape[0]} samples is too short for wav2vec2")
    cnn25 = F.interpolate(cnn, size=n_frames, mode="linear", align_corners=True).transpose(1, 2)
    projected, _ = model.feature_projection(cnn25)
    layers = _encoder_layer_outputs(model, projected)
    stack = torch.stack(layers, dim=2)[0].contiguous()  # [T, layers, H] for batch 1
    if intermediates:
        return stack, {"input_values": x[0], "cnn_features_50hz": cnn, "cnn_features_25hz": cnn25}
    return stack


def window_features(
    stack: torch.Tensor, start: int = 0, end: int | None = None, offsets: tuple[int, ...] = (-2, -1, 0, 1, 2)
) -> torch.Tensor:
    """[T, layers, H] -> [1, end-start, len(offsets), layers, H]: frame i gets frames i+offsets,
    indices clamped to [0, end-1] (the reference clamps at the end of the requested range)."""
    end = stack.shape[0] if end is None else end
    if not 0 <= start < end <= stack.shape[0]:
        raise ValueError(f"bad frame range [{start}, {end}) for {stack.shape[0]} encoded frames")
    off = device_constant(offsets, torch.long, stack.device)
    idx = (torch.arange(start, end, device=stack.device)[:, None] + off[None]).clamp(0, end - 1)
    return stack[idx][None].contiguous()


def encode_audio(
    model,
    feature_extractor,
    audio: np.ndarray,
    start: int = -1,
    end: int = -1,
    cfg: AudioFeatureConfig = DEFAULT_AUDIO,
) -> torch.Tensor:
    """The reference's ``get_audio_embedding``: loudness -> wav2vec2 -> windows.

    Returns [1, F, 5, layers, hidden] for frames [start, end) (all frames when either is -1).
    """
    normalised, _ = loudness_normalize(audio, cfg.sample_rate, cfg.target_lufs)
    stack = hidden_states(model, feature_extractor, normalised, cfg.sample_rate, cfg.fps)
    if start == -1 or end == -1:
        start, end = 0, stack.shape[0]
    return window_features(stack, start, end, cfg.window_offsets)


def encode_stream_window(
    model, feature_extractor, window: np.ndarray, cfg: AudioFeatureConfig = DEFAULT_AUDIO
) -> torch.Tensor:
    """Stream mode for a caller that keeps its own rolling window (e.g. ``RenderChunk.model_history``).

    ``window``: exactly ``cfg.buffer_samples`` (8 s) of 16 kHz mono audio ending at the chunk's end,
    zeros before the session began. Returns [1, frame_num, 5, layers, hidden] for its last
    ``frame_num`` frames, identical to :meth:`StreamingAudioEncoder.push`.
    """
    window = _as_mono_float64(window)
    if window.shape[0] != cfg.buffer_samples:
        raise ValueError(f"stream window must be {cfg.buffer_samples} samples, got {window.shape[0]}")
    end = cfg.buffer_seconds * cfg.fps
    return encode_audio(model, feature_extractor, window, end - cfg.frame_num, end, cfg)


def pad_for_once(audio: np.ndarray, cfg: AudioFeatureConfig = DEFAULT_AUDIO) -> np.ndarray:
    """Zero-pad so that (len - frame_num·spf) is a multiple of the chunk slice (the 2026-03-03 fix)."""
    audio = np.asarray(audio)
    head = cfg.frame_num * cfg.samples_per_frame
    remainder = (audio.shape[0] - head) % cfg.slice_samples
    if remainder:
        audio = np.concatenate([audio, np.zeros(cfg.slice_samples - remainder, dtype=audio.dtype)])
    return audio


def once_chunks(windows: torch.Tensor, cfg: AudioFeatureConfig = DEFAULT_AUDIO) -> list[torch.Tensor]:
    """Split once-mode windows [1, N, ...] into chunks ``windows[:, i*slice : i*slice+frame_num]``.

    Every chunk that fits is returned. (The reference's ``range((N - frame_num) // slice)`` drops the
    last full chunk; chunk i here equals the reference's chunk i for every i it produces.)
    """
    n = windows.shape[1]
    if n < cfg.frame_num:
        return []
    count = (n - cfg.frame_num) // cfg.slice_frames + 1
    return [windows[:, i * cfg.slice_frames : i * cfg.slice_frames + cfg.frame_num] for i in range(count)]


class StreamingAudioEncoder:
    """Rolling-buffer encoder (reference ``--audio_encode_mode stream``).

    The buffer holds ``buffer_seconds`` of float64 audio and starts as zeros. :meth:`push` appends
    the newest samples (normally ``cfg.slice_samples``), re-encodes the whole buffer (loudness and
    feature-extractor normalisation included) and returns the windows of its last ``frame_num``
    frames: [1, frame_num, 5, layers, hidden]. The +1/+2 look-ahead of the newest frames is clamped.
    """

    def __init__(self, model, feature_extractor, cfg: AudioFeatureConfig = DEFAULT_AUDIO) -> None:
        _check_model(model)
        self.model = model
        self.feature_extractor = feature_extractor
        self.cfg = cfg
        self.end = cfg.buffer_seconds * cfg.fps  # frames [start, end) of the encoded window are returned
        self.start = self.end - cfg.frame_num
        self.reset()

    def reset(self) -> None:
        """Back to an all-zero buffer (a new session)."""
        self.buffer = np.zeros(self.cfg.buffer_samples, dtype=np.float64)

    def append(self, samples: np.ndarray) -> None:
        """Shift ``samples`` into the buffer without encoding."""
        samples = _as_mono_float64(samples)
        n = min(samples.shape[0], self.buffer.shape[0])
        if n == 0:
            return
        self.buffer = np.concatenate([self.buffer[n:], samples[-n:]])

    def encode(self) -> torch.Tensor:
        """Encode the current buffer -> [1, frame_num, 5, layers, hidden]."""
        return encode_stream_window(self.model, self.feature_extractor, self.buffer, self.cfg)

    def push(self, samples: np.ndarray) -> torch.Tensor:
        self.append(samples)
        return self.encode()


class Wav2Vec2LoadError(RuntimeError):
    """The wav2vec2 folder is missing or unusable."""


def load_wav2vec2(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load ``(Wav2Vec2Model, Wav2Vec2FeatureExtractor)`` from a local folder (``config.json``, weights,
    ``preprocessor_config.json``) strictly offline, in eval mode, gradients off. The reference runs
    wav2vec2 in float32. Extra checkpoint heads (e.g. from ``Wav2Vec2ForPreTraining``) are ignored
    by transformers, as in the reference."""
    folder = Path(folder)
    missing = [n for n in ("config.json", "preprocessor_config.json") if not (folder / n).is_file()]
    if not folder.is_dir() or missing:
        what = "folder not found" if not folder.is_dir() else f"missing {', '.join(missing)}"
        raise Wav2Vec2LoadError(f"wav2vec2 {what}: {folder} (expected the chinese-wav2vec2-base folder)")
    # transformers takes seconds to import: only when wav2vec2 loads
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    try:
        model = Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError with varied messages
        raise Wav2Vec2LoadError(f"cannot load wav2vec2 from {folder}: {exc}") from exc
    return model.to(device).eval().requires_grad_(False), extractor
