"""A real daemon process (`python -m flashtalk_live run`) on a temporary state dir, driven through the real client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from flashtalk_live.client import Client, ClientError, EventStream

from support.ports import free_port


def toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


class DaemonProcess:
    """Starts the daemon with a generated config; `kill()` is SIGKILL, `stop()` is SIGTERM and waits."""

    def __init__(self, state_dir: Path, outputs: list[dict[str, Any]], extra: list[str] | None = None, *,
                 env: dict[str, str] | None = None, args: list[str] | None = None,
                 nofile: int | None = None, nice: int | None = None) -> None:
        self.state_dir = state_dir
        self.tcp_port, self.tcp_events = free_port(), free_port()
        self.config = state_dir.parent / f"{state_dir.name}.toml"
        lines = [
            f"state_dir = {toml_value(str(state_dir))}",
            "[ingest]",
            f'control = ["ipc://{{state_dir}}/control.sock", "tcp://127.0.0.1:{self.tcp_port}"]',
            f'events = ["ipc://{{state_dir}}/events.sock", "tcp://127.0.0.1:{self.tcp_events}"]',
            'tcp_auth = "none"  # plain loopback tcp for these tests; tests/ingest/test_auth.py covers CURVE',
            "[programme]", 'playlist = ""',  # idle silence between clips, not the demo programme
            "[video]", "width = 256", "height = 256", "fps = 25",
            "[encoder]", 'preset = "ultrafast"', "video_bitrate = 600000",
            "[metrics]", "port = 0",
            "[logging]", 'format = "json"', 'level = "info"',
        ]
        for o in outputs:
            lines.append("[[outputs]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in o.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.extra = extra or []  # --set items
        self.env = env or {}  # added to the daemon's environment (FLASHTALK_LIVE_* of the caller are dropped)
        self.args = args or []  # more `run` arguments
        self.nofile = nofile  # RLIMIT_NOFILE, soft and hard, of the daemon (it raises soft to hard itself)
        self.nice = nice  # scheduling niceness of the daemon (negative needs root; else GNU nice runs it as is)
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}.log"

    @property
    def ipc(self) -> str:
        return f"ipc://{self.state_dir}/control.sock"

    @property
    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    @property
    def events_ipc(self) -> str:
        return f"ipc://{self.state_dir}/events.sock"

    def start(self, timeout_s: float = 30.0) -> "DaemonProcess":
        """Start and wait for ping. A tcp port taken between free_port() and the daemon's bind (by another test's
        process: the box runs tests in parallel) exits 2 with "address is in use": new ports, up to 3 tries."""
        for attempt in range(3):
            try:
                return self._start_once(timeout_s)
            except RuntimeError as e:
                if attempt == 2 or "the address is in use" not in str(e):
                    raise
                old = (self.tcp_port, self.tcp_events)
                self.tcp_port, self.tcp_events = free_port(), free_port()
                text = self.config.read_text()
                for was, now in zip(old, (self.tcp_port, self.tcp_events)):
                    text = text.replace(f"tcp://127.0.0.1:{was}", f"tcp://127.0.0.1:{now}")
                self.config.write_text(text)
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> "DaemonProcess":
        args = [sys.executable, "-m", "flashtalk_live", "run", "-c", str(self.config)]
        for o in self.extra:
            args += ["--set", o]
        args += self.args
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")} | self.env
        self._log = open(self.log_path, "ab")
        if self.nofile is not None:
            args = ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--"] + args  # exec: the pid stays the daemon's
        if self.nice is not None:
            args = ["nice", "-n", str(self.nice), "--"] + args  # exec: the pid stays the daemon's
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        with Client(self.ipc, timeout_s=0.5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if c.ping().get("ok"):
                        return self
                except ClientError:
                    time.sleep(0.1)
        raise RuntimeError(f"daemon did not answer ping within {timeout_s}s:\n{self.log_tail()}")

    def client(self, tcp: bool = False, timeout_s: float = 5.0) -> Client:
        return Client(self.tcp if tcp else self.ipc, timeout_s=timeout_s)

    def events(self) -> EventStream:
        return EventStream(self.events_ipc, timeout_s=30.0)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"daemon ignored SIGTERM for {timeout_s}s:\n{self.log_tail()}")
        return self.proc.returncode


def wait_for(events: EventStream, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0,
             seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Read events until pred matches (collecting every event into `seen`)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        ev = events.get(left)
        if ev is None:
            break
        if seen is not None:
            seen.append(ev)
        if pred(ev):
            return ev
    raise AssertionError(f"event not seen within {timeout_s}s; saw {[(e['type'], e.get('segment_id')) for e in (seen or [])][-20:]}")


# The still renderer slowed by the operator drill, the look-ahead up to 20 s: clips are cut and rendered seconds
# before they air (the cases where "taken from the spool" and "on air" differ).
SLOW_RENDER = ["renderer.drill_slowdown=1.5", "renderer.lookahead_s=20"]


class Collector:
    """Reads an event stream on a thread into `seen` (the main thread keeps the control socket)."""

    def __init__(self, stream: EventStream) -> None:
        self.stream, self.seen = stream, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ev = self.stream.get(0.1)
            if ev is not None:
                self.seen.append(ev)

    def stop(self) -> list[dict]:
        self._stop.set()
        self._t.join(5)
        return self.seen


def queue_ids(events: list[dict], kind: str) -> list[str]:
    return [e["segment_id"] for e in events if e["type"] == kind and e.get("source") == "queue"]


# A FlashTalk profile tiny enough for the CPU (fake release), and the new frames of each of its chunks.
TINY_PROFILE = 'base = "quality"\nheight = 32\nwidth = 32\nframe_num = 29\nmotion_frames = 1\n'
NEW_FRAMES = 28
