"""OutputManager: fans each frame's packets out to every output, adds/removes outputs at runtime, reports.

send() runs on the broadcast thread and never blocks: RTMP outputs only append to memory and do
non-blocking pipe writes, files write to local disk. A supervisor thread does the slow work
(spawning and killing RTMP children, deadlines, backoff) and publishes the endpoint events, so
even a slow event subscriber never reaches the broadcast thread.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

from flashtalk_live.errors import Rejection
from flashtalk_live.events import EventBus
from flashtalk_live.log import get_logger
from flashtalk_live.outputs.base import Output
from flashtalk_live.outputs.files import FileOutput
from flashtalk_live.outputs.kinds import OutputURLError, file_path, kind_for
from flashtalk_live.settings import OutputPolicy, OutputSettings

log = get_logger("outputs")

TICK_S = 0.05


class OutputRejected(Rejection, ValueError):
    """An output the manager will not add or remove, with its rejection code (bad_output, already_exists,
    too_many_outputs, not_found): `output_add`/`output_remove` answer it as it is, a config file's output fails
    the start."""


class OutputManager:
    """All outputs of one encoder."""

    def __init__(self, policy: OutputPolicy, events: EventBus | None = None, *, video_stream: Any,
                 audio_stream: Any, request_keyframe: Callable[[], None]) -> None:
        self.policy = policy
        self.events = events
        self.video_stream, self.audio_stream = video_stream, audio_stream
        self.request_keyframe = request_keyframe
        self._outputs: tuple[Output, ...] = ()  # replaced, never mutated: send() reads it without a lock
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = False
        self.send_calls = 0
        self.send_max_s = 0.0  # the slowest send() so far
        self._thread = threading.Thread(target=self._supervise, name="outputs-supervisor", daemon=True)
        self._thread.start()

    @classmethod
    def for_encoder(cls, policy: OutputPolicy, events: EventBus | None, encoder: Any) -> "OutputManager":
        return cls(policy, events, video_stream=encoder.video_stream, audio_stream=encoder.audio_stream,
                   request_keyframe=encoder.request_keyframe)

    # -- configuration -------------------------------------------------------------------------
    def add(self, settings: OutputSettings, confine_file: Callable[[str], None] | None = None) -> bool:
        """Start an output (False when it is disabled); OutputRejected on a bad URL, a duplicate name or one output
        too many. confine_file(url): a file output added at run time must pass it (the daemon's file policy)."""
        try:
            kind = kind_for(settings.url)
            settings = settings.model_copy(update={"url": kind.validate(settings.url)})
        except OutputURLError as e:  # masked by the output-kind table
            raise OutputRejected("bad_output", str(e), "url") from None
        if kind.name == "file" and confine_file is not None:  # a runtime addition: only where the policy allows
            confine_file(file_path(settings.url))  # the path it writes ('file:///x' is '/x'), not the URL
        if kind.name != "file" and settings.segment_seconds:
            raise OutputRejected("bad_output", f"output {settings.name!r}: segment_seconds applies to file outputs "
                                               "only", "segment_seconds")
        if not settings.enabled:
            log.info("output_disabled", output=settings.name)
            return False
        with self._lock:
            if self._closed:
                raise RuntimeError("OutputManager is closed")
            if any(o.name == settings.name for o in self._outputs):
                raise OutputRejected("already_exists", f"an output named {settings.name!r} already exists", "name")
            if len(self._outputs) >= self.policy.max_outputs:
                raise OutputRejected("too_many_outputs", f"{len(self._outputs)} outputs are running, output_policy.max_outputs is "
                                     f"{self.policy.max_outputs}: remove one first")
            out = kind.load()(settings, self.policy, self.video_stream, self.audio_stream, self.request_keyframe,
                      self._queue_event)
            self._outputs = self._outputs + (out,)
        log.info("output_added", output=out.name, kind=kind.name, url=out.masked_url)
        return True

    def remove(self, name: str, timeout: float = 1.0) -> None:
        """Stop an output now; an RTMP child gets `timeout` to unpublish, then SIGKILL. OutputRejected (not_found)
        if there is no such output."""
        with self._lock:
            out = next((o for o in self._outputs if o.name == name), None)
            if out is None:
                raise OutputRejected("not_found", f"no output named {name!r}; outputs: "
                                                  f"{', '.join(o.name for o in self._outputs)}", "name")
            self._outputs = tuple(o for o in self._outputs if o is not out)
        out.close(timeout)
        log.info("output_removed", output=name)
        self._flush_events()

    def names(self) -> list[str]:
        return [o.name for o in self._outputs]

    def pause_recordings(self, reason: str | None, device: int | None = None) -> None:
        """Pause the local recordings on file system `device` (all when None) with a reason, or resume them."""
        for o in self._outputs:
            if not isinstance(o, FileOutput):
                continue
            if reason is None:
                o.resume()
            elif device is None or o.device() == device:
                o.pause(reason)

    # -- the broadcast thread ------------------------------------------------------------------
    def send(self, packets: list[Any]) -> None:
        """Hand one frame's packets to every output. Never blocks on an endpoint."""
        t0 = time.perf_counter()
        for out in self._outputs:
            try:
                out.send(packets)
            except Exception as e:  # noqa: BLE001 - one output's bug must not stop the others
                out.dropped_packets += len(packets)
                out.last_error = f"send: {type(e).__name__}: {e}"
        dt = time.perf_counter() - t0
        self.send_calls += 1
        if dt > self.send_max_s:
            self.send_max_s = dt

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        return [o.status() for o in self._outputs]

    # -- shutdown ----------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Close every output within `timeout` seconds in all (RTMP children are SIGKILLed at the deadline)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._closed = True
            outs, self._outputs = self._outputs, ()
        threads = [threading.Thread(target=o.close, args=(max(0.0, deadline - time.monotonic()),), daemon=True)
                   for o in outs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        for o in outs:  # anything still alive past the deadline
            kill = getattr(o, "kill", None)
            if kill is not None and getattr(o, "conn", None) is not None:
                kill()
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._flush_events()

    def __enter__(self) -> "OutputManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- supervisor --------------------------------------------------------------------------------
    def _queue_event(self, type: str, **fields: Any) -> None:
        self._events.put((type, fields))

    def _flush_events(self) -> None:
        while True:
            try:
                type, fields = self._events.get_nowait()
            except queue.Empty:
                return
            if self.events is not None:
                self.events.publish(type, **fields)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for out in self._outputs:
                try:
                    out.tick(now)
                except Exception as e:  # noqa: BLE001 - keep supervising the others
                    log.error("output_tick_failed", output=out.name, error=repr(e))
            self._flush_events()
            self._stop.wait(TICK_S)
