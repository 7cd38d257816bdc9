"""The renderer supervisor: the preferred renderer while it is ready and healthy, the still renderer otherwise."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import numpy as np

from flashtalk_live.backoff import Backoff
from flashtalk_live.log import get_logger
from flashtalk_live.renderers.base import Renderer
from flashtalk_live.settings import RendererSettings, VideoSettings
from flashtalk_live.chunks import MOTION_FRAMES, RenderAbandoned, RenderChunk, RenderedChunk


def _wall_time(run: Callable[[], Any]) -> float:
    """Seconds `run()` takes (the renderer's output is on the CPU when it returns: no device sync needed)."""
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


class RendererSupervisor:
    """Runs the preferred renderer when it is ready and healthy; the still renderer otherwise, with retry backoff."""

    def __init__(self, renderer: RendererSettings, video: VideoSettings, still: Renderer,
                 load: Callable[[], Renderer] | None, reference: np.ndarray) -> None:
        """load builds the preferred renderer (in the background, again after a failure); None: the still one only."""
        self.r, self.v = renderer, video
        self.still = still
        self.log = get_logger("renderer")
        self._load = load
        self._reference, self._prompt = reference, video.prompt  # the avatar now on air (set_avatar changes both)
        self.preferred: Renderer | None = None
        self.active: Renderer = still  # on duty: rendering the look-ahead (viewers see it seconds later)
        self._reasons: dict[str, str] = {}  # renderer name -> why it was last put on duty
        self.failures = 0
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._backoff = Backoff(renderer.fallback_retry_initial_s, renderer.fallback_retry_max_s)
        self._loading: threading.Thread | None = None
        # One load at a time: start() runs on the broadcast thread (at the first frame out), the retry check on the
        # render thread, and the loader publishes `preferred` under it, so "no engine and no load alive" is read
        # as one moment (two loads would mean two engines on one GPU).
        self._load_lock = threading.Lock()
        self._engine_pool = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._abandoned: Future | None = None  # an engine call given up on at its deadline
        self._drew: tuple[Renderer, np.ndarray] | None = None  # the renderer of the last chunk rendered, its frames
        self.last_render_s = 0.0
        self.render_rtf = 0.0
        self.typical_s: float | None = None  # the preferred renderer's chunk time: its warm-up, then an EWMA
        self.typical_short: dict[int, float] = {}  # ... and each lead-in length's, timed after its warm-up

    def start(self) -> None:
        """Start loading the preferred renderer (once; the broadcast calls it at its first frame)."""
        with self._load_lock:
            if self._load is not None and self._loading is None:
                self._start_loading()

    def _start_loading(self) -> None:
        load = self._load
        if load is None:  # the still renderer only: nothing to build
            return

        def build() -> None:
            try:
                r = load()
                avatar = (self._reference, self._prompt)
                r.start_session(*avatar)  # a reload after a failure keeps the current avatar
                pool = ThreadPoolExecutor(1, thread_name_prefix="engine")
                warm_up = getattr(r, "warm_up", None)
                time_chunks = getattr(r, "time_chunks", None)
                typical = None
                if warm_up is not None:
                    # Again on the thread that will render: some caches are per thread (cuDNN's autotuned
                    # algorithms are thread_local), and filling them on air cost the first chunk > 2.5x its
                    # budget on an H200, so the engine was abandoned on every load.
                    t0 = time.monotonic()
                    pool.submit(warm_up).result()
                    typical = time.monotonic() - t0
                if time_chunks is not None:
                    # The rate (and the hang deadline) start from a chunk timed after the tuning, on the same
                    # thread: the warm-up includes cuDNN's autotuning and overstated the rate several times, so the
                    # first clips after each (re)load waited for head starts they did not need.
                    tuned = pool.submit(time_chunks, 1, _wall_time).result()
                    # each lead-in length too: the first clip's head start counts on them (admission)
                    short = {n: pool.submit(time_chunks, 1, _wall_time, n).result()[0]
                             for n in getattr(r, "lead_in", ())}
                    self.log.info("renderer_rate_measured", renderer=r.name, warm_up_s=typical,
                                  chunk_s=round(tuned[0], 4), lead_in_s={n: round(v, 4) for n, v in short.items()})
                    typical = tuned[0]
                    self.typical_short = short
                self.typical_s = typical
                self._engine_pool = pool
                self._abandoned = None
                while True:
                    # set_avatar during the load (minutes) changed the avatar after start_session above: the engine
                    # takes the new one before it is published (set_avatar, under the same lock, reaches it after).
                    with self._load_lock:
                        now = (self._reference, self._prompt)
                        if now[0] is avatar[0] and now[1] == avatar[1]:
                            self.preferred = r
                            break
                    avatar = now
                    r.start_session(*avatar)
                self.log.info("renderer_loaded", renderer=r.name)
            except Exception as e:  # noqa: BLE001 - any load failure keeps the still renderer on air
                self._fail(f"load failed: {e!r}")

        self.log.info("renderer_loading", retry=self._loading is not None)
        self._loading = threading.Thread(target=build, name="renderer-load", daemon=True)
        self._loading.start()

    def _fail(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        self.preferred = None
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        self.log.error("renderer_failed", reason=reason, retry_in_s=round(delay, 1))

    def _switch(self, r: Renderer, reason: str) -> None:
        """`r` draws from the next chunk on; its frames air a look-ahead later, where `renderer_changed` is
        published (playout/onair.py, with `reason_of`)."""
        if r is not self.active:
            self.log.warning("renderer_on_duty", renderer=r.name, previous=self.active.name, reason=reason)
            self._reasons[r.name] = reason
            self.active = r

    def reason_of(self, name: str) -> str:
        """Why the renderer `name` was last put on duty ("ready", "failed"): for its frames' `renderer_changed`."""
        return self._reasons.get(name, "ready")

    def served(self, name: str) -> None:
        """A chunk of `name`'s frames drawn earlier (the idle bank) goes out instead of a render: the preferred
        renderer is on duty once its pictures are, whether or not it has rendered since it loaded (a warm start
        whose bank is on disk airs idle without one render call)."""
        p = self.preferred
        if p is not None and p.name == name and p.ready():
            self._switch(p, "ready")

    def deadline_s(self, budget_s: float) -> float:
        """No frames this long after a chunk started means the engine hangs: deadline_factor x the chunk's duration,
        or x the engine's own typical chunk time when it is slower than real time (render-ahead covers that)."""
        return self.r.deadline_factor * max(budget_s, self.typical_s or 0.0)

    def fallback_on_air_s(self, on_air: tuple[str, float] | None, now: float) -> float | None:
        """How long the still renderer's frames have aired instead of a configured preferred renderer (loading or
        failed). `on_air`: whose frames air and since when (playout/onair.py), since viewers see a switch a
        look-ahead after the render thread makes it. None: the preferred one's frames air, none aired yet, or none
        is configured."""
        if self._load is None or on_air is None or on_air[0] != self.still.name:
            return None
        return max(0.0, now - on_air[1])

    def expected_rate(self) -> float | None:
        """Render seconds per media second the next chunk will likely take (None: not known yet)."""
        p = self.preferred
        if p is not None and p.ready() and self.typical_s is not None:
            return self.typical_s / (self.v.chunk_frames / self.v.fps)
        return None

    def expected_short(self) -> dict[int, float]:
        """Render seconds of each lead-in length the next chunks of them will likely take (empty: none known)."""
        p = self.preferred
        return dict(self.typical_short) if p is not None and p.ready() else {}

    def _next(self) -> Renderer:
        """The renderer the next render() call would use."""
        p = self.preferred
        return p if p is not None and p.ready() else self.still

    def _ask_next(self, method: str) -> float | None:
        fn = getattr(self._next(), method, None)  # optional in the Renderer protocol
        return fn() if callable(fn) else None

    def abandon_s(self) -> float | None:
        """The renderer on duty's step (FlashTalk: a denoising step, or N + 1 DiT blocks with run-ahead blocks): a
        chunk a re-plan abandons stops at its next step boundary (None: it runs to its end, or not known yet)."""
        return self._ask_next("abandon_s")

    def stoppable_share(self) -> float | None:
        """The renderer on duty's share of a chunk in which `abandon_s` holds (None: all of it, as far as known)."""
        return self._ask_next("stoppable_share")

    def current_name(self) -> str:
        """The renderer the next render() call would use."""
        return self._next().name

    def render(self, chunk: RenderChunk) -> RenderedChunk:
        """Render with the preferred renderer if it can, else the still one. Raises only RenderAbandoned (a re-plan
        discarded the chunk while it rendered); any other failure falls back to the still renderer."""
        with self._load_lock:
            if self.preferred is None and self._load is not None and self._loading is not None \
                    and not self._loading.is_alive() and time.monotonic() >= self._retry_at \
                    and (self._abandoned is None or self._abandoned.done()):  # never two engines on one GPU
                self._start_loading()
        r = self._next()
        if r is not self.still:
            drew = self._drew
            if chunk.motion_frames is None and drew is not None and drew[0] is not r:
                # The caller leaves them out when the renderer it saw on duty drew the chunk before; the loader may
                # have published `r` since it looked: `r` continues from those frames, not from its warm-up.
                chunk.motion_frames = drew[1][-MOTION_FRAMES:]
            self._switch(r, "ready")
            budget = chunk.n_frames / self.v.fps
            deadline = self.deadline_s(budget)
            t0 = time.monotonic()
            call = self._engine_pool.submit(r.render, chunk)
            try:
                # A hung engine (a stuck CUDA call) is abandoned at the deadline, so the still renderer takes
                # this very chunk while the look-ahead still holds frames: the broadcast never waits on it.
                frames = call.result(timeout=deadline)
                took = time.monotonic() - t0
                if took > deadline:
                    raise TimeoutError(f"chunk took {took:.2f}s, over its {deadline:.2f}s deadline")
                self._check_frames(frames, chunk)
                self._backoff.reset()
                # Slow to follow (a slowly sinking engine must not stretch its own deadline much); a full chunk's
                # time only (a clip's shorter lead-in chunks would pull the expected rate down).
                if chunk.n_frames == self.v.chunk_frames:
                    self.typical_s = took if self.typical_s is None else self.typical_s + 0.05 * (took - self.typical_s)
                return self._done(chunk, frames, r, took)
            except RenderAbandoned:  # a re-plan discarded the chunk: nothing failed, nothing to air
                raise
            except Exception as e:  # noqa: BLE001 - fall back within this very chunk
                if isinstance(e, FutureTimeout):
                    e = TimeoutError(f"no frames {deadline:.2f}s after the chunk started ({self.r.deadline_factor}x "
                                     f"max(its {budget:.2f}s, the engine's typical {self.typical_s or 0:.2f}s)): "
                                     "engine abandoned")
                    self._abandoned = call
                    call.add_done_callback(functools.partial(self._close_after, r))
                else:
                    self._close_quietly(r)
                self._fail(repr(e))
                self._switch(self.still, "failed")
        t0 = time.monotonic()
        frames = self.still.render(chunk)
        return self._done(chunk, frames, self.still, time.monotonic() - t0)

    @staticmethod
    def _close_after(r: Renderer, _done: Any) -> None:
        RendererSupervisor._close_quietly(r)

    @staticmethod
    def _close_quietly(r: Renderer) -> None:
        try:
            r.close()
        except Exception:  # noqa: BLE001
            pass

    def set_avatar(self, image: np.ndarray, prompt: str) -> None:
        """A new reference portrait/prompt for every renderer, applied between chunks (render thread)."""
        with self._load_lock:  # a load in progress publishes its engine only with this avatar's session
            self._reference, self._prompt = image, prompt
            p = self.preferred
        self.still.start_session(image, prompt)
        if p is not None:
            try:
                p.start_session(image, prompt)
            except Exception as e:  # noqa: BLE001 - the still renderer keeps the room on air
                # As a failed render: closed (the reload after the backoff must not find it on the GPU), and the
                # still renderer on duty from the next chunk, for status, metrics and its frames' renderer_changed.
                self._close_quietly(p)
                self._fail(f"new session failed: {e!r}")
                self._switch(self.still, "failed")

    def _check_frames(self, frames: np.ndarray, chunk: RenderChunk) -> None:
        want = (chunk.n_frames, self.v.height, self.v.width, 3)
        if frames.shape != want or frames.dtype != np.uint8:
            raise ValueError(f"renderer returned {frames.dtype}{list(frames.shape)}, expected uint8{list(want)}")

    def _done(self, chunk: RenderChunk, frames: np.ndarray, r: Renderer, took: float) -> RenderedChunk:
        self._drew = (r, frames)
        self.last_render_s = took
        self.render_rtf = took / (chunk.n_frames / self.v.fps)
        return RenderedChunk(chunk=chunk, frames=frames, renderer=r.name, render_seconds=took)

    def status(self, on_air: tuple[str, float] | None = None) -> dict[str, Any]:
        """`active`: the renderer on duty; `on_air`: whose frames viewers see (from `on_air`, as for
        `fallback_on_air_s`); `on_fallback`: the still renderer's frames air instead of the preferred one's."""
        drift = getattr(self.preferred, "drift", None) if self.preferred is not None else None
        fallback = self.fallback_on_air_s(on_air, time.monotonic())
        return {
            "active": self.active.name,
            "on_air": None if on_air is None else on_air[0],
            "on_fallback": fallback is not None,
            "on_fallback_s": None if fallback is None else round(fallback, 1),
            "preferred": getattr(self.preferred, "name", None),
            "failures": self.failures,
            "last_error": self.last_error,
            "render_rtf": round(self.render_rtf, 3),
            "typical_chunk_s": None if self.typical_s is None else round(self.typical_s, 3),
            "drift": drift() if callable(drift) else drift,
        }

    def close(self) -> None:
        for r in {id(self.still): self.still, id(self.preferred): self.preferred}.values():
            if r is not None:
                self._close_quietly(r)
