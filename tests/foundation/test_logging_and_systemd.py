"""Logging scrubs secrets; sd_notify reaches a datagram socket; the unit files pass systemd-analyze verify."""

import io
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from flashtalk_live import log
from flashtalk_live.sdnotify import sd_notify, watchdog_interval_s

ROOT = Path(__file__).resolve().parents[2]


def test_json_logs_scrub_stream_keys():
    buf = io.StringIO()
    log.configure("json", "info", stream=buf)
    log.get_logger("test").info("connecting", url="rtmp://host/live/SECRETKEY", segment_id="seg-1")
    line = json.loads(buf.getvalue().strip())
    assert "SECRETKEY" not in buf.getvalue()
    assert line["url"] == "rtmp://host/live/****"
    assert line["segment_id"] == "seg-1"


def test_log_masks_nested_values_and_exceptions():
    buf = io.StringIO()
    log.configure("json", "info", stream=buf)
    try:
        raise ConnectionError("cannot open RTMPS://u:PASSWORD@h:443/app/KEY1: refused")
    except ConnectionError as e:
        log.get_logger("test").exception("failed", error=e, outputs=[{"url": "rmtp://h/live/KEY2"}])
    text = buf.getvalue()
    assert all(s not in text for s in ("PASSWORD", "KEY1", "KEY2")), text
    line = json.loads(text.strip())
    assert line["outputs"][0]["url"] == "rmtp://h/live/****" and "Traceback" in line["exception"]


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_datagram(tmp_path, monkeypatch, abstract):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"flashtalk-test-{os.getpid()}"
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = str(tmp_path / "notify")
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    s.settimeout(2)
    assert sd_notify("READY=1\nSTATUS=on air")
    assert s.recv(1024) == b"READY=1\nSTATUS=on air"
    s.close()


def test_sd_notify_noop_without_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval_s() is None


@pytest.mark.parametrize("unit", ["flashtalk-live.service", "flashtalk-live@.service"])
def test_systemd_units_verify(tmp_path, unit):
    if not shutil.which("systemd-analyze"):
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze missing: .ci/run installs systemd")
        pytest.skip("systemd-analyze not installed")
    exe = shutil.which("flashtalk-live")
    assert exe, "the console script is installed by `pip install -e .`"
    text = (ROOT / "systemd" / unit).read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=always", "EnvironmentFile=", "User=", "StateDirectory="):
        assert key in text, key
    # The shipped unit points at /opt/flashtalk-live/venv; verify it against where this checkout installed the script.
    target = tmp_path / (unit.replace("@", "@room1") if "@" in unit else unit)
    target.write_text(text.replace("/opt/flashtalk-live/venv/bin/flashtalk-live", exe))
    r = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
