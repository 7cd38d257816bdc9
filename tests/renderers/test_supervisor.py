"""The renderer supervisor's hang deadline follows the engine's own speed: slow is not hung, hung is abandoned."""

from __future__ import annotations

import threading
import time

import numpy as np

from flashtalk_live.renderers.still import StillRenderer
from flashtalk_live.renderers.supervisor import RendererSupervisor
from flashtalk_live.settings import Settings

from support.chunks import render_chunk

NF, FPS = 5, 25  # 0.2 s chunks


class SlowEngine:
    """A renderer slower than real time on purpose (an engine on a small GPU): each call sleeps `take_s`, or
    blocks until released while `hang` is set (a stuck GPU kernel)."""

    name = "slow"

    def __init__(self, take_s: float) -> None:
        self.take_s = take_s
        self.hang = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.closed = False

    def start_session(self, image: np.ndarray, prompt: str) -> None:
        pass

    def ready(self) -> bool:
        return not self.closed

    def warm_up(self) -> None:
        time.sleep(self.take_s)  # one chunk, as an engine's warm-up is

    def render(self, chunk) -> np.ndarray:  # noqa: ANN001
        self.calls += 1
        if self.hang.is_set():
            self.release.wait(30)
        else:
            time.sleep(self.take_s)
        return np.full((chunk.n_frames, 16, 16, 3), 7, np.uint8)

    def close(self) -> None:
        self.closed = True


def supervisor(engine: SlowEngine) -> RendererSupervisor:
    s = Settings(renderer={"deadline_factor": 2.0, "fallback_retry_initial_s": 60.0},
                 video={"width": 16, "height": 16, "chunk_frames": NF, "fps": FPS})
    still = StillRenderer(16, 16)
    still.start_session(None, "")
    sup = RendererSupervisor(s.renderer, s.video, still, load=lambda: engine,
                             reference=np.zeros((16, 16, 3), np.uint8))
    sup.start()
    t0 = time.monotonic()
    while sup.preferred is None:
        assert time.monotonic() - t0 < 30, sup.last_error
        time.sleep(0.02)
    return sup


def test_an_engine_slower_than_real_time_is_not_abandoned_but_a_hung_one_is():
    engine = SlowEngine(take_s=0.8)  # 4x slower than its 0.2 s chunks; 2 x 0.2 s would be a 0.4 s deadline
    sup = supervisor(engine)
    try:
        assert sup.typical_s is not None and sup.typical_s >= 0.8
        assert sup.expected_rate() is not None and sup.expected_rate() >= 4.0
        assert sup.deadline_s(NF / FPS) >= 1.6  # 2 x the engine's own chunk time
        for i in range(3):
            out = sup.render(render_chunk(i, NF))
            assert out.renderer == "slow" and out.render_seconds >= 0.8 and int(out.frames[0, 0, 0, 0]) == 7
        assert sup.failures == 0 and sup.active is engine
        engine.hang.set()
        t0 = time.monotonic()
        out = sup.render(render_chunk(3, NF))
        waited = time.monotonic() - t0
        # The same chunk comes from the still renderer once the deadline passed, and the engine is given up.
        assert out.renderer == "still" and sup.failures == 1 and "engine abandoned" in (sup.last_error or "")
        assert waited >= 1.6, waited
        assert sup.current_name() == "still" and sup.expected_rate() is None
    finally:
        engine.release.set()
        sup.close()


class TunedEngine(SlowEngine):
    """An engine whose warm-up includes a one-off tuning (cuDNN's autotune) far slower than its chunks, and which
    can time a chunk after it (FlashTalkRenderer.time_chunks); records the thread each ran on."""

    name = "tuned"

    def __init__(self, take_s: float, warm_up_s: float) -> None:
        super().__init__(take_s)
        self.warm_up_s = warm_up_s
        self.threads: dict[str, str] = {}

    def warm_up(self) -> None:
        self.threads["warm_up"] = threading.current_thread().name
        time.sleep(self.warm_up_s)

    def time_chunks(self, n: int, timer) -> list[float]:  # noqa: ANN001
        self.threads["timed"] = threading.current_thread().name
        return [timer(lambda: time.sleep(self.take_s)) for _ in range(n)]

    def render(self, chunk) -> np.ndarray:  # noqa: ANN001
        self.threads["render"] = threading.current_thread().name
        return super().render(chunk)


def test_the_rate_after_a_load_is_measured_after_the_tuning_on_the_rendering_thread():
    engine = TunedEngine(take_s=0.3, warm_up_s=2.0)  # the warm-up alone would say 10x real time
    sup = supervisor(engine)
    try:
        assert sup.typical_s is not None and 0.3 <= sup.typical_s < 1.5, sup.typical_s
        assert 1.5 <= sup.expected_rate() < 7.5  # 0.3 s per 0.2 s chunk, not the warm-up's 2 s
        assert sup.deadline_s(NF / FPS) == 2.0 * sup.typical_s  # the hang deadline follows the same measurement
        sup.render(render_chunk(0, NF))
        assert engine.threads["timed"] == engine.threads["warm_up"] == engine.threads["render"]
        assert engine.threads["render"].startswith("engine")
    finally:
        sup.close()


def test_the_first_load_and_the_render_threads_retry_check_never_start_two_engines():
    """start() runs on the broadcast thread at the first frame while the render thread renders (and checks for a
    retry); an engine that loads at once must still be built once: two would be two engines on one GPU."""
    for _ in range(40):
        loads: list[int] = []

        def load() -> SlowEngine:
            loads.append(1)
            return SlowEngine(0.0)

        s = Settings(video={"width": 16, "height": 16, "chunk_frames": NF, "fps": FPS})
        still = StillRenderer(16, 16)
        still.start_session(None, "")
        sup = RendererSupervisor(s.renderer, s.video, still, load=load,
                                 reference=np.zeros((16, 16, 3), np.uint8))
        stop = threading.Event()

        def render_thread() -> None:
            i = 0
            while not stop.is_set():
                sup.render(render_chunk(i, NF))
                i += 1

        t = threading.Thread(target=render_thread)
        t.start()
        sup.start()
        deadline = time.monotonic() + 5
        while sup.current_name() != "slow" and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        stop.set()
        t.join()
        on_duty = sup.current_name()
        sup.close()
        assert on_duty == "slow" and len(loads) == 1, len(loads)


class LeadInEngine(TunedEngine):
    """A TunedEngine with a lead-in (FlashTalkRenderer.lead_in): chunks of 2 frames take 0.4 of a whole one's time."""

    lead_in = (2,)

    def time_chunks(self, n: int, timer, new_frames: int | None = None) -> list[float]:  # noqa: ANN001
        self.threads[f"timed{new_frames or ''}"] = threading.current_thread().name
        take = self.take_s * (0.4 if new_frames else 1.0)
        return [timer(lambda: time.sleep(take)) for _ in range(n)]


def test_each_lead_in_length_is_timed_after_the_load_and_short_chunks_leave_the_typical_time_alone():
    engine = LeadInEngine(take_s=0.3, warm_up_s=0.5)
    sup = supervisor(engine)
    try:
        short, typical = sup.expected_short(), sup.typical_s
        assert set(short) == {2} and 0.12 <= short[2] < typical, (short, typical)  # its own time, not a whole one's
        assert engine.threads["timed2"] == engine.threads["timed"], "on the rendering thread, as the whole one"
        engine.take_s = 0.05  # a quick short chunk must not pull the whole chunks' time (and deadline) down
        sup.render(render_chunk(0, 2))
        assert sup.typical_s == typical
        sup.render(render_chunk(1, NF, start_frame=2))
        assert sup.typical_s < typical, "a whole chunk still moves it"
    finally:
        sup.close()


class SessionEngine(SlowEngine):
    """Records every session it is given; its warm-up waits for `go` (an engine's load takes minutes, in which the
    render thread applies set_avatar), and start_session raises while `fail_session` is set (an OOM preparing it)."""

    name = "sessions"

    def __init__(self) -> None:
        super().__init__(0.0)
        self.sessions: list[tuple[np.ndarray, str]] = []
        self.warming = threading.Event()
        self.go = threading.Event()
        self.go.set()
        self.fail_session = False

    def start_session(self, image: np.ndarray, prompt: str) -> None:
        if self.fail_session:
            raise RuntimeError("CUDA out of memory preparing the session")
        self.sessions.append((image, prompt))

    def warm_up(self) -> None:
        self.warming.set()
        assert self.go.wait(30)


def test_an_avatar_set_while_the_engine_loads_is_the_one_it_renders():
    """set_avatar during the load (after its start_session, before it is published) reached the still renderer
    only: the engine came on air with the old portrait, and its idle bank links, keyed by the new avatar, were
    drawn of the old one (and cached on disk under the new avatar's key)."""
    engine = SessionEngine()
    engine.go.clear()
    s = Settings(renderer={"fallback_retry_initial_s": 60.0},
                 video={"width": 16, "height": 16, "chunk_frames": NF, "fps": FPS, "prompt": "old"})
    still = StillRenderer(16, 16)
    still.start_session(None, "")
    old = np.zeros((16, 16, 3), np.uint8)
    sup = RendererSupervisor(s.renderer, s.video, still, load=lambda: engine, reference=old)
    sup.start()
    try:
        assert engine.warming.wait(30)
        new = np.full((16, 16, 3), 200, np.uint8)
        sup.set_avatar(new, "new")  # the render thread, between two chunks, while the engine warms up
        engine.go.set()
        assert sup._loading is not None
        sup._loading.join(30)
        assert sup.preferred is engine, sup.last_error
        image, prompt = engine.sessions[-1]
        assert prompt == "new" and image is new, f"the engine renders the avatar {prompt!r}"
    finally:
        engine.go.set()
        sup.close()



def test_a_session_that_fails_at_set_avatar_closes_the_engine_and_puts_the_still_renderer_on_duty():
    """A set_avatar whose session fails is the engine failing: before, the engine was left open (the reload after
    the backoff built a second one beside it on the GPU) and `active` kept naming it while the still renderer drew
    every chunk (status.renderer.active, flashtalk_renderer_active), with no "failed" reason for its frames."""
    engine = SessionEngine()
    sup = supervisor(engine)
    try:
        assert sup.render(render_chunk(0, NF)).renderer == "sessions" and sup.active is engine
        engine.fail_session = True
        sup.set_avatar(np.full((16, 16, 3), 200, np.uint8), "new")
        assert sup.failures == 1 and sup.preferred is None
        assert engine.closed, "left open: the reload would load a second engine on the same GPU"
        out = sup.render(render_chunk(1, NF))
        assert out.renderer == "still"
        assert sup.active is sup.still and sup.status()["active"] == "still"
        assert sup.reason_of("still") == "failed"
    finally:
        sup.close()
