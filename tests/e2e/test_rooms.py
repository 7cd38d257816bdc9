"""Two rooms on one box from the shipped room config (configs/flashtalk-14b.toml) as the template unit
flashtalk-live@NAME runs them: no shared path or port, each command lands in its own room, and a second daemon on a
busy ipc path or port is refused at start with exit 2 and one line.

The temp root stands for `/`: the shipped config's /etc and /var paths move under it; what an operator puts in
/etc/flashtalk-live/NAME.env (the unit's EnvironmentFile) swaps the GPU renderer for the still one and the RTMP
output for a recording, as a box without a GPU needs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
import pytest

from flashtalk_live.client import Client, ClientError, EventStream

from support.audio import wav_bytes

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "flashtalk-live@.service"


def _unit_environment(room: str) -> dict[str, str]:
    """The unit's Environment= lines with %i filled in (what systemd hands the daemon)."""
    env = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].partition("=")
            env[key] = value.replace("%i", room)
    return env


class Box:
    """A temp root with the shipped room config installed per room, and the rooms' daemons."""

    def __init__(self) -> None:
        # mkdtemp under /tmp: ipc socket paths must stay under 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="ftl-rooms-", dir="/tmp"))
        self.etc = self.root / "etc" / "flashtalk-live"
        self.etc.mkdir(parents=True)
        shutil.copy(ROOT / "flashtalk_live" / "assets" / "portrait.png", self.etc / "portrait.png")
        (self.etc / "playlist.m3u").write_text("#EXTM3U\n")  # an empty programme: idle silence between clips
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def install(self, room: str, *, env_lines: list[str] = ()) -> Path:
        text = (ROOT / "configs" / "flashtalk-14b.toml").read_text()
        text = text.replace('"/var/lib/', f'"{self.root}/var/lib/').replace('"/etc/', f'"{self.root}/etc/')
        cfg = self.etc / f"{room}.toml"
        cfg.write_text(text)
        (self.etc / f"{room}.env").write_text("\n".join([
            "FLASHTALK_LIVE_RENDERER__KIND=still",
            'FLASHTALK_LIVE_OUTPUTS=[{"name": "archive", "url": "{state_dir}/recordings/room.flv"}]',
            "FLASHTALK_LIVE_ENCODER__VIDEO_CODEC=libx264", "FLASHTALK_LIVE_ENCODER__PRESET=ultrafast",
            "FLASHTALK_LIVE_VIDEO__WIDTH=128", "FLASHTALK_LIVE_VIDEO__HEIGHT=224",
            'FLASHTALK_LIVE_LOGGING__FORMAT=json', *env_lines]) + "\n")
        return cfg

    def env(self, room: str, unit: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
        if unit:
            env |= _unit_environment(room)
        for line in (self.etc / f"{room}.env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        return env

    def cli(self, room: str, *args: str, unit: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flashtalk_live", *args], env=self.env(room, unit),
                              capture_output=True, text=True, timeout=120)

    def start(self, room: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{room}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "flashtalk_live", "run", "--config", str(self.etc / f"{room}.toml")],
                                env=self.env(room), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[room] = proc
        return proc

    def wait_up(self, room: str, control: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with Client(control, timeout_s=0.5) as c:
            while time.monotonic() < deadline:
                assert self.procs[room].poll() is None, self.log(room)
                try:
                    if c.ping().get("ok"):
                        return
                except ClientError:
                    time.sleep(0.1)
        raise AssertionError(f"room {room} did not answer:\n{self.log(room)}")

    def log(self, room: str) -> str:
        return (self.root / f"{room}.log").read_text(errors="replace")[-4000:]

    def stop(self, room: str) -> int:
        proc = self.procs[room]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        return proc.returncode

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def box() -> Iterator[Box]:
    b = Box()
    yield b
    b.close()


def _paths(cfg: dict[str, Any]) -> set[str]:
    """Every socket, folder and file a room writes."""
    out = {cfg["state_dir"], cfg["queue"]["spool_dir"], cfg["renderer"]["lookahead_spill_dir"]}
    out |= {ep for ep in cfg["ingest"]["control"] + cfg["ingest"]["events"]}
    out |= {o["url"] for o in cfg["outputs"]}
    return {p.replace("{state_dir}", cfg["state_dir"]) for p in out}


def _refusal(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def _audio_peak(path: Path) -> float:
    with av.open(str(path)) as c:
        return float(max((np.abs(f.to_ndarray()).max() for f in c.decode(audio=0)), default=0.0))


@pytest.mark.timeout(300)
def test_two_rooms_from_the_shipped_config_share_nothing_and_keep_their_commands(box):
    cfg_a, cfg_b = box.install("roomA"), box.install("roomB")
    # config show as the operator runs it: no unit environment, the room is the file's name
    shown = {}
    for room in ("roomA", "roomB"):
        r = box.cli(room, "config", "show", "--json", "-c", str(box.etc / f"{room}.toml"), unit=False)
        assert r.returncode == 0, r.stderr
        shown[room] = json.loads(r.stdout)
        assert shown[room]["room"] == room
        assert shown[room]["state_dir"] == f"{box.root}/var/lib/flashtalk-live/{room}"
        assert shown[room]["metrics"]["port"] == 0  # a free port each
    assert not _paths(shown["roomA"]) & _paths(shown["roomB"])
    control = {room: shown[room]["ingest"]["control"][0].replace("{state_dir}", shown[room]["state_dir"])
               for room in shown}
    events = {room: shown[room]["ingest"]["events"][0].replace("{state_dir}", shown[room]["state_dir"])
              for room in shown}
    assert all(ep.startswith(f"ipc://{shown[room]['state_dir']}/") for room, ep in control.items())

    box.start("roomA"), box.start("roomB")
    box.wait_up("roomA", control["roomA"]), box.wait_up("roomB", control["roomB"])
    with Client(control["roomA"]) as a, Client(control["roomB"]) as b:
        st_a, st_b = a.status(), b.status()
        assert (st_a["room"], st_b["room"]) == ("roomA", "roomB")
        assert st_a["metrics_port"] and st_b["metrics_port"] and st_a["metrics_port"] != st_b["metrics_port"]
        # the operator's CLI finds each room from its config file alone (exit 3 when no daemon answers there)
        for room in ("roomA", "roomB"):
            r = box.cli(room, "status", "-c", str(box.etc / f"{room}.toml"), unit=False)
            assert r.returncode == 0, r.stderr

        # A second daemon on a busy ipc path (room C's copy names A's socket) or a busy port: refused, one line.
        box.install("roomC")
        r = box.cli("roomC", "run", "-c", str(box.etc / "roomC.toml"), "--set", f"ingest.control={json.dumps([control['roomA']])}")
        line = _refusal(r)
        assert control["roomA"] in line and f"pid {box.procs['roomA'].pid}" in line and "roomA" in line, line
        r = box.cli("roomC", "run", "-c", str(box.etc / "roomC.toml"), "--set", f"metrics.port={st_b['metrics_port']}")
        line = _refusal(r)
        assert "metrics.port" in line and str(st_b["metrics_port"]) in line and "in use" in line, line
        with socket.socket() as held:  # a fixed tcp control port another program listens on
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            r = box.cli("roomC", "run", "-c", str(box.etc / "roomC.toml"), "--set", 'ingest.tcp_auth="none"',
                        "--set", f'ingest.control=["ipc://{{state_dir}}/control.sock", "tcp://127.0.0.1:{port}"]')
            line = _refusal(r)
            assert f"tcp://127.0.0.1:{port}" in line and "in use" in line, line
        # the same config copied for a second daemon of room A (the same state dir): refused too
        r = box.cli("roomA", "run", "-c", str(cfg_a))
        assert "in use by another daemon" in _refusal(r)

        # A clip pushed to A airs in A only.
        with EventStream(events["roomA"], timeout_s=30) as ev_a, EventStream(events["roomB"], timeout_s=30) as ev_b:
            ev_a.sync(a), ev_b.sync(b)
            ack = a.enqueue(wav_bytes(2.0, freq=880.0, rate=48000, amplitude=0.6), format="wav")
            sid = ack["segment_id"]
            assert sid in json.dumps(a.status()) and sid not in json.dumps(b.status())  # queued or on air: in A
            seen_a = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                e = ev_a.get(deadline - time.monotonic())
                assert e is not None, seen_a
                seen_a.append(e)
                if e["type"] == "finished" and e.get("segment_id") == sid:
                    break
            assert {"accepted", "started", "finished"} <= {e["type"] for e in seen_a if e.get("segment_id") == sid}
            seen_b = []
            while (e := ev_b.get(0.5)) is not None:
                seen_b.append(e)
            assert not [e for e in seen_b if e.get("segment_id") == sid], seen_b
        st_b = b.status()
        assert st_b["queue"]["clips"] == 0 and sid not in json.dumps(st_b)
    assert box.stop("roomA") == 0 and box.stop("roomB") == 0
    rec = {room: next(Path(shown[room]["state_dir"], "recordings").glob("room*.flv")) for room in shown}
    assert _audio_peak(rec["roomA"]) > 0.3, "A aired the clip"
    assert _audio_peak(rec["roomB"]) < 0.01, "B aired nothing but idle silence"
    # a clean stop removes each room's sockets; their lock files stay (unlocked) for the next start
    for room in shown:
        assert not list(Path(shown[room]["state_dir"]).glob("*.sock"))


@pytest.mark.timeout(120)
def test_a_port_taken_after_the_check_fails_the_start_cleanly(tmp_path):
    """The daemon's own bind is the last word (a room may start between `config show` and `run`): a busy metrics
    port is a ConfigError there too (exit 2), and the room leaves nothing bound, locked or running behind."""
    from flashtalk_live.daemon import run_daemon
    from flashtalk_live.settings import ConfigError
    from flashtalk_live.statelock import StateLock
    from support.settings import room_settings

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        s = room_settings(tmp_path, f"metrics.port={held.getsockname()[1]}")
        with pytest.raises(ConfigError, match="metrics.port .* the port is in use"):
            run_daemon(s)
    state = Path(s.state_dir)
    assert not list(state.glob("*.sock"))
    StateLock(state).acquire().release()
    s2 = room_settings(tmp_path)  # the same room starts at once on a free port
    assert run_daemon(s2, duration_s=1.0) == 0
