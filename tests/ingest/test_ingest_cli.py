"""The CLI verbs through the real top-level parser against a live server, with a stand-in timeline thread."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from flashtalk_live.cli import main
from flashtalk_live.ingest.cli import EXIT_DAEMON_STOPPED, EXIT_NO_DAEMON, default_endpoints
from flashtalk_live.config import load_settings

from support.ports import free_port


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
    assert default_endpoints(r.settings.expanded(r.settings.ingest)) == (f"ipc://{state_dir}/control.sock", f"ipc://{state_dir}/events.sock")

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
    assert main(["push", "--endpoint", r.tcp, "--insert", "--name", "card A", files[0]]) == 0
    assert main(["push", "--endpoint", r.tcp, "--play-now", files[1]]) == 0
    pushed = jlines(capsys.readouterr().out)
    assert [p["mode"] for p in pushed] == ["insert", "play_now"]
    assert main(["status", "--state-dir", str(state_dir), "--json"]) == 0
    st = jlines(capsys.readouterr().out)[0]
    assert [e["segment_id"] for e in st["pending"]] == [pushed[1]["segment_id"], pushed[0]["segment_id"]]
    assert [e.get("name") for e in st["pending"]] == [None, "card A"]  # push --name: shown in status
    assert main(["status", "--state-dir", str(state_dir)]) == 0
    printed = capsys.readouterr().out
    assert "2 pending" in printed and f"{pushed[0]['segment_id']}" in printed and "card A" in printed
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


@pytest.mark.timeout(60)
def test_cli_says_at_once_when_no_daemon_runs(capsys, tmp_path, state_dir):
    # A missing socket file, a stale one nobody listens on, a refused tcp port: exit 3 and the message,
    # even with a long reply timeout (it must not be waited for).
    stale = state_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: what a killed daemon leaves behind
    closed_port = free_port()
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    for ep in (f"ipc://{tmp_path}/nobody.sock", f"ipc://{stale}", f"tcp://127.0.0.1:{closed_port}"):
        for verb in (["status"], ["clear"], ["push", str(tmp_path / "x.wav")], ["ping"]):
            assert main([*verb, "--endpoint", ep, "--timeout", "30"]) == EXIT_NO_DAEMON
            assert f"no daemon at {ep}: is it running?" in capsys.readouterr().err
    assert main(["events", "--events-endpoint", f"ipc://{tmp_path}/nobody.sock"]) == EXIT_NO_DAEMON
    assert "no daemon at" in capsys.readouterr().err
    # from the default state dir of an empty HOME
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHTALK_LIVE_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    r = subprocess.run([sys.executable, "-m", "flashtalk_live", "status", "--timeout", "30"], env=env,
                       capture_output=True, text=True, timeout=60)
    sock = tmp_path / "home" / ".local" / "state" / "flashtalk-live" / "control.sock"
    assert r.returncode == EXIT_NO_DAEMON and f"no daemon at ipc://{sock}: is it running?" in r.stderr, r.stderr


@pytest.mark.timeout(60)
def test_cli_finds_the_daemon_from_its_config_from_any_directory(running, state_dir, tmp_path, capsys, monkeypatch):
    cfg = state_dir / "room.toml"  # relative paths in it are relative to it, not to the current directory
    cfg.write_text('state_dir = "room"\n[ingest]\ncontrol = ["ipc://{state_dir}/c.sock", "tcp://127.0.0.1:0"]\n'
                   'events = ["ipc://{state_dir}/e.sock"]\n')
    settings = load_settings(cfg, environ={})
    assert settings.state_dir == str(state_dir / "room")
    r = running(f'state_dir="{settings.state_dir}"', f"ingest.control={json.dumps(settings.ingest.control)}",
                f"ingest.events={json.dumps(settings.ingest.events)}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLASHTALK_LIVE_CONFIG", raising=False)
    assert main(["ping", "-c", str(cfg)]) == 0
    reply = jlines(capsys.readouterr().out)[0]
    assert reply["commands"] == sorted(r.server.served) and reply["trusted"] is True
    monkeypatch.setenv("FLASHTALK_LIVE_CONFIG", str(cfg))
    assert main(["status", "--json"]) == 0
    assert jlines(capsys.readouterr().out)[0]["ingest"]["control"][0] == f"ipc://{state_dir}/room/c.sock"


@pytest.mark.timeout(60)
def test_table_verbs(running, capsys, tmp_path):
    added = []
    r = running(handlers={"outputs": lambda call: {"outputs": added},
                          "output_add": lambda call: added.append(call.args.name) or {"outputs": added}})
    assert main(["output-add", "--endpoint", r.ipc, "extra", str(tmp_path / "x.flv")]) == 0
    assert main(["outputs", "--endpoint", r.ipc]) == 0
    assert jlines(capsys.readouterr().out)[-1]["outputs"] == ["extra"]
    assert main(["output_add", "--endpoint", r.tcp, "more", str(tmp_path / "y.flv")]) == 1
    err = capsys.readouterr().err
    assert "unauthorized" in err and added == ["extra"]
    assert main(["output-add", "--endpoint", r.ipc, "bad name", "x.flv"]) == 1
    assert "bad_request" in (err := capsys.readouterr().err) and "(field name)" in err
    assert main(["output-remove", "--endpoint", r.ipc, "extra"]) == 1
    assert "unavailable" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_output_add_takes_a_stream_url_from_a_file_stdin_or_the_environment_never_argv(running, capsys, tmp_path,
                                                                                      monkeypatch):
    urls = []
    r = running(handlers={"output_add": lambda call: urls.append(call.args.url) or {"outputs": []}})
    key = "sk_live_0123456789abcdef"
    url = f"rtmp://live.example.com/app/{key}"
    assert main(["output-add", "--endpoint", r.ipc, "cdn", url]) == 2
    err = capsys.readouterr().err
    assert key not in err and "--url-file" in err and urls == []  # refused before anything is sent
    f = tmp_path / "url.txt"
    f.write_text(f"# the CDN\n{url}\n")
    assert main(["output-add", "--endpoint", r.ipc, "cdn", "--url-file", str(f)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(url + "\n"))
    assert main(["output-add", "--endpoint", r.ipc, "cdn2", "--url-file", "-"]) == 0
    monkeypatch.setenv("FLASHTALK_LIVE_OUTPUT_URL", url)
    assert main(["output-add", "--endpoint", r.ipc, "cdn3"]) == 0
    assert urls == [url, url, url]
    assert key not in capsys.readouterr().out + capsys.readouterr().err


@pytest.mark.timeout(60)
def test_push_wait_ends_when_the_daemon_stops(running, clips, tmp_path, capsys, state_dir):
    wav = tmp_path / "a.wav"
    wav.write_bytes(clips["wav_s16"][0])
    for how in ("stopping event", "server gone"):
        room = state_dir / how.split()[0]
        r = running(f'state_dir="{room}"')

        def stop_when_queued() -> None:  # no timeline: the clip never finishes; the daemon goes away instead
            while r.spool.stats()["clips"] == 0:
                time.sleep(0.02)
            if how == "stopping event":
                r.bus.publish("stopping")
            else:
                r.server.stop()

        t = threading.Thread(target=stop_when_queued, daemon=True)
        t.start()
        rc = main(["push", "--state-dir", str(room), "--wait", str(wav)])
        t.join(10)
        out, err = capsys.readouterr()
        assert rc == EXIT_DAEMON_STOPPED, (how, err)
        assert "went away" in err and "a.wav" in err and "stay queued" in err
        assert jlines(out)[0]["file"] == str(wav)


@pytest.mark.timeout(60)
def test_raw_pcm_refusals_name_the_push_flags(running, capsys, tmp_path):
    """The daemon names its request fields (sample_rate); `push`'s user reads the flags (--sample-rate)."""
    r = running()
    raw = tmp_path / "clip.raw"
    raw.write_bytes(b"\0\0" * 4800)
    for args, flag in ((["--format", "pcm_s16le", "--channels", "1"], "--sample-rate"),
                       (["--format", "pcm_s16le", "--sample-rate", "24000"], "--channels")):
        assert main(["push", "--endpoint", r.ipc, *args, str(raw)]) == 1
        err = capsys.readouterr().err
        assert err == f"{raw}: rejected: bad_request: --format pcm_s16le needs {flag}\n", err


def test_status_summary_names_the_renderer_on_air_and_the_one_on_duty_next():
    from flashtalk_live.ingest.cli import status_summary

    def line(r: dict) -> str:
        return next(ln for ln in status_summary({"renderer": r}) if ln.startswith("renderer:"))

    base = {"preferred": "flashtalk", "failures": 1}
    # the fallback is on duty, the engine's buffered frames still air
    assert line({**base, "active": "still", "on_air": "flashtalk"}).startswith("renderer: flashtalk, still next ")
    assert line({**base, "active": "still", "on_air": "still"}).startswith("renderer: still (preferred: flashtalk)")
    assert line({**base, "active": "still"}).startswith("renderer: still (preferred")  # a reply without on_air
