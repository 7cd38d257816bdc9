"""FlashTalkRenderer: the engine behind the daemon's Renderer protocol, with drift control; and its factory.

render(chunk) takes the chunk's rolling 16 kHz window (RenderChunk.model_history, else a buffer kept
here), encodes the audio features, generates one engine chunk (exactly chunk.n_frames new frames, which
must equal the profile's frame_num - motion_frames) and fits the frames to the output geometry.  Every
`drift_every` chunks it measures identity/colour drift; on schedule (at the next idle chunk) or after
repeated drift it re-anchors the motion context to the reference image, dissolves from the last shown
frame over a few frames and publishes `recalibrated` with the measures before and after.

The factory loads a release (or, in benchmarks only, random weights) and warms up.  With
`model.profile = "auto"` the warm-up measures the candidate profiles best quality first (one untimed and
`auto_chunks` timed silent chunks each, the whole render path) and keeps the first whose p90 chunk time fits
the real-time budget with `auto_margin` (engine.profile.choose_profile); every measurement is logged. With
`model.compile = true` the candidates are timed eager (torch.compiler stance "force_eager": nothing compiles)
and only the one predicted to fit (eager x `auto_compiled_ratio`) is compiled and timed again
(engine.profile.next_auto_step), so a start-up never compiles profiles it will not keep. The measurements are
remembered in the compile cache folder (engine.auto_memory): a restart with the same fingerprint (GPU, torch,
settings that change a chunk's time) skips the eager trials and compiles and times the remembered winner only; if
it no longer fits, the search goes on as without a record and the record is rewritten.

GPU memory: `warm_up()` folds the allocator's peak so far into `load_peak_bytes` and resets the peak statistics,
so `drift()` reports the load peak (weights, quantisation, compile, warm-up) apart from the steady peak (the
peak since the last warm-up: what the room needs on air).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from flashtalk_live.checkpoints.random_weights import random_engine_models
from flashtalk_live.checkpoints.release import (
    T5_FILE, T5_TOKENIZER_DIR, load_clip_visual, load_dit, load_t5, load_umt5_tokenizer, load_vae, load_wav2vec,
    resolve_release_dirs,
)
from flashtalk_live.checkpoints.taehv import find_taehv_file, load_taehv, plan_taehv
from flashtalk_live.engine.auto_memory import AutoMemory, AutoRecord, device_name, speed_fingerprint
from flashtalk_live.engine.drift import DriftMeasure, RecalibrationPolicy, start_drift
from flashtalk_live.engine.compile_cache import use_compile_cache
from flashtalk_live.engine.engine import (
    EngineError, EngineModels, FlashTalkEngine, compile_dit_blocks, uses_cuda_graphs,
)
from flashtalk_live.engine.host_weights import park_context_projections
from flashtalk_live.engine.profile import (
    AUTO, Profile, ProfileChoice, ProfileError, ProfileTiming, choose_profile, compiled_ratio, next_auto_step,
    room_profiles,
)
from flashtalk_live.engine.session import AvatarSession, CachedTextEncoder, file_identity, prepare_session
from flashtalk_live.events import EventBus
from flashtalk_live.log import get_logger
from flashtalk_live.model.attention import set_default_backend
from flashtalk_live.model.dit import FlashTalkDiT
from flashtalk_live.model.taehv import TinyVideoDecoder
from flashtalk_live.model.text import encode_prompts
from flashtalk_live.quant.fp8 import Fp8Plan, plan_from_settings
from flashtalk_live.renderers.base import RendererError
from flashtalk_live.images import FitMode, crossfade, default_portrait, fit_image, load_image
from flashtalk_live.settings import BENCHMARK_ENV, ModelSettings, Settings, VideoSettings, benchmark_mode
from flashtalk_live.chunks import MODEL_AUDIO_RATE, RenderAbandoned, RenderChunk

log = get_logger("engine")

# (profile, run one chunk, stage) -> seconds it took; stage is "eager" (auto's cheap trial of a compiled room),
# "compiled" or "plain" (no compile). Injectable so the auto choice is testable without a clock.
ChunkTimer = Callable[[Profile, Callable[[], Any], str], float]
EAGER, COMPILED, PLAIN = "eager", "compiled", "plain"


def wall_timer(_profile: Profile, run: Callable[[], Any], _stage: str = PLAIN) -> float:
    """Wall seconds of run(), the GPU's queued work included."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - t0


def _never() -> bool:
    """The abandon check of a silent chunk (warm-up, timing): never abandoned."""
    return False


class FlashTalkRenderer:
    """Renderer protocol on a FlashTalkEngine. One render thread; start_session may come from another."""

    name = "flashtalk"
    bank_identity: str | None = None  # profile and weights, set by the factory: the idle bank's cache key

    def __init__(
        self,
        engine: FlashTalkEngine,
        *,
        width: int,
        height: int,
        fit: FitMode = "cover",
        events: Any = None,
        policy: RecalibrationPolicy | None = None,
        drift_every: int = 1,
        crossfade_frames: int = 6,
        lead_in: Sequence[int] = (),
    ) -> None:
        """lead_in: the shorter chunk lengths (new frames) a clip may start with (video.lead_in_frames); each is
        compiled and tuned by warm_up(), so the first one on air costs no compile."""
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise ValueError(f"output geometry must be positive and even, got {width}x{height}")
        self.engine = engine
        self.profile: Profile = engine.profile
        try:
            self.lead_in = tuple(sorted({engine.shape(n).new_frames for n in lead_in}))
        except EngineError as e:
            raise RendererError(f"video.lead_in_frames: {e}") from None
        self.width, self.height, self.fit = width, height, fit
        self.events = events
        self.policy = policy or RecalibrationPolicy()
        self.drift_every = max(1, int(drift_every))
        self.crossfade_frames = max(0, int(crossfade_frames))
        self._lock = threading.Lock()
        self._pending: AvatarSession | None = None
        self._closed = False
        self._warm = False
        self._history = np.zeros(self.profile.window_samples, np.float32)  # used when chunks carry no history
        self._frames_out = 0
        self._last_frame: np.ndarray | None = None  # the last frame shown, at the engine's frame geometry
        self._last_measure: DriftMeasure | None = None
        self._force: str | None = None
        self.recalibrations: list[dict[str, Any]] = []
        self.chunks = 0
        self.render_seconds: deque[float] = deque(maxlen=4096)  # wall of each render() call, for status
        self._stoppable_s: float | None = None  # of the last whole chunk rendered with an abandon check
        self._timed_s: float | None = None  # the last whole chunk's time (time_chunks', then render's): abandon_s
        self._auto_candidates: tuple[Profile, ...] = ()
        self.profile_choice: ProfileChoice | None = None  # set when model.profile = "auto" chose this profile
        self.auto_eager: dict[str, list[float]] = {}  # auto with compile: the eager trial chunk seconds per profile
        self.auto_ratio: float | None = None  # ... and the compiled/eager ratio the choice was made with
        self.auto_remembered_age_s: float | None = None  # ... the eager timings came from a record this old (s)
        self.auto_eager_trials: list[str] = []  # ... the eager trials this start ran (none when remembered and kept)
        self.load_peak_bytes: int | None = None  # allocator peak up to the last warm-up (None off CUDA)

    # -- protocol -------------------------------------------------------------------------------------
    def start_session(self, reference_image: np.ndarray | None, prompt: str) -> None:
        """Prepare the session (outside the render lock); it takes over at the next chunk boundary."""
        if self._closed:
            raise RendererError("flashtalk renderer is closed")
        image = default_portrait() if reference_image is None else reference_image
        current = self.engine.session
        if current is not None and current.matches(image, prompt, self.profile) and self._pending is None:
            return  # same portrait and prompt: keep the running session and its motion context
        e = self.engine
        session = prepare_session(self.profile, image, prompt, vae=e.models.vae, clip=e.models.clip,
                                  text=e.models.text, device=e.device, dtype=e.dtype)
        with self._lock:
            if self.engine.session is None:
                self.engine.use_session(session)
                self.policy.anchored(self._frames_out / self.profile.fps)
            else:
                self._pending = session
        log.info("avatar_session_ready", prompt=prompt[:80], profile=self.profile.name,
                 geometry=f"{self.profile.width}x{self.profile.height}")

    def ready(self) -> bool:
        return not self._closed and self._warm and self.engine.session is not None

    def warm_up(self, lead_in: bool = True) -> dict[str, float]:
        """Run one silent chunk (allocations, kernel selection) and rewind the session; then ready() is True.
        lead_in: one more silent chunk of each lead-in length (its own compiled shape and conv tuning)."""
        with self._lock:
            session = self.engine.session
            if session is None:
                raise RendererError("warm_up() before start_session()")
            t0 = time.perf_counter()
            self._silent_chunk()
            for n in self.lead_in if lead_in else ():
                self._silent_chunk(n)
            self.engine.use_session(session)  # rewind motion context and noise: warm-up leaves no trace
            self._warm = True
            took = time.perf_counter() - t0
            self._fold_load_peak()
        log.info("engine_warm", seconds=round(took, 3), profile=self.profile.name,
                 load_peak_gib=None if self.load_peak_bytes is None else round(self.load_peak_bytes / 2**30, 2))
        return {"warm_up_s": took}

    def _fold_load_peak(self) -> None:
        """Everything up to a warm-up is load: keep its peak, then restart the peak statistics for steady state and
        give the load's cached blocks back to the driver (else nvidia-smi, and a second process on the card, see the
        load transient for the process's whole life)."""
        if self.engine.device.type != "cuda":
            return
        peak = torch.cuda.max_memory_allocated(self.engine.device)
        self.load_peak_bytes = max(peak, self.load_peak_bytes or 0)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.engine.device)

    def time_chunks(self, n: int, timer: Callable[[Callable[[], Any]], float],
                    new_frames: int | None = None) -> list[float]:
        """Seconds of n silent chunks through the render path (features, engine, drift measure, fit), each as
        `timer(run)` measures it (new_frames: of a lead-in's length); the session is rewound afterwards, as after
        warm_up()."""
        with self._lock:
            session = self.engine.session
            if session is None:
                raise RendererError("time_chunks() before start_session()")
            try:
                # A lead-in chunk mostly follows a re-plan, so it carries aired frames to re-encode: timed so too.
                times = [float(timer(lambda: self._silent_chunk(new_frames, aired=new_frames is not None)))
                         for _ in range(n)]
                if new_frames is None:
                    self._timed_s = times[-1] if times else self._timed_s
                return times
            finally:
                self.engine.use_session(session)

    def _silent_chunk(self, new_frames: int | None = None, aired: bool = False) -> np.ndarray:
        t0 = time.perf_counter()
        if aired:  # as after a re-plan: the motion context re-encoded from frames that aired (the reference here)
            assert self.engine.session is not None
            self.engine.set_motion_frames(self.engine.session.image_u8[None])
        silence = np.zeros(self.profile.window_samples, np.float32)
        # Rendered as a real chunk is, with an abandon check that never stops it (each step, or each run-ahead
        # block, waited for): timed alike, and a whole one measures where the denoising ends (`stoppable_share`)
        # before the first real render, for the re-plans right after a take-over.
        out = self.engine.generate(self._features(silence, new_frames), new_frames=new_frames, abandoned=_never)
        if new_frames is None:
            self._note_denoised(t0)
        assert self.engine.session is not None  # generate() needs the session: start_session ran
        pending = start_drift(self.engine.session, out, self.engine.models.clip)
        fitted = self._fit(out.frames)
        pending.result()  # a silent chunk is timed like a real one: drift measure included
        return fitted

    def render(self, chunk: RenderChunk) -> np.ndarray:
        if self._closed:
            raise RendererError("flashtalk renderer is closed")
        p = self.profile
        n = chunk.n_frames
        if n != p.new_frames and n not in self.lead_in:
            raise RendererError(f"chunk of {n} frames, but profile {p.name!r} makes {p.new_frames} per chunk (set "
                                f"video.chunk_frames = frame_num - motion_frames) or a lead-in of {list(self.lead_in)}")
        t0 = time.perf_counter()
        with self._lock:
            if self.engine.session is None:
                raise RendererError("flashtalk renderer: render() before start_session()")
            now_s = self._frames_out / p.fps
            window = self._window(chunk)
            reason = None
            if self._pending is not None:
                self.engine.use_session(self._pending)
                self._pending = None
                self.policy.anchored(now_s)
                reason = "session"
            else:
                reason = self._force or self.policy.due(now_s, chunk.idle)
                self._force = None
                if reason is not None:
                    self.engine.reanchor()
                    self.policy.anchored(now_s)
            if chunk.motion_frames is not None:  # what aired before this chunk was not our last output
                aired = self._to_profile(chunk.motion_frames)
                self._last_frame = self._to_engine_frame(chunk.motion_frames[-1])
                if reason is None:  # a new session or a re-anchor starts from the reference instead
                    self.engine.set_motion_frames(aired)
            before = self._last_measure
            try:
                out = self.engine.generate(self._features(window, n), abandoned=chunk.abandoned.is_set,
                                           new_frames=n)
            except RenderAbandoned:
                if reason is not None:  # the session or re-anchor it began is still due: the next chunk starts there
                    self._force = reason
                raise
            pending = None
            if reason is not None or self.chunks % self.drift_every == 0:
                # Queued on the device; read after the host work below, which overlaps it and the motion encode.
                pending = start_drift(self.engine.session, out, self.engine.models.clip)
            frames = out.frames
            if reason is not None and self._last_frame is not None:
                frames = crossfade(frames, self._last_frame, self.crossfade_frames)
            self._last_frame = frames[-1].copy()
            fitted = self._fit(frames)
            measure = None
            if pending is not None:
                measure = pending.result()
                self._last_measure = measure
                self.policy.observe(measure)
            self._frames_out += chunk.n_frames
            self.chunks += 1
        if reason in ("drift", "schedule", "manual"):
            self._announce(reason, before, measure, chunk)
        self.render_seconds.append(time.perf_counter() - t0)
        if n == p.new_frames:
            self._timed_s = self.render_seconds[-1]  # a whole chunk's time: what abandon_s steps are made of
            self._note_denoised(t0)
        return fitted

    def _note_denoised(self, t0: float) -> None:
        """A whole chunk begun at t0 (perf_counter) was generated with an abandon check: how long it could stop."""
        end = self.engine.last_denoise_end
        if end is not None:
            self._stoppable_s = max(0.0, end - t0)

    def abandon_s(self) -> float | None:
        """How often a chunk abandoned mid-render (`RenderChunk.abandoned`) can stop, from the last whole chunk's time
        (a lead-in's shorter chunk would make the steps look shorter than a whole chunk's, e.g. an idle bank link's):
        one denoising step, or with the engine's `abandon_run_ahead_blocks` N, N + 1 DiT blocks (the host's lead
        plus the block it waits in). Before the first render, from the chunk `time_chunks` timed after the warm-up
        (the first clip after a take-over is planned like the next ones); None before either."""
        last = self._timed_s
        if last is None:
            return None
        step = last / self.profile.sample_steps
        ahead = self.engine.abandon_run_ahead_blocks
        blocks = len(getattr(self.engine.models.dit, "blocks", ()))
        if ahead and blocks and not uses_cuda_graphs(self.engine.models.dit):
            return step * min(1.0, (ahead + 1) / blocks)
        return step

    def stoppable_share(self) -> float | None:
        """The share of a chunk's render in which an abandoned chunk stops at its next step (`abandon_s`): up to
        the end of its denoising; the decode, the motion encode and the host work after it run to the end (most
        of a chunk on the tiny CPU model, a few per cent on a GPU). From the last whole chunk rendered with an
        abandon check; None before one."""
        if self._stoppable_s is None or not self._timed_s:
            return None
        return min(1.0, self._stoppable_s / self._timed_s)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._pending = None
        if self.engine.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- drift ----------------------------------------------------------------------------------------
    def drift(self) -> dict[str, Any]:
        """The latest drift measure and recalibration state, for status and metrics."""
        m = self._last_measure
        return {
            "identity": None if m is None else m.identity,
            "colour": None if m is None else m.colour,
            "chunk": None if m is None else m.chunk,
            "drifting": False if m is None else self.policy.drifting(m),
            "strikes": self.policy.strikes,
            "recalibrations": len(self.recalibrations),
            "last_recalibration": self.recalibrations[-1] if self.recalibrations else None,
            "profile": self.profile.name,
            "timings": dict(self.engine.last_timings),
            "chunk_s": _seconds_summary(self.render_seconds),
            "gpu_load_peak_bytes": self.load_peak_bytes,
            "gpu_steady_peak_bytes": (torch.cuda.max_memory_allocated(self.engine.device)
                                      if self.engine.device.type == "cuda" else None),
            "auto": None if self.profile_choice is None else {
                "profile": self.profile_choice.profile.name,
                "fits": self.profile_choice.fits, "margin": self.profile_choice.margin,
                "measured": [t.to_dict() for t in self.profile_choice.timings],
                "eager": [ProfileTiming(p, tuple(self.auto_eager[p.name]), self.profile_choice.margin).to_dict()
                          for p in self._auto_candidates if p.name in self.auto_eager],
                "compiled_ratio": None if self.auto_ratio is None else round(self.auto_ratio, 4),
                "eager_trials": list(self.auto_eager_trials),
                "remembered": self.auto_remembered_age_s is not None,
                "remembered_age_s": (None if self.auto_remembered_age_s is None
                                     else round(self.auto_remembered_age_s, 1))},
        }

    def recalibrate(self, reason: str = "manual") -> None:
        """Re-anchor at the next chunk boundary whatever the measures say."""
        self._force = reason

    # -- internals ------------------------------------------------------------------------------------
    def _window(self, chunk: RenderChunk) -> np.ndarray:
        n = self.profile.window_samples
        hist = chunk.model_history
        if hist is not None and hist.shape[0] >= min(n, MODEL_AUDIO_RATE):
            w = np.asarray(hist, np.float32)[-n:]
            if w.shape[0] < n:
                w = np.concatenate([np.zeros(n - w.shape[0], np.float32), w])
            self._history = w
            return w
        new = np.asarray(chunk.model_audio, np.float32).reshape(-1)
        self._history = np.concatenate([self._history, new])[-n:]
        return self._history

    def _features(self, window: np.ndarray, new_frames: int | None = None) -> torch.Tensor:
        return self.engine.audio_features(window, new_frames)

    def _to_profile(self, frames: np.ndarray) -> np.ndarray:
        p = self.profile
        if frames.shape[1:3] == (p.height, p.width):
            return frames
        return np.stack([fit_image(f, p.width, p.height, "cover") for f in frames])

    def _to_engine_frame(self, frame: np.ndarray) -> np.ndarray:
        """An aired frame (output geometry) at the geometry of the engine's frames, which the engine may already
        fit to the output on the device: the re-anchor's crossfade blends the two."""
        h, w = self.engine.frame_hw
        return frame.copy() if frame.shape[:2] == (h, w) else fit_image(frame, w, h, "cover")

    def _fit(self, frames: np.ndarray) -> np.ndarray:
        if frames.shape[1:3] == (self.height, self.width):
            return frames
        return np.stack([fit_image(f, self.width, self.height, self.fit) for f in frames])

    def _announce(self, reason: str, before: DriftMeasure | None, after: DriftMeasure | None, chunk: RenderChunk) -> None:
        record = {
            "reason": reason,
            "chunk": chunk.index,
            "frame": chunk.start_frame,
            "before": None if before is None else before.to_dict(),
            "after": None if after is None else after.to_dict(),
        }
        self.recalibrations.append(record)
        del self.recalibrations[:-32]
        log.info("recalibrated", **record)
        if self.events is not None:
            self.events.publish("recalibrated", **record)


def _seconds_summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    a = np.asarray(values, np.float64)
    return {"count": int(a.size), "p50": round(float(np.percentile(a, 50)), 4),
            "p99": round(float(np.percentile(a, 99)), 4), "max": round(float(a.max()), 4)}


# ------------------------------------------------------------------------------------------ factory


class T5TextEncoder:
    """umT5 from the release, loaded for one prompt and freed again (the on-disk cache makes this rare)."""

    def __init__(self, weights_dir: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        self.weights_dir = Path(weights_dir)
        self.device, self.dtype = device, dtype
        self.identity = file_identity(self.weights_dir / T5_FILE, self.weights_dir / T5_TOKENIZER_DIR)

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        t0 = time.perf_counter()
        encoder = load_t5(self.weights_dir, self.device, self.dtype)
        try:
            context = encode_prompts(encoder, load_umt5_tokenizer(self.weights_dir), prompt)[0].cpu()
        finally:
            del encoder
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        log.info("text_encoded", seconds=round(time.perf_counter() - t0, 2), tokens=int(context.shape[0]))
        return context


def load_engine_models(weights_dir: str | Path, wav2vec_dir: str | Path | None, device: torch.device,
                       dtype: torch.dtype, text_cache_dir: str | Path, *, decoder: str = "wan",
                       taehv_path: str | Path | None = None, fp8: Fp8Plan | None = None,
                       text_device: torch.device | None = None) -> EngineModels:
    """DiT, VAE, CLIP visual and wav2vec2 from a release folder (strict), plus the cached lazy umT5; with
    decoder="taehv" also the tiny decoder (its file: `taehv_path`, else taehv/ beside the weights).

    fp8: a quant.fp8.Fp8Plan to quantise the DiT blocks while loading, or None. text_device: where umT5 runs on
    a text-cache miss (None: `device`)."""
    if decoder not in ("wan", "taehv"):
        raise RendererError(f"model.decoder must be 'wan' or 'taehv', got {decoder!r}")
    tiny_file = None
    if decoder == "taehv":  # find and check its file before the 14B loads
        plan = plan_taehv(find_taehv_file(taehv_path, weights_dir))
        plan.report.raise_for(plan.file, "tiny decoder (TAEHV)")
        tiny_file = plan.file
    wdir, w2v = resolve_release_dirs(weights_dir, wav2vec_dir)
    if w2v is None:
        raise RendererError(f"no wav2vec2 folder: set model.wav2vec_dir (none found beside {wdir})")
    clip_dtype = torch.float16 if device.type == "cuda" and dtype != torch.float32 else dtype
    dit = load_dit(wdir, device, dtype, fp8=fp8)
    vae = load_vae(wdir, device, dtype)
    clip = load_clip_visual(wdir, device, clip_dtype)
    wav2vec, extractor = load_wav2vec(w2v, device, torch.float32)
    text = CachedTextEncoder(T5TextEncoder(wdir, text_device or device, dtype), text_cache_dir)
    tiny = None if tiny_file is None else load_tiny_decoder(tiny_file, device, dtype)
    return EngineModels(dit=dit, vae=vae, clip=clip, wav2vec=wav2vec, feature_extractor=extractor, text=text,
                        decoder=tiny)


def load_models_for(model: ModelSettings, device: torch.device, dtype: torch.dtype,
                    fp8: Fp8Plan | None = None) -> EngineModels:
    """load_engine_models with the folders, text cache and decoder choice of `model` (its {state_dir} expanded)."""
    m = model
    if m.weights_dir is None:  # checked at config load (the flashtalk kind's `needs`): a caller's bug here
        raise RendererError("model.weights_dir is not set")
    return load_engine_models(m.weights_dir, m.wav2vec_dir, device, dtype, m.text_cache_dir, decoder=m.decoder,
                              taehv_path=m.taehv_path or None, fp8=fp8, text_device=text_device_for(m, device))


def text_device_for(model: ModelSettings, device: torch.device) -> torch.device:
    """model.text_device: the CPU (default: the GPU never holds umT5) or the model's own device."""
    return torch.device("cpu") if model.text_device == "cpu" else device


def load_tiny_decoder(path: str | Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The TAEHV decoder behind the VAE's decode convention (latents as sampled in, [-1, 1] out)."""
    return TinyVideoDecoder(load_taehv(path, device, dtype))


@dataclass(frozen=True)
class FlashTalkConfig:
    """What the FlashTalk renderer is built from: the model section ({state_dir} expanded), the video section and
    the profiles Settings resolved at load (one for a named profile, the candidates for "auto")."""

    model: ModelSettings
    video: VideoSettings
    profiles: tuple[Profile, ...]
    admission_margin: float = 0.0  # renderer.admission_margin: the play-out plans with the rate times 1 + this

    @classmethod
    def from_settings(cls, settings: Settings) -> "FlashTalkConfig":
        try:
            profiles = tuple(room_profiles(settings))
        except ProfileError as e:
            raise RendererError(str(e)) from None
        return cls(settings.expanded(settings.model), settings.video, profiles, settings.renderer.admission_margin)

    @property
    def auto_margin(self) -> float:
        """What "auto" keeps free of a chunk's duration: model.auto_margin, and never less than the admission's
        margin asks for. A profile whose p90 fits auto's margin but whose rate times 1 + admission_margin is over
        real time plays as a slow renderer: every clip waits for a head start (auto kept fast at p90 0.946 s of a
        1.12 s chunk on an H100 at 65e1313: an enqueue into an idle room took 3.0 s p50 to the air, 1.15 s with
        realtime at b8dd0bb)."""
        return max(self.model.auto_margin, 1.0 - 1.0 / (1.0 + self.admission_margin))


def build_flashtalk_renderer(config: FlashTalkConfig, events: EventBus | None = None, dit_wrapper: Any = None,
                             vae_wrapper: Any = None, chunk_timer: ChunkTimer | None = None) -> FlashTalkRenderer:
    """Load the release named in config.model, start the configured avatar session, warm up, return ready.

    dit_wrapper: optional callable applied to the loaded DiT before warm-up (the multi-GPU job's
    sequence-parallel client), so the warm-up already runs over every rank. vae_wrapper: the same for the
    loaded VAE (the multi-GPU job's split decode). chunk_timer: how "auto" times a chunk (default wall_timer).
    """
    log = get_logger("engine")  # bound now, not at import: follows the logging set up before the build
    m, v, profiles = config.model, config.video, config.profiles
    random_weights = m.random_weights
    if random_weights != "off" and not benchmark_mode():
        raise RendererError(f"model.random_weights = {random_weights!r} is for benchmarks only "
                            f"({BENCHMARK_ENV}=1 is not set)")
    if random_weights == "off" and not m.weights_dir:
        raise RendererError("model.weights_dir is not set: the FlashTalk renderer needs the SoulX-FlashTalk-14B folder")
    if v.fps != profiles[0].fps:
        raise RendererError(f"video.fps is {v.fps}; the FlashTalk model runs at {profiles[0].fps} fps")
    if v.chunk_frames != profiles[0].new_frames:
        raise RendererError(f"video.chunk_frames is {v.chunk_frames}; profile {profiles[0].name!r} makes "
                            f"{profiles[0].new_frames} frames per chunk (frame_num - motion_frames)")
    set_default_backend(m.attention)
    device = torch.device(m.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RendererError(f"model.device is {m.device} but CUDA is not available")
    dtype = getattr(torch, m.dtype)
    t0 = time.perf_counter()
    fp8 = plan_from_settings(m, device)  # None (bf16, with a warning) where the GPU has no fp8
    cache = use_compile_cache(m.compile_cache_dir) if m.compile else None
    if random_weights != "off":
        log.warning("random_weights", kind=random_weights, note="benchmark run: the avatar is random noise")
        # quantised block by block while built, as the release path does while loading
        models = random_engine_models(random_weights, device, dtype, decoder=m.decoder, fp8=fp8)
    else:
        models = load_models_for(m, device, dtype, fp8)
    if device.type == "cuda":
        # Every chunk runs the same conv shapes, so cuDNN's per-shape autotuning (paid once, in the warm-up)
        # picks faster VAE conv kernels: 436 -> 400 ms decode per fast-profile chunk on an H200 (issue 9).
        torch.backends.cudnn.benchmark = True
    models.vae.configure(latents_per_pass=m.vae_latents_per_pass,
                         channels_last=m.vae_channels_last and device.type == "cuda", compile=m.vae_compile)
    if m.park_context_projections and device.type == "cuda" and dit_wrapper is None \
            and isinstance(models.dit, FlashTalkDiT):
        moved = park_context_projections(models.dit)
        torch.cuda.empty_cache()  # the freed blocks back to the driver: what nvidia-smi shows
        log.info("context_projections_parked", gib=round(moved / 2**30, 2))
    if m.compile:
        compile_dit_blocks(models.dit, cuda_graphs=m.cuda_graphs)
        log.info("dit_compile", cuda_graphs=m.cuda_graphs, cache_dir=None if cache is None else str(cache))
    memory = None  # auto's measurements live with the compile cache: none without one
    if m.profile == AUTO and cache is not None:
        architecture = dataclasses.asdict(models.dit.cfg) if isinstance(models.dit, FlashTalkDiT) else {}
        memory = AutoMemory(cache, speed_fingerprint(m, v, profiles, device=device_name(device),
                                                     dit_architecture=architecture, quantized=fp8 is not None))
    if dit_wrapper is not None:
        models.dit = dit_wrapper(models.dit)
    if vae_wrapper is not None:
        models.vae = vae_wrapper(models.vae)

    def make(profile: Profile) -> FlashTalkRenderer:
        return FlashTalkRenderer(
            FlashTalkEngine(models, profile, device, dtype, output=(v.width, v.height, v.fit),
                            abandon_run_ahead_blocks=m.abandon_run_ahead_blocks),
            width=v.width, height=v.height, fit=v.fit,
            events=events, policy=RecalibrationPolicy.from_settings(m), drift_every=m.drift_every_chunks,
            crossfade_frames=m.recalibrate_crossfade_frames, lead_in=v.lead_in_frames,
        )

    weights = f"random:{random_weights}" if random_weights != "off" else file_identity(
        *[d for d in (m.weights_dir, m.wav2vec_dir) if d])
    image = load_image(v.reference_image) if v.reference_image else default_portrait()
    if m.profile == AUTO:
        renderer = choose_by_measurement(make, profiles, image, v.prompt, margin=config.auto_margin,
                                         chunks=m.auto_chunks, timer=chunk_timer or wall_timer,
                                         compiled=m.compile, ratio=m.auto_compiled_ratio, memory=memory)
    else:
        renderer = make(profiles[0])
        renderer.start_session(image, v.prompt)
        renderer.warm_up()
    renderer.bank_identity = json.dumps({"profile": dataclasses.asdict(renderer.profile), "weights": weights},
                                        sort_keys=True)
    log.info("flashtalk_renderer_ready", seconds=round(time.perf_counter() - t0, 2), profile=renderer.profile.name,
             device=str(device), dtype=m.dtype, decoder=m.decoder, quantize="fp8" if fp8 else "none")
    return renderer


def choose_by_measurement(make: Callable[[Profile], FlashTalkRenderer], candidates: Sequence[Profile],
                          image: np.ndarray, prompt: str, *, margin: float, chunks: int,
                          timer: ChunkTimer = wall_timer, compiled: bool = False,
                          ratio: float = 0.42, memory: AutoMemory | None = None) -> FlashTalkRenderer:
    """Warm up and time the candidates (best quality first) until one fits; return the chosen one, warm.

    Not compiled: each candidate is warmed and timed as it runs, until one fits (choose_profile). Compiled: each
    is first timed eager (cheap: no compile) and only the one predicted to fit at eager x `ratio` is compiled
    and timed again (next_auto_step); a compiled candidate that misses corrects the ratio and the search goes on.
    memory (compiled only): a record of an earlier search with this fingerprint seeds the search with its eager
    timings and ratio (no eager trials unless the remembered winner misses); the record is (re)written when this
    search learned something it did not hold.
    Logs `profile_measured` per measurement (stage eager / compiled / plain) and `profile_chosen`; when none
    fits, the fastest is kept and `profile_too_slow` is logged as an error (the room will underrun).
    """
    log = get_logger("engine")
    built: dict[str, FlashTalkRenderer] = {}

    def renderer_for(p: Profile) -> FlashTalkRenderer:
        if p.name not in built:
            r = make(p)
            r.start_session(image, prompt)
            built[p.name] = r
        return built[p.name]

    def measure(p: Profile, stage: str) -> list[float]:
        r = renderer_for(p)
        r.warm_up(lead_in=False)  # one untimed chunk: allocations, kernel selection, torch.compile
        seconds = r.time_chunks(chunks, lambda run: timer(p, run, stage))
        log.info("profile_measured", stage=stage, **ProfileTiming(p, tuple(seconds), margin).to_dict())
        return seconds

    eager: dict[str, list[float]] = {}
    record: AutoRecord | None = None
    age_s: float | None = None  # the record's age when recalled
    trials: list[str] = []  # eager trials this search ran
    done: dict[str, list[float]] = {}
    seeded: set[str] = set()  # compiled timings taken from the record, not measured by this start
    if compiled and memory is not None:
        record = memory.recall()
        if record is not None:  # seeded: next_auto_step goes straight to compiling the predicted winner
            eager = {p.name: list(record.eager[p.name]) for p in candidates if p.name in record.eager}
            ratio, age_s = record.ratio, record.age_s()
            # A better profile that compiled and missed stays a miss: a restart does not compile it again because
            # the winner's timing moved the ratio (fast on an H100 sits on its limit: 0.948-0.986 s vs 0.952 s).
            names = [p.name for p in candidates]
            ahead = names[:names.index(record.choice)] if record.choice in names else []
            for p in candidates:
                if p.name in ahead and p.name in record.compiled \
                        and not ProfileTiming(p, tuple(record.compiled[p.name]), margin).fits:
                    done[p.name] = list(record.compiled[p.name])
                    seeded.add(p.name)
            log.info("auto_remembered", path=str(memory.path), age_s=round(age_s, 1),
                     choice=record.choice, ratio=round(ratio, 4),
                     eager={p.name: round(ProfileTiming(p, tuple(eager[p.name]), margin).p90, 4)
                            for p in candidates if p.name in eager})
    if not compiled:
        timings: dict[str, list[float]] = {}
        for p in candidates:
            timings[p.name] = measure(p, PLAIN)
            if ProfileTiming(p, tuple(timings[p.name]), margin).fits:
                break
        choice = choose_profile(candidates, timings, margin)
    else:
        while True:
            step = next_auto_step(candidates, eager, done, margin, ratio)
            if step.action == "done":
                assert step.choice is not None
                if step.choice.profile.name in seeded:  # nothing fits and a remembered miss is the fastest:
                    seeded.discard(step.choice.profile.name)  # build and time it here before keeping it
                    done[step.choice.profile.name] = measure(step.choice.profile, COMPILED)
                    continue
                choice = step.choice
                break
            if step.action == "eager":
                with torch.compiler.set_stance("force_eager"):  # compiled blocks run their Python code
                    eager[step.profile.name] = measure(step.profile, EAGER)
                trials.append(step.profile.name)
            else:
                done[step.profile.name] = measure(step.profile, COMPILED)
    for name, r in built.items():
        if name != choice.profile.name:
            r.close()
    chosen = built[choice.profile.name]
    chosen.profile_choice = choice
    peaks = [r.load_peak_bytes for r in built.values() if r.load_peak_bytes is not None]
    chosen.load_peak_bytes = max(peaks) if peaks else None  # each warm-up reset the peak: the load is all of them
    chosen._auto_candidates = tuple(candidates)
    if compiled:
        chosen.auto_eager = eager
        chosen.auto_ratio = compiled_ratio(eager, {t.profile.name: t.seconds for t in choice.timings}, ratio)
        chosen.auto_remembered_age_s = age_s
        chosen.auto_eager_trials = trials
        learned = (record is None or bool(trials) or set(done) - seeded != {record.choice}
                   or choice.fits != record.fits)
        if memory is not None and learned:
            try:
                memory.save(eager, done, chosen.auto_ratio, choice.profile.name, choice.fits)
                log.info("auto_memory_saved", path=str(memory.path), remembered=record is not None)
            except OSError as e:  # a read-only or full state dir costs the next start its trials, not this one
                log.warning("auto_memory_not_saved", path=str(memory.path), error=str(e))
    summary = {"profile": choice.profile.name, "fits": choice.fits, "margin": margin,
               "measured": {t.profile.name: t.p90 for t in choice.timings},
               "eager": {n: ProfileTiming(next(p for p in candidates if p.name == n), tuple(v), margin).p90
                         for n, v in eager.items()},
               "remembered": record is not None,
               "remembered_age_s": None if age_s is None else round(age_s, 1),
               "eager_trials": trials if compiled else None}
    if choice.fits:
        log.info("profile_chosen", reason="best quality within the real-time budget", **summary)
    else:
        log.error("profile_too_slow", reason="no candidate keeps real time on this device: running the fastest; "
                  "expect underruns (add a smaller profile to model.auto_candidates or more GPUs)", **summary)
    return chosen
