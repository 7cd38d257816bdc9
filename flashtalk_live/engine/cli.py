"""`flashtalk-live render`: an offline preview of an avatar with the live engine, muxed to MP4 (H.264 + AAC)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from flashtalk_live import log
from flashtalk_live.cliargs import add_config_args, settings_from_args
from flashtalk_live.audio import decode_audio
from flashtalk_live.images import load_image
from flashtalk_live.settings import Settings
from flashtalk_live.chunks import RenderChunk


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("render", help="render an avatar video offline with the FlashTalk engine (preview)")
    p.add_argument("--image", required=True, help="reference portrait (PNG/JPEG)")
    p.add_argument("--audio", required=True, help="speech audio (WAV, MP3, M4A, FLAC, Ogg)")
    p.add_argument("--profile", help="profile name (quality, fast) or .toml file; default: model.profile")
    p.add_argument("--prompt", help="text prompt; default: video.prompt")
    p.add_argument("--timing", action="store_true", help="print per-stage times of every chunk")
    p.add_argument("-o", "--output", required=True, help="output .mp4")
    add_config_args(p)
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    log.configure(settings.logging.format, settings.logging.level)
    try:
        stats = render_file(settings, args.image, args.audio, args.output, profile=args.profile, prompt=args.prompt,
                            timing=args.timing)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"flashtalk-live render: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {stats['frames']} frames, {stats['seconds']:.2f} s of audio, "
          f"{stats['chunks']} chunks in {stats['render_s']:.1f} s ({stats['rtf']:.2f}x real time)")
    return 0


def render_file(settings: Settings, image_path: str, audio_path: str, output: str, *, profile: str | None = None,
                prompt: str | None = None, timing: bool = False) -> dict[str, Any]:
    """Render `audio_path` spoken by `image_path` into `output` (MP4). Returns counts and times."""
    # torch and the engine load here, not at import: every `flashtalk-live` verb imports this module.
    import torch

    from flashtalk_live.engine.engine import FlashTalkEngine
    from flashtalk_live.engine.profile import resolve_profile
    from flashtalk_live.engine.renderer import FlashTalkRenderer, load_models_for
    from flashtalk_live.model.attention import set_default_backend
    from flashtalk_live.quant.fp8 import plan_from_settings

    m, v = settings.model, settings.video
    if not m.weights_dir:
        raise ValueError("model.weights_dir is not set (use --config or --set model.weights_dir=...)")
    prof = resolve_profile(profile or m.profile)
    image = load_image(image_path)
    clip = decode_audio(Path(audio_path).read_bytes(), rate=settings.encoder.audio_rate,
                        out_channels=settings.encoder.audio_channels)
    set_default_backend(m.attention)
    device, dtype = torch.device(m.device), getattr(torch, m.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device is {m.device} but CUDA is not available")
    models = load_models_for(settings.expanded(m), device, dtype, plan_from_settings(m, device))
    engine = FlashTalkEngine(models, prof, device, dtype, timing=timing)
    renderer = FlashTalkRenderer(engine, width=v.width, height=v.height, fit=v.fit, drift_every=10**9)
    renderer.policy.interval_s = 0  # a preview shows the model as it is: no re-anchoring
    renderer.policy.patience = 10**9
    renderer.start_session(image, prompt or v.prompt)

    fps, n = prof.fps, prof.new_frames
    spf_model = prof.sample_rate // fps
    rate = settings.encoder.audio_rate
    total_frames = max(1, math.ceil(clip.model.shape[0] / spf_model))
    chunks = math.ceil(total_frames / n)
    model = np.zeros(chunks * n * spf_model, np.float32)
    model[: clip.model.shape[0]] = clip.model  # zero-pad the tail, as the reference's 2026-03-03 fix
    history = np.zeros(prof.window_samples, np.float32)
    writer = _Mp4Writer(output, v.width, v.height, fps, rate, clip.channels)
    t0 = time.perf_counter()
    written = 0
    try:
        for i in range(chunks):
            piece = model[i * n * spf_model : (i + 1) * n * spf_model]
            history = np.concatenate([history, piece])[-prof.window_samples:]
            chunk = RenderChunk(index=i, start_frame=i * n, n_frames=n, audio=np.zeros((0, clip.channels), np.float32),
                                model_audio=piece, frame_segments=[None] * n, model_history=history)
            frames = renderer.render(chunk)
            if timing:
                print(f"chunk {i}: " + "  ".join(f"{k} {1000 * s:.1f} ms" for k, s in engine.last_timings.items()),
                      file=sys.stderr)
            for f in frames[: total_frames - written]:
                writer.video(f)
                written += 1
        writer.audio(clip.broadcast)
    finally:
        writer.close()
        renderer.close()
    took = time.perf_counter() - t0
    seconds = clip.broadcast.shape[0] / rate
    return {"frames": written, "chunks": chunks, "seconds": seconds, "render_s": took,
            "rtf": took / max(seconds, 1e-9)}


class _Mp4Writer:
    """H.264 (libx264, yuv420p, no B-frames) + AAC-LC into an MP4, timestamps from frame/sample counters."""

    def __init__(self, path: str, width: int, height: int, fps: int, rate: int, channels: int) -> None:
        self.container = av.open(str(path), "w", format="mp4")
        self.v = self.container.add_stream("libx264", rate=fps)
        self.v.width, self.v.height, self.v.pix_fmt = width, height, "yuv420p"
        self.v.options = {"preset": "veryfast", "crf": "18", "bf": "0"}
        self.a = self.container.add_stream("aac", rate=rate)
        self.a.layout = "mono" if channels == 1 else "stereo"
        self.rate, self.channels = rate, channels
        self.frames = 0

    def video(self, frame: np.ndarray) -> None:
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames
        self.frames += 1
        for p in self.v.encode(vf):
            self.container.mux(p)

    def audio(self, samples: np.ndarray) -> None:
        block = 1024 * 16
        for start in range(0, samples.shape[0], block):
            part = np.ascontiguousarray(samples[start : start + block].T.astype(np.float32))
            af = av.AudioFrame.from_ndarray(part, format="fltp", layout=self.a.layout.name)
            af.sample_rate = self.rate
            af.pts = start
            for p in self.a.encode(af):
                self.container.mux(p)

    def close(self) -> None:
        try:
            for stream in (self.v, self.a):
                for p in stream.encode(None):
                    self.container.mux(p)
        finally:
            self.container.close()
