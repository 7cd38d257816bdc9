"""FlashTalkEngine: one avatar session's chunk loop (sample -> decode -> colour -> motion re-encode -> uint8 frames).

The reference's `generate()` for stream mode, with the motion context, the session noise generator and
the per-stage timings held here.  `generate_chunk(audio_embedding)` returns exactly
`frame_num - motion_frames` new frames as uint8 [new_frames, H, W, 3] at the profile geometry, or at the output
geometry when one is given (fitted on the device, so the render thread does no per-frame resize on the CPU).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from flashtalk_live.chunks import RenderAbandoned
from flashtalk_live.engine.profile import VAE_TEMPORAL, Profile
from flashtalk_live.engine.sampler import NoiseFn, NoiseSource, make_timesteps, sample
from flashtalk_live.images import BACKGROUND, FitMode, fit_box
from flashtalk_live.engine.session import AvatarSession, TextEncoder, prepare_session
from flashtalk_live.model.audio import encode_stream_window
from flashtalk_live.model.colour import match_and_blend_colors


class EngineError(RuntimeError):
    """The engine was used out of order (no session) or given inputs it cannot use."""


@dataclass
class EngineModels:
    """The loaded model family. `clip` and `wav2vec` are optional for callers that pass features directly."""

    dit: torch.nn.Module
    vae: torch.nn.Module
    clip: torch.nn.Module | None = None
    wav2vec: Any = None  # transformers Wav2Vec2Model (eval)
    feature_extractor: Any = None  # transformers Wav2Vec2FeatureExtractor
    text: TextEncoder | None = None  # prompt -> context (normally a CachedTextEncoder)
    decoder: torch.nn.Module | None = None  # latents -> video like vae.decode (the tiny decoder); None: the VAE


class StageTimer:
    """Per-stage seconds of one chunk: CUDA events on a GPU, perf_counter on the CPU; free when disabled."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self.cuda = enabled and device.type == "cuda"
        self._events: list[tuple[str, Any, Any]] = []
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def finish(self) -> dict[str, float]:
        if self.cuda and self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self.seconds[name] = self.seconds.get(name, 0.0) + start.elapsed_time(end) / 1000.0
            self._events.clear()
        return dict(self.seconds)


class HostCopy:
    """A device->host copy that does not hold up the GPU queue: on CUDA it runs on a side stream into pinned
    memory, so the work queued after it (the motion-frame encode) runs while the frames travel; `wait()`
    waits for the copy alone. On the CPU it is the tensor itself."""

    def __init__(self, t: torch.Tensor, stream: Any = None) -> None:
        self._event = None
        if t.device.type != "cuda":
            self._host = t.cpu()
            return
        stream = stream or torch.cuda.Stream(device=t.device)
        self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(t.device))  # after the kernels that make t
        with torch.cuda.stream(stream):
            self._host.copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(stream)
        t.record_stream(stream)  # t's memory is not reused by the main stream before the copy is done

    def wait(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
        return self._host


@dataclass
class ChunkOutput:
    """What one chunk produced besides its frames (kept small: one frame each for the drift measure)."""

    index: int
    frames: np.ndarray  # uint8 [new_frames, H, W, 3]
    raw_frame: torch.Tensor  # [1, 3, 1, H, W] decoded, before colour correction: last new frame
    out_frame: torch.Tensor  # [1, 3, 1, H, W] after colour correction: last new frame
    timings: dict[str, float] = field(default_factory=dict)


def fit_video(video: torch.Tensor, width: int, height: int, mode: FitMode = "cover") -> torch.Tensor:
    """[3, T, H, W] in [-1, 1] -> [3, T, height, width]: fit_image's rule (fit_box) on the device, bilinear with
    antialiasing; `contain` pads with the still renderer's background colour."""
    _, _, ih, iw = video.shape
    if (ih, iw) == (height, width):
        return video
    sw, sh, x0, y0 = fit_box(iw, ih, width, height, mode)
    scaled = F.interpolate(video.transpose(0, 1), size=(sh, sw), mode="bilinear", antialias=True,
                           align_corners=False).transpose(0, 1)
    if mode == "cover":
        return scaled[:, :, y0:y0 + height, x0:x0 + width]
    bg = torch.tensor(BACKGROUND, dtype=video.dtype, device=video.device) / 127.5 - 1
    out = bg.view(3, 1, 1, 1).expand(3, video.shape[1], height, width).clone()
    out[:, :, y0:y0 + sh, x0:x0 + sw] = scaled
    return out


class BlockRunAhead:
    """Between two DiT blocks: stop an abandoned chunk there, the host kept at most `ahead` blocks in front of the
    device. Unbounded, the host queues a whole step's blocks in a few milliseconds and a stop could only land at
    the step's end; bounded, the device stops within about `ahead` + 1 blocks of the re-plan. Each wait is on an
    event the host recorded `ahead` blocks back (torch lets go of the interpreter while it waits)."""

    def __init__(self, abandoned: Callable[[], bool], ahead: int, device: torch.device) -> None:
        self.abandoned, self.ahead, self.device = abandoned, ahead, device
        self.step = 0
        self._marks: deque[torch.cuda.Event] = deque()

    def __call__(self, block: int) -> None:
        if self.device.type == "cuda":
            mark = torch.cuda.Event()
            mark.record(torch.cuda.current_stream(self.device))
            self._marks.append(mark)
            while len(self._marks) > self.ahead:
                self._marks.popleft().synchronize()
        if self.abandoned():
            raise RenderAbandoned(f"abandoned before block {block} of step {self.step}")


class FlashTalkEngine:
    """Chunked generation for one avatar session at a time. Not thread-safe: one caller drives it."""

    def __init__(
        self,
        models: EngineModels,
        profile: Profile,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        noise_fn: NoiseFn | None = None,
        timing: bool = False,
        cache_inputs: bool = True,
        output: tuple[int, int, FitMode] | None = None,
        abandon_run_ahead_blocks: int = 0,
    ) -> None:
        """cache_inputs: the DiT keeps the text/image cross-attention K/V per session, the audio tokens per
        chunk and the RoPE tables per geometry (`FlashTalkDiT.set_input_cache`); False recomputes them
        every step (same numbers, for before/after measurements). output: (width, height, fit) of the frames
        returned (None: the profile's geometry). abandon_run_ahead_blocks: 0, an abandoned chunk stops at its next
        denoising step; N >= 1, between DiT blocks, the host kept at most N blocks ahead of the device (one
        GPU; not with CUDA graphs, whose blocks replay as one tree per step)."""
        if abandon_run_ahead_blocks < 0:
            raise EngineError(f"abandon_run_ahead_blocks must be >= 0, got {abandon_run_ahead_blocks}")
        self.abandon_run_ahead_blocks = abandon_run_ahead_blocks
        self.models = models
        self.profile = profile
        self.device = torch.device(device)
        self.dtype = dtype
        self.output = output
        self.frame_hw = (profile.height, profile.width) if output is None else (output[1], output[0])
        self.timing = timing
        self.noise_fn = noise_fn
        self.timesteps = make_timesteps(profile.sample_steps, profile.shift)
        self._timesteps_device = self.timesteps.to(self.device)  # once: a copy per step would stall the queue
        self._copy_stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self.session: AvatarSession | None = None
        self.motion: torch.Tensor | None = None
        self.noise: NoiseSource | None = None
        self.chunk_index = 0
        self.last_timings: dict[str, float] = {}
        # perf_counter when the last chunk's denoising ended, where the chunk was generated with an abandon check
        # (each step waited for on the device): an abandoned chunk stops only up to there (the decode and the host
        # work after it run to the end), which the renderer reports as its stoppable share
        self.last_denoise_end: float | None = None
        self.last_motion_in: torch.Tensor | None = None  # the motion context the last chunk was generated from
        self._shapes: dict[int, Profile] = {}  # shorter chunks (a clip's lead-in) by new frames: `shape`
        self._y: dict[int, torch.Tensor] = {}  # the session's conditioning cut to each shorter chunk
        self._audio_seconds: float | None = None
        dit_cfg = getattr(models.dit, "cfg", None)
        if dit_cfg is not None and getattr(dit_cfg, "in_dim", 36) != 36:
            raise EngineError(f"the DiT has in_dim {dit_cfg.in_dim}; FlashTalk needs 36 (16 noisy + 20 conditioning)")
        set_cache = getattr(models.dit, "set_input_cache", None)
        if set_cache is not None:
            set_cache(cache_inputs)

    # -- session --------------------------------------------------------------------------------------
    def start_session(
        self,
        image: np.ndarray,
        prompt: str,
        *,
        context: torch.Tensor | None = None,
        clip_fea: torch.Tensor | None = None,
    ) -> AvatarSession:
        """Prepare the reference image + prompt; resets the motion context and the session noise generator."""
        m = self.models
        session = prepare_session(
            self.profile, image, prompt, vae=m.vae, clip=m.clip, text=m.text, context=context, clip_fea=clip_fea,
            device=self.device, dtype=self.dtype,
        )
        self.use_session(session)
        return session

    def use_session(self, session: AvatarSession) -> None:
        if session.profile != self.profile:
            raise EngineError(f"session was prepared for profile {session.profile.name!r}, engine runs {self.profile.name!r}")
        clear = getattr(self.models.dit, "clear_input_cache", None)
        if session is not self.session and clear is not None:
            clear()  # the old session's K/V go now (a new context would also miss the cache by its identity)
        self.session = session
        self._y.clear()
        self.motion = session.motion0
        self.noise = NoiseSource(self.profile.seed, self.device, self.noise_fn)
        self.chunk_index = 0

    def reanchor(self) -> None:
        """Motion context back to the reference image's latent (as on chunk 0); the noise stream continues."""
        self.motion = self._session().motion0

    @torch.no_grad()
    def set_motion_frames(self, frames: np.ndarray) -> None:
        """Condition the next chunk on frames that aired (uint8 [n, H, W, 3] at the profile geometry): the motion
        context becomes the VAE latents of their last motion_frames (fewer on hand: the longest 1 + 4j)."""
        self._session()
        p = self.profile
        if frames.ndim != 4 or frames.shape[1:] != (p.height, p.width, 3) or frames.shape[0] < 1:
            raise EngineError(f"motion frames must be uint8 [n, {p.height}, {p.width}, 3], got {tuple(frames.shape)}")
        n = min(frames.shape[0], p.motion_frames)
        n = 1 + (n - 1) // 4 * 4
        x = torch.from_numpy(np.ascontiguousarray(frames[-n:])).to(self.device).permute(3, 0, 1, 2).float()
        x = ((x / 255 - 0.5) * 2)[None]  # [1, 3, n, H, W] in [-1, 1], as the engine's own frames before uint8
        self.motion = self.models.vae.encode(x.to(next(self.models.vae.parameters()).dtype))[0]

    def _session(self) -> AvatarSession:
        if self.session is None:
            raise EngineError("no avatar session: call start_session(image, prompt) first")
        return self.session

    def shape(self, new_frames: int | None = None) -> Profile:
        """The profile of a chunk of `new_frames` new frames: the profile itself, or (a clip's lead-in: shorter
        chunks that reach the air sooner) the same with a shorter frame_num. The conditioning `y` of a shorter
        chunk is the first latent frames of the profile's: the causal VAE's latent t sees only frames <= 4t."""
        p = self.profile
        if new_frames is None or new_frames == p.new_frames:
            return p
        short = self._shapes.get(new_frames)
        if short is None:
            if not 0 < new_frames < p.new_frames or (new_frames + p.motion_frames - 1) % VAE_TEMPORAL:
                raise EngineError(f"profile {p.name!r} cannot make a chunk of {new_frames} new frames: it needs "
                                  f"0 < n < {p.new_frames} and n + {p.motion_frames} motion frames = 1 + 4k")
            short = self._shapes[new_frames] = p.replace(frame_num=new_frames + p.motion_frames)
        return short

    def _conditioning(self, s: AvatarSession, p: Profile) -> torch.Tensor:
        if p.latent_frames == s.y.shape[1]:
            return s.y
        y = self._y.get(p.latent_frames)
        if y is None:
            y = self._y[p.latent_frames] = s.y[:, :p.latent_frames].contiguous()
        return y

    # -- audio ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def audio_features(self, window: np.ndarray, new_frames: int | None = None) -> torch.Tensor:
        """The profile's rolling window (audio_window_seconds of 16 kHz mono ending at the chunk's end) ->
        [1, frame_num, 5, layers, hidden] wav2vec2 windows (frame_num of `shape(new_frames)`); the time is
        charged to the next chunk."""
        m = self.models
        if m.wav2vec is None or m.feature_extractor is None:
            raise EngineError("no wav2vec2 model loaded: pass audio features to generate_chunk directly")
        t0 = time.perf_counter()
        emb = encode_stream_window(m.wav2vec, m.feature_extractor, window, self.shape(new_frames).audio_config())
        if self.timing and emb.is_cuda:
            torch.cuda.synchronize()
        self._audio_seconds = time.perf_counter() - t0
        return emb

    # -- one chunk ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_chunk(self, audio_embedding: torch.Tensor, **kw: Any) -> np.ndarray:
        """Audio features [1, frame_num, 5, layers, hidden] -> uint8 frames [new_frames, H, W, 3] (kw: generate's)."""
        return self.generate(audio_embedding, **kw).frames

    @torch.no_grad()
    def generate(
        self,
        audio_embedding: torch.Tensor,
        *,
        noise: Sequence[torch.Tensor] | None = None,
        trace: dict[str, Any] | None = None,
        abandoned: Callable[[], bool] | None = None,
        new_frames: int | None = None,
    ) -> ChunkOutput:
        """As generate_chunk, returning a ChunkOutput (frames, drift frames, stage timings).

        new_frames: a shorter chunk (`shape`), e.g. a clip's lead-in; the audio features must be of that shape.

        abandoned: asked at each denoising step's start and before decoding, once the device has finished the
        step before (a sync, so the steps queued ahead do not run on), and between DiT blocks with
        `abandon_run_ahead_blocks` (BlockRunAhead); True raises RenderAbandoned and leaves the engine as before the
        call (motion context, chunk index; the noise generator has moved on)."""
        s = self._session()
        p = self.shape(new_frames)
        m = self.models
        y = self._conditioning(s, p)
        assert self.motion is not None and self.noise is not None
        if audio_embedding.ndim == 4:
            audio_embedding = audio_embedding[None]
        if audio_embedding.ndim != 5 or audio_embedding.shape[1] != p.frame_num:
            raise EngineError(f"audio features must be [1, {p.frame_num}, window, layers, hidden] for profile "
                              f"{p.name!r}, got {tuple(audio_embedding.shape)}")
        timer = StageTimer(self.device, self.timing)
        if self._audio_seconds is not None and self.timing:
            timer.seconds["audio_features"] = self._audio_seconds
        self._audio_seconds = None
        wall0 = time.perf_counter()

        audio = audio_embedding.to(device=self.device, dtype=self.dtype)
        h, w = p.latent_hw
        z = s.motion0.shape[0]
        latent_shape = (z, p.latent_frames, h, w)
        motion = self.motion
        self.last_motion_in = motion
        if trace is not None:
            trace["motion_latents_in"] = motion.clone()

        graphs = uses_cuda_graphs(m.dit)

        between = None
        if abandoned is not None and self.abandon_run_ahead_blocks and not graphs:
            between = BlockRunAhead(abandoned, self.abandon_run_ahead_blocks, self.device)

        def velocity(latent: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            with timer.stage(f"dit_step_{i}"):
                if graphs:  # a new graph-tree step: the previous step's block outputs may be overwritten now
                    torch.compiler.cudagraph_mark_step_begin()
                if between is None:  # a wrapper over several GPUs takes no hook: never passed one there
                    return m.dit(latent[None], t, s.context[None], s.clip_fea, y[None], audio)[0]
                between.step = i
                return m.dit(latent[None], t, s.context[None], s.clip_fea, y[None], audio,
                             between_blocks=between)[0]

        def stop() -> bool:
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # the GIL is released meanwhile
            return abandoned is not None and abandoned()

        latent = sample(velocity, motion, latent_shape, self._timesteps_device, self.noise, noise_dtype=self.dtype,
                        injected=noise, trace=trace, abandoned=None if abandoned is None else stop)
        # with `abandoned`, `stop` waited for each step on the device: the denoising is done there too (without it,
        # only queued: the renderer reads this after a render with the check only)
        self.last_denoise_end = time.perf_counter()
        vae_dtype = next(m.vae.parameters()).dtype
        decoder = m.vae if m.decoder is None else m.decoder  # the tiny decoder decodes each chunk on its own
        with timer.stage("vae_decode"):
            decoded = decoder.decode(latent[None].to(next(decoder.parameters()).dtype)).to(vae_dtype)
            # [1, 3, frame_num, H, W] in [-1, 1]; motion frames are re-encoded below with the Wan encoder
        if decoded.shape[2] != p.frame_num:
            raise EngineError(f"VAE decoded {decoded.shape[2]} frames, the profile needs {p.frame_num}")
        with timer.stage("colour_correction"):
            if p.colour_correction_strength > 0:
                video = match_and_blend_colors(decoded, s.cond_image, float(p.colour_correction_strength))
            else:
                video = decoded
        with timer.stage("host_copy"):  # the uint8 conversion; the copy itself overlaps the motion encode
            new = video[0, :, p.motion_frames:].float()
            if self.output is not None:
                new = fit_video(new, *self.output)
            u8 = (((new + 1) / 2).clamp(0, 1) * 255).to(torch.uint8)  # truncation, as the reference's astype
            copy = HostCopy(u8.permute(1, 2, 3, 0).contiguous(), self._copy_stream)
        with timer.stage("motion_encode"):
            next_motion = m.vae.encode(video[:, :, -p.motion_frames:])[0]
        frames = copy.wait().numpy()  # waits for the frames only; the motion encode may still be running
        if frames.shape[0] != p.new_frames:
            raise EngineError(f"chunk produced {frames.shape[0]} new frames, expected {p.new_frames}")
        assert frames.shape == (p.new_frames, *self.frame_hw, 3), frames.shape

        if trace is not None:
            trace["latent_final"] = latent.clone()
            trace["decoded"] = decoded.clone()
            trace["colour_corrected"] = video.clone()
            trace["motion_latents_out"] = next_motion.clone()
            trace["frames"] = frames.copy()
        self.motion = next_motion
        timings = timer.finish()
        timings["total"] = time.perf_counter() - wall0 + timings.get("audio_features", 0.0)
        self.last_timings = timings
        out = ChunkOutput(index=self.chunk_index, frames=frames, raw_frame=decoded[:, :, -1:].clone(),
                          out_frame=video[:, :, -1:].clone(), timings=timings)
        self.chunk_index += 1
        return out


DIT_SHAPE_LIMIT = 64  # compiled entries per block code object (torch._dynamo's recompile_limit)
CUDA_GRAPHS_MODE = "reduce-overhead"  # inductor with CUDA graph trees: each block replayed as one graph


def dit_compile_options(cuda_graphs: bool = False) -> dict[str, Any]:
    """torch.compile keyword arguments of each DiT block: fixed shapes per profile; with cuda_graphs the blocks
    are captured as CUDA graphs at the first warm calls of each shape and replayed afterwards (one launch per
    block instead of its dozens of kernels)."""
    return {"dynamic": False, "mode": CUDA_GRAPHS_MODE if cuda_graphs else None}


def compile_dit_blocks(dit: torch.nn.Module, cuda_graphs: bool = False) -> None:
    """torch.compile every transformer block in place (state-dict keys unchanged); the warm-up pays the compile.

    cuda_graphs: mode "reduce-overhead" (see dit_compile_options); the DiT is marked so that the engine starts a
    new graph-tree step before each of its forwards (`uses_cuda_graphs`). Off CUDA the graphs are skipped by
    torch and the blocks run as plain compiled code."""
    options = dit_compile_options(cuda_graphs)
    # One compiled entry per block kind (bf16, fp8) and chunk shape: the profile, the lead-in's lengths and auto's
    # trials exceed torch's default of 8, past which a new shape would silently run eager.
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, DIT_SHAPE_LIMIT)
    for block in dit.blocks:
        block.compile(**options)
    setattr(dit, "cuda_graphs", cuda_graphs)  # a plain attribute on the module: no state-dict key


def uses_cuda_graphs(dit: torch.nn.Module) -> bool:
    """Whether compile_dit_blocks captured this DiT's blocks as CUDA graphs (one GPU: a multi-GPU wrapper is not
    marked, so it never starts graph-tree steps)."""
    return bool(getattr(dit, "cuda_graphs", False))
