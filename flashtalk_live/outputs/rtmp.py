"""RTMP/RTMPS output: one child process per connection, fed FLV through a non-blocking pipe.

The parent muxes the encoder's packets into an FLV container whose "file" is an in-memory buffer and
writes that buffer into the child's stdin with O_NONBLOCK: a child that stops reading only fills the
buffer, and past ``policy.queue_packets`` unsent packets the output drops (and counts) packets until it
can restart on a keyframe. The child does the network I/O, reports on stdout, and is SIGKILLed when it
misses its connect deadline, stops making progress, or the output is removed. Every connection starts
on a fresh keyframe with timestamps rebased to 0, which also makes the planned reconnect before FLV's
24.8-day timestamp wrap an ordinary reconnect.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import av

from flashtalk_live import fdreserve
from flashtalk_live.log import get_logger
from flashtalk_live.outputs.base import Output, Rebaser
from flashtalk_live.secrets import mask_text

log = get_logger("outputs.rtmp")

CHILD = str(Path(__file__).with_name("_child.py"))
PIPE_BYTES = 1 << 20  # F_SETPIPE_SZ; the default 64 KiB is 0.2 s at 2.5 Mb/s
F_SETPIPE_SZ = 1031
HELD_RESET_S = 10.0  # a connection that held this long resets the backoff


class _Sink:
    """The file object of the parent's FLV muxer: collects bytes, never blocks."""

    def __init__(self) -> None:
        self.chunks: deque[memoryview] = deque()
        self.total = 0  # bytes ever written by the muxer

    def write(self, data: Any) -> int:
        b = bytes(data)
        if b:
            self.chunks.append(memoryview(b))
            self.total += len(b)
        return len(b)


class ChildConnection:
    """One connection attempt: the child process, its pipe and the parent-side FLV muxer."""

    def __init__(self, output: "RtmpOutput") -> None:
        self.output = output
        self.lock = threading.Lock()  # send() (broadcast thread) vs teardown (supervisor / control thread)
        self.spawned = time.monotonic()
        self.phase = "spawned"  # spawned -> started -> reachable -> input -> up -> (eof | error | killed)
        self.error: str | None = None
        self.child_bytes = 0
        self.child_packets = 0
        self.last_progress = self.spawned
        self.up_at: float | None = None
        self.exit_seen = 0.0
        self.dead = False  # no more muxing into this connection
        self.broken = False  # the pipe refused a write (child gone)
        self.retire = False  # planned reconnect: hand over at this keyframe
        self.retire_idr = False
        self.written = 0  # bytes handed to the pipe
        self.ends: deque[int] = deque()  # sink offset at the end of each muxed, not yet written packet
        self.overflow = False
        self.sent = 0  # packets muxed into this connection (broadcast thread only)
        self.dropped = 0

        # The URL goes in the environment, not argv: /proc/*/cmdline is world-readable, environ is the owner's only.
        # The daemon's own FLASHTALK_LIVE_* (every output's key) stay out: this child needs one URL.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
        env.update(FLASHTALK_OUTPUT_URL=output.url, FLASHTALK_OUTPUT_CONNECT_TIMEOUT=str(output.policy.rw_timeout_s))
        with fdreserve.released():  # the descriptors a socket flood cannot take (EMFILE here is a failed connect)
            r, w = os.pipe()
            try:
                try:
                    fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
                except OSError:
                    pass  # above /proc/sys/fs/pipe-max-size: the default size still works
                self.proc = subprocess.Popen([sys.executable, CHILD], stdin=r, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, env=env, close_fds=True)
            except BaseException:
                os.close(w)
                raise
            finally:
                os.close(r)
        os.set_blocking(w, False)
        self.fd: int | None = w
        self.sink = _Sink()
        container = av.open(self.sink, "w", format="flv",
                            container_options={"flvflags": "no_duration_filesize", "flush_packets": "1"})
        self.container: av.container.OutputContainer | None = container
        self.rebaser = Rebaser(container, output.video_template, output.audio_template)
        self.container.start_encoding()  # FLV header into the sink; no I/O
        self.reader = threading.Thread(target=self._read_reports, name=f"out-{output.name}-reports", daemon=True)
        self.reader.start()

    # -- child reports (reader thread) -----------------------------------------------------------
    def _read_reports(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            ev = msg.get("ev")
            now = time.monotonic()
            if ev in ("started", "input"):
                self.phase = ev
            elif ev == "reachable":
                self.phase = ev
                self.output.request_keyframe()  # the stream to this child starts on the next frame
            elif ev == "up":
                self.phase = "up"
                self.up_at = now
                self.last_progress = now
            elif ev == "progress":
                n = int(msg.get("bytes", 0))
                if n > self.child_bytes:
                    self.last_progress = now
                    self.output.bytes_sent += n - self.child_bytes
                self.child_bytes = n
                self.child_packets = msg.get("packets", 0)
                self.output.rate.add(self.output.bytes_sent, now)
            elif ev == "error":
                self.error = mask_text(str(msg.get("error")))
                self.phase = "error"
            elif ev == "eof":
                self.phase = "eof"

    # -- broadcast thread ------------------------------------------------------------------------------
    def send(self, packets: list[Any], queue_limit: int, planned_s: float) -> tuple[int, int]:
        """Mux into the pipe buffer and write what the pipe takes; returns (sent, dropped)."""
        sent = dropped = 0
        with self.lock:
            if self.dead or self.phase not in ("reachable", "input", "up"):
                self.dropped += len(packets)  # not reachable (yet): queue nothing for a child that may never connect
                return 0, len(packets)
            self._drain()
            for i, p in enumerate(packets):
                rb = self.rebaser
                is_kf = p.is_keyframe and rb.is_video(p)
                if rb.started() and (rb.media_seconds(p) or 0) >= planned_s:
                    if is_kf:
                        self.retire = True  # timestamps near the planned limit: the next connection starts here
                        self.dead = True
                        dropped += len(packets) - i
                        break
                    if not self.retire_idr:
                        self.retire_idr = True
                        self.output.request_keyframe()  # cut on the next frame, not up to a GOP later
                if self.overflow:
                    if is_kf and len(self.ends) < queue_limit // 2:
                        self.overflow = False
                    else:
                        dropped += 1
                        continue
                if len(self.ends) >= queue_limit:
                    self.overflow = True  # resume on a keyframe once the child catches up
                    dropped += 1
                    continue
                if rb.mux(p):
                    self.ends.append(self.sink.total)
                    sent += 1
                elif not rb.is_priming(p):
                    dropped += 1
            self._drain()
            self.sent += sent
            self.dropped += dropped
        return sent, dropped

    def _drain(self) -> None:
        if self.fd is None or self.broken:
            self.sink.chunks.clear()
            return
        chunks = self.sink.chunks
        while chunks:
            try:
                n = os.write(self.fd, chunks[0])
            except BlockingIOError:
                break
            except OSError as e:  # EPIPE: the child is gone; the supervisor will see why
                self.broken = True
                self.error = self.error or f"pipe: {e}"
                chunks.clear()
                break
            self.written += n
            if n < len(chunks[0]):
                chunks[0] = chunks[0][n:]
                break
            chunks.popleft()
        while self.ends and self.ends[0] <= self.written:
            self.ends.popleft()

    @property
    def queued_packets(self) -> int:
        return len(self.ends)

    # -- teardown (any thread but the broadcast one) --------------------------------------------
    def kill(self) -> None:
        """SIGKILL the child and free everything at once."""
        with self.lock:
            self.dead = True
            self._close_pipe_side()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep in the kernel
            log.error("child_unkillable", output=self.output.name, pid=self.proc.pid)

    def finish(self, timeout: float) -> None:
        """Graceful end: write the FLV tail, close the pipe (EOF), let the child unpublish; SIGKILL at the deadline."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self.lock:
            self.dead = True  # send() muxes nothing more: from here on only this thread drains the sink
            try:
                if self.container is not None:
                    self.container.close()
            except Exception:  # noqa: BLE001 - only the in-memory muxer
                pass
            self.container = None
        # The wait for the child is outside the lock: a send() that read this connection before it was taken away
        # (remove(), close()) takes the lock, sees `dead` and returns, instead of waiting up to `timeout` for it.
        while True:
            with self.lock:
                fd = self.fd
                if not self.sink.chunks or self.broken or fd is None:
                    break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                select.select([], [fd], [], min(left, 0.05))
            except (OSError, ValueError):  # closed meanwhile by kill()
                break
            with self.lock:
                self._drain()
        with self.lock:
            self._close_pipe_side()
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def _close_pipe_side(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001
                pass
            self.container = None
        self.sink.chunks.clear()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RtmpOutput(Output):
    """An rtmp:// or rtmps:// endpoint that reconnects by itself."""

    kind = "rtmp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.conn: ChildConnection | None = None
        self._sent_done = self._dropped_done = self._dropped_idle = 0
        super().__init__(*args, **kwargs)
        self.attempts = 0
        self.next_attempt = 0.0  # monotonic; 0 = now
        self.planned_reconnects = 0
        self.closed = False
        self._planned_s = float(self.policy.planned_reconnect_hours) * 3600.0
        self.bytes_sent = 0  # bytes the children handed to their network muxers, all connections

    # Counters: each has one writer thread, so no update is ever lost. The broadcast thread counts
    # per connection; the supervisor folds a finished connection in (its packets count as dropped if it
    # never came up: they were queued for a child that did not deliver them).
    @property
    def sent_packets(self) -> int:
        conn = self.conn
        return self._sent_done + (conn.sent if conn else 0)

    @sent_packets.setter
    def sent_packets(self, value: int) -> None:  # only the base class initialiser sets it
        self._sent_done = value

    @property
    def dropped_packets(self) -> int:
        conn = self.conn
        return self._dropped_idle + self._dropped_done + (conn.dropped if conn else 0)

    @dropped_packets.setter
    def dropped_packets(self, value: int) -> None:  # base initialiser, or the manager after a send() bug
        self._dropped_idle = value - self._dropped_done - (self.conn.dropped if self.conn else 0)

    def _fold(self, conn: ChildConnection) -> None:
        if conn.up_at is None:
            self._dropped_done += conn.dropped + conn.sent
        else:
            self._sent_done += conn.sent
            self._dropped_done += conn.dropped

    # broadcast thread: never blocks (a pipe write that would block is left for the next frame)
    def send(self, packets: list[Any]) -> None:
        conn = self.conn
        if conn is None or conn.dead:
            self._dropped_idle += len(packets)
            return
        conn.send(packets, self.policy.queue_packets, self._planned_s)

    # supervisor thread
    def tick(self, now: float) -> None:
        # Decide under the lock; do the slow parts (spawn, kill, wait) outside it so status() stays prompt.
        with self._lock:
            if self.closed:
                return
            conn = self.conn
            failure = None
            if conn is not None and not conn.retire:
                failure = self._check(conn, now)
                if failure is None:
                    if conn.phase == "up" and self.state != "up":
                        self._set_up()
                    return
            if conn is None and now < self.next_attempt:
                return
            self.conn = None
        if conn is not None and conn.retire:
            self.planned_reconnects += 1
            log.info("planned_reconnect", output=self.name, url=self.masked_url)
            threading.Thread(target=self._retire, args=(conn,), daemon=True).start()
        elif conn is not None:
            held = conn.up_at is not None and now - conn.up_at >= HELD_RESET_S
            conn.kill()
            with self._lock:
                self._fold(conn)
                if held:
                    self.backoff.reset()
                delay = self.backoff.next_delay()
                self.next_attempt = time.monotonic() + delay
                log.warning("endpoint_failed", output=self.name, url=self.masked_url, error=failure,
                            retry_in_s=round(delay, 2))
                self._set_down(failure)
            return
        self._spawn(now)

    def _retire(self, conn: ChildConnection) -> None:
        conn.finish(2.0)  # the old child sends what it has and unpublishes while the new one starts
        with self._lock:
            self._fold(conn)

    def _check(self, conn: ChildConnection, now: float) -> str | None:
        """Why this connection must go, or None while it is fine."""
        rc = conn.proc.poll()
        if rc is not None or conn.phase in ("error", "eof"):
            # Give the report reader a moment to collect the child's last words (never wait under the lock).
            if conn.reader.is_alive() and conn.error is None:
                conn.exit_seen = conn.exit_seen or now
                if now - conn.exit_seen < 0.5:
                    return None
            return conn.error or f"child exited with code {rc}"
        if conn.broken:
            return conn.error or "pipe closed"
        limit = self.policy.stall_timeout_s
        if conn.phase != "up":
            if now - conn.spawned > limit:
                return f"no connection within {limit:g} s (phase {conn.phase})"
        elif now - conn.last_progress > limit:
            return f"no progress for {limit:g} s (stalled)"
        return None

    def _spawn(self, now: float) -> None:
        with self._lock:
            if self.attempts:
                self.reconnects += 1
            self.attempts += 1
            self.state = "connecting"
            self.connected_since = None
        try:
            conn: ChildConnection | None = ChildConnection(self)
        except Exception as e:  # noqa: BLE001 - fork/pipe failure: treat like a failed connect
            with self._lock:
                self.next_attempt = now + self.backoff.next_delay()
                self._set_down(f"spawn: {type(e).__name__}: {e}")
            return
        with self._lock:
            if not self.closed:
                self.conn = conn
                conn = None
        if conn is not None:  # closed while spawning
            conn.kill()
            with self._lock:
                self._fold(conn)

    def status(self) -> dict[str, Any]:
        st = super().status()
        conn = self.conn
        st.update(queued_packets=conn.queued_packets if conn else 0, pid=conn.proc.pid if conn else None,
                  phase=conn.phase if conn else None, bytes_sent=self.bytes_sent,
                  planned_reconnects=self.planned_reconnects,
                  media_seconds=float(conn.rebaser.last_video_s) if conn else 0.0)
        return st

    def close(self, timeout: float) -> None:
        with self._lock:
            self.closed = True
            conn, self.conn = self.conn, None
        if conn is not None:
            if conn.phase == "up":
                conn.finish(timeout)
            else:
                conn.kill()
        with self._lock:
            if conn is not None:
                self._fold(conn)
            self._set_down("closed", state="down")

    def kill(self) -> None:
        """Remove at once: SIGKILL, no goodbye."""
        with self._lock:
            self.closed = True
            conn, self.conn = self.conn, None
        if conn is not None:
            conn.kill()
        with self._lock:
            if conn is not None:
                self._fold(conn)
            self._set_down("removed", state="down")
