"""The CLI verbs through the real top-level parser against a live server, with a stand-in timeline thread."""

from __future__ import annotations

import json
import threading
import time

import pytest

from flashtalk_live.cli import main
from flashtalk_live.ingest.cli import default_endpoints


def jlines(text: str) -> list[dict]:
    """JSON lines of the CLI output (the server's own log lines share stdout in-process)."""
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def fake_timeline(r, stop: threading.Event) -> None:
    """Plays the queue the way the daemon's timeline does: take, announce started, finish, announce finished."""
    while not stop.is_set():
        e = r.spool.take_next()
        if e is None:
            time.sleep(0.02)
            continue
        r.bus.publish("started", segment_id=e.segment_id)
        time.sleep(0.05)
        r.spool.mark_finished(e.segment_id)
        r.bus.publish("finished", segment_id=e.segment_id)


@pytest.mark.timeout(60)
def test_push_wait_status_cancel_clear_events(running, clips, tmp_path, capsys, state_dir, monkeypatch):
    monkeypatch.delenv("FLASHTALK_LIVE_CONFIG", raising=False)
    r = running()
    files = []
    for name in ("mp3", "flac", "opus"):
        p = tmp_path / f"{name}.{ {'opus': 'ogg'}.get(name, name)}"
        p.write_bytes(clips[name][0])
        files.append(str(p))
    assert default_endpoints(r.settings) == (f"ipc://{state_dir}/control.sock", f"ipc://{state_dir}/events.sock")

    stop = threading.Event()
    t = threading.Thread(target=fake_timeline, args=(r, stop), daemon=True)
    t.start()
    try:
        # endpoints from the settings (state dir), as `flashtalk-live run` would bind them
        rc = main(["push", "--state-dir", str(state_dir), "--wait", *files])
    finally:
        stop.set()
        t.join(5)
    out = jlines(capsys.readouterr().out)
    assert rc == 0
    acks = [o for o in out if "file" in o]
    assert [a["file"] for a in acks] == files
    ids = [a["segment_id"] for a in acks]
    evs = [(o["type"], o["segment_id"]) for o in out if "type" in o]
    for i in ids:  # each pushed clip's own story, in order; --wait returned after the last one finished
        assert [k for k, j in evs if j == i] == ["accepted", "started", "finished"]
    assert evs[-1] == ("finished", ids[-1])

    # no timeline now: clips stay queued
    assert main(["push", "--endpoint", r.tcp, "--insert", files[0]]) == 0
    assert main(["push", "--endpoint", r.tcp, "--play-now", files[1]]) == 0
    pushed = jlines(capsys.readouterr().out)
    assert [p["mode"] for p in pushed] == ["insert", "play_now"]
    assert main(["status", "--state-dir", str(state_dir), "--json"]) == 0
    st = jlines(capsys.readouterr().out)[0]
    assert [e["segment_id"] for e in st["pending"]] == [pushed[1]["segment_id"], pushed[0]["segment_id"]]
    assert main(["status", "--state-dir", str(state_dir)]) == 0
    assert "2 pending" in capsys.readouterr().out
    assert main(["cancel", "--endpoint", r.ipc, pushed[0]["segment_id"]]) == 0
    assert jlines(capsys.readouterr().out)[0]["was"] == "pending"
    assert main(["cancel", "--endpoint", r.ipc, "nope"]) == 1
    assert "not_found" in capsys.readouterr().err
    assert main(["clear", "--endpoint", r.ipc]) == 0
    assert jlines(capsys.readouterr().out)[0]["cleared"] == [pushed[1]["segment_id"]]

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + b"\0" * 100)
    assert main(["push", "--endpoint", r.ipc, str(bad)]) == 1
    assert "undecodable_audio" in capsys.readouterr().err

    # events: tail for a fixed time while something happens
    def later():
        time.sleep(0.5)
        for i in range(3):
            r.bus.publish("idle", n=i)

    threading.Thread(target=later, daemon=True).start()
    assert main(["events", "--state-dir", str(state_dir), "--duration", "1.5", "--type", "idle"]) == 0
    idle = jlines(capsys.readouterr().out)
    assert [e["n"] for e in idle] == [0, 1, 2]


@pytest.mark.timeout(30)
def test_cli_reports_unreachable_daemon(capsys, tmp_path):
    assert main(["status", "--endpoint", f"ipc://{tmp_path}/nobody.sock", "--timeout", "0.3"]) == 3
    err = capsys.readouterr().err
    assert "no reply" in err and "MAXMSGSIZE" in err
