"""Stream keys never leave the daemon in clear: logs, replies, events, status, metrics, `config show`, error messages
and /proc/*/cmdline of the daemon and its RTMP children, for every URL shape (scheme case, typos, one slash, query,
credentials, environment JSON with a typo, argv).

The RTMP endpoints are loopback ports that refuse connections or accept and hang up at once, so every output
fails over and over: its errors (which quote the URL) must come out masked too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from flashtalk_live.client import Rejected

from support.daemon_harness import DaemonProcess, free_port, wait_for


def new_key(tag: str) -> str:
    return f"SK{tag}x{uuid.uuid4().hex[:12]}"


class HangUp:
    """Accepts TCP connections and closes them at once: the RTMP child gets past its connect pre-flight and then
    fails inside PyAV, whose error quotes the URL."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
                c.close()
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def hangup() -> Iterator[HangUp]:
    h = HangUp()
    yield h
    h.close()


def cmdlines() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every process we may read."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


def leaked(keys: list[str], text: str) -> list[str]:
    return [k for k in keys if k in text]


def scan_processes(daemon_pid: int, keys: list[str], seconds: float) -> int:
    """Watch every readable /proc/*/cmdline for `seconds`; returns how many RTMP children of the daemon were seen."""
    children: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or not children:
        if time.monotonic() > deadline + 30:
            break
        for pid, (ppid, cmd) in cmdlines().items():
            assert not leaked(keys, cmd), f"key in /proc/{pid}/cmdline: {cmd}"
            if ppid == daemon_pid and "_child.py" in cmd:
                children.add(pid)
        time.sleep(0.02)
    return len(children)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


FAST_RETRY = ["output_policy.backoff_initial_s=0.05", "output_policy.backoff_max_s=0.3",
              "output_policy.rw_timeout_s=1.0"]


def test_keys_never_leave_a_running_daemon(tmp_path: Path, hangup: HangUp) -> None:
    closed = free_port()
    keys: dict[str, str] = {}

    def k(tag: str) -> str:
        keys[tag] = new_key(tag)
        return keys[tag]

    # 1) the config file: upper case, mixed case, query token, credentials, credentials + query
    config_outputs = [
        {"name": "upper", "url": f"RTMP://127.0.0.1:{closed}/live/{k('upper')}"},
        {"name": "mixed", "url": f"Rtmps://127.0.0.1:{closed}/app/{k('mixed')}"},
        {"name": "query", "url": f"rtmp://127.0.0.1:{hangup.port}/live/stream?token={k('query')}"},
        {"name": "creds", "url": f"rtmp://user:{k('pass')}@127.0.0.1:{hangup.port}/live/{k('credkey')}"},
        {"name": "hang", "url": f"rtmp://127.0.0.1:{hangup.port}/live2/{k('hang')}?x={k('hangq')}"},
    ]
    d = DaemonProcess(tmp_path / "state", config_outputs, FAST_RETRY)
    replies: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    try:
        d.start()
        with d.events() as ev, d.client() as c:
            ev.sync(c)
            # 2) output_add: accepted shapes, and mistyped schemes the registry must refuse (bad_output, masked)
            good = [("addupper", f"RTMPS://127.0.0.1:{closed}/live/{k('addupper')}"),
                    ("addcreds", f"rtmp://{k('adduser')}:{k('addpass')}@127.0.0.1:{hangup.port}/a/{k('addkey')}")]
            bad = [("typo1", f"rtmpx://127.0.0.1:{closed}/live/{k('typo1')}"),
                   ("typo2", f"rtmp:/127.0.0.1:{closed}/live/{k('typo2')}"),
                   ("typo3", f"rmtp://127.0.0.1:{closed}/live/{k('typo3')}"),
                   ("typo4", f"RTMPX://u:{k('typo4pass')}@h/live/{k('typo4')}"),
                   ("typo5", f"http://127.0.0.1:{closed}/live/{k('typo5')}"),
                   ("typo6", f"127.0.0.1:{closed}/live/{k('typo6')}"),
                   ("typo7", f"a.rtmp.youtube.com/live2/{k('typo7')}")]
            for name, url in good:
                r = c.call("output_add", name=name, url=url)
                replies.append(r)
                assert r["ok"], r
            for name, url in bad:
                with pytest.raises(Rejected) as e:
                    c.call("output_add", name=name, url=url)
                r = e.value.reply
                replies.append(r)
                assert e.value.code == "bad_output", r
                assert "expected" in e.value.reason, r
            # a key given as a name (operator swapped the fields)
            with pytest.raises(Rejected) as e:
                c.call("output_add", name=f"rtmp://h/live/{k('asname')}", url="/tmp/x.flv")
            replies.append(e.value.reply)
            # a second daemon on this state dir: one line, exit 2, from both run and config show
            for args in (["config", "show", "-c", str(d.config)], ["run", "-c", str(d.config)]):
                r = cli(*args)
                assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
                assert f"in use by another daemon (pid {d.proc.pid})" in r.stderr
                replies.append({"stderr": r.stderr, "stdout": r.stdout})

            n_children = scan_processes(d.proc.pid, list(keys.values()), seconds=3.0)
            assert n_children >= 1, "no RTMP child was seen: the cmdline scan proved nothing"
            down: set[str] = set()

            def all_down(e: dict[str, Any]) -> bool:
                if e["type"] == "endpoint_down":
                    down.add(e["output"])
                return {"hang", "creds", "addupper", "addcreds"} <= down

            wait_for(ev, all_down, 60, seen=events)
            status = c.status()
            replies += [status, c.call("outputs"), c.ping()]
            metrics = scrape(status["metrics_port"])
        outs = {o["name"]: o for o in status["outputs"]}
        assert outs["upper"]["url"] == f"rtmp://127.0.0.1:{closed}/live/****"  # normalised, so it connects
        assert outs["creds"]["url"] == f"rtmp://***@127.0.0.1:{hangup.port}/live/****"
        assert outs["hang"]["last_error"], "the hang-up endpoint should have failed with PyAV's error"
    finally:
        d.stop()
    show = subprocess.run([sys.executable, "-m", "flashtalk_live", "config", "show", "--json", "-c", str(d.config)],
                          capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["outputs"][0]["url"] == f"rtmp://127.0.0.1:{closed}/live/****"
    texts = {"log": d.log_path.read_text(errors="replace"), "replies": json.dumps(replies),
             "events": json.dumps(events), "status": json.dumps(status), "metrics": metrics,
             "config show": show.stdout + show.stderr}
    assert len(keys) >= 10
    for where, text in texts.items():
        assert not leaked(list(keys.values()), text), f"{where} leaks {leaked(list(keys.values()), text)}"
    assert "****" in texts["log"] and "Traceback" not in texts["log"]


def test_keys_from_the_environment_and_output_file_stay_out_of_ps(tmp_path: Path, hangup: HangUp) -> None:
    env_key, file_key, file_pass = new_key("env"), new_key("file"), new_key("filepass")
    env_outputs = json.dumps([{"name": "envout", "url": f"rtmp://127.0.0.1:{hangup.port}/live/{env_key}"}])
    d = DaemonProcess(tmp_path / "envstate", [], FAST_RETRY, env={"FLASHTALK_LIVE_OUTPUTS": env_outputs})
    try:
        d.start()
        assert scan_processes(d.proc.pid, [env_key], seconds=2.0) >= 1
        with d.client() as c:
            status = c.status()
        assert [o["name"] for o in status["outputs"]] == ["envout"]
    finally:
        d.stop()
    assert not leaked([env_key], d.log_path.read_text() + json.dumps(status))
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# stream\nrtmp://u:{file_pass}@127.0.0.1:{hangup.port}/live/{file_key}\n")
    d = DaemonProcess(tmp_path / "filestate", [], FAST_RETRY, args=["--output-file", str(urls)])
    try:
        d.start()
        assert scan_processes(d.proc.pid, [file_key, file_pass], seconds=2.0) >= 1
        with d.client() as c:
            status = c.status()
        assert [o["url"] for o in status["outputs"]] == [f"rtmp://***@127.0.0.1:{hangup.port}/live/****"]
    finally:
        d.stop()
    assert not leaked([file_key, file_pass], d.log_path.read_text() + json.dumps(status))


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
    return subprocess.run([sys.executable, "-m", "flashtalk_live", *args], capture_output=True, text=True,
                          env=base | (env or {}), cwd=cwd, timeout=120)


@pytest.mark.parametrize("shape", ["rtmpx://h/live/{k}", "rtmp:/h/live/{k}", "rmtp://h/live/{k}",
                                   "RTMPX://u:{k}@h/app/x", "http://h/live/{k}", "h:1935/live/{k}",
                                   "rtmp://h/live/x?token={k} ", "rtmp://h:port/live/{k}"])
def test_bad_urls_in_config_show_and_run_are_one_masked_line(tmp_path: Path, shape: str) -> None:
    key = new_key("cfg")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "s"}"\n[[outputs]]\nname = "o"\nurl = {json.dumps(shape.format(k=key))}\n')
    for args in (["config", "show", "-c", str(cfg)], ["run", "-c", str(cfg)]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "outputs.0.url" in lines[0] and "expected" in lines[0], r.stderr
        assert key not in r.stdout + r.stderr


def test_env_json_typo_names_the_variable_never_the_value(tmp_path: Path) -> None:
    key = new_key("json")
    broken = f'[{{"name": "yt", "url": "rtmp://h/live/{key}"}}'  # the closing ] is missing
    for args in (["config", "show"], ["run", "--state-dir", str(tmp_path / "s")]):
        r = cli(*args, env={"FLASHTALK_LIVE_OUTPUTS": broken})
        assert r.returncode == 2 and key not in r.stdout + r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "FLASHTALK_LIVE_OUTPUTS: not valid JSON" in r.stderr
        assert "line 1 column" in r.stderr


def test_argv_keys_are_refused_with_where_to_put_them(tmp_path: Path) -> None:
    key = new_key("argv")
    for args in (["run", "--output", f"rtmp://h/live/{key}"], ["run", "--output", f"RTMPS://u:{key}@h/a/b"],
                 ["config", "show", "--set", f'outputs=[{{name="a", url="rtmp://h/live/{key}"}}]']):
        r = cli(*args, "--state-dir", str(tmp_path / "s"))
        assert r.returncode == 2, r.stderr
        assert key not in r.stdout + r.stderr and "--output-file" in r.stderr, r.stderr
    # a recording path on argv is fine
    r = cli("config", "show", "--json", "--output", str(tmp_path / "rec.flv"), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 0 and json.loads(r.stdout)["outputs"][0]["url"] == str(tmp_path / "rec.flv"), r.stderr
