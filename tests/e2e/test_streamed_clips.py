"""Issue 23: streamed clips end to end, over ZeroMQ into a real daemon process, read back from what it broadcast.

The producer sends 200 ms pieces of raw PCM whose tone changes every piece (four frequencies in turn), so the
recording shows where each piece aired: in order, at its sample position, with or without pauses between them.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from flashtalk_live.client import ClipStream, Rejected

from support.daemon_harness import wait_for

RATE = 48_000
PIECE_S = 0.2
FREQS = (440.0, 660.0, 880.0, 1100.0)
PIECE = int(RATE * PIECE_S)


def piece(i: int) -> bytes:
    """Piece i: PIECE_S of FREQS[i % 4], phase-continuous within the piece, s16le mono."""
    t = (np.arange(PIECE) + i * PIECE) / RATE
    return (0.4 * np.sin(2 * np.pi * FREQS[i % 4] * t) * 32767).astype("<i2").tobytes()


def decode_mono(path: Path) -> tuple[np.ndarray, float]:
    """A recording's audio as mono float and the media time of its first sample."""
    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        assert st.codec_context.sample_rate == RATE
        parts, first = [], None
        for f in c.decode(st):
            if first is None:
                first = float(f.pts * f.time_base)
            parts.append(f.to_ndarray().mean(axis=0))
    return np.concatenate(parts).astype(np.float32), first or 0.0


def tones(x: np.ndarray, win: int = RATE // 100) -> np.ndarray:
    """Per 10 ms window: the index into FREQS of the tone there, or -1 for silence."""
    n = len(x) // win
    frames = x[: n * win].reshape(n, win)
    t = np.arange(win) / RATE
    power = np.stack([(frames @ np.cos(2 * np.pi * f * t)) ** 2 + (frames @ np.sin(2 * np.pi * f * t)) ** 2
                      for f in FREQS], axis=1)
    best = power.argmax(axis=1)
    loud = (frames ** 2).mean(axis=1) > 0.01 * 0.4 ** 2
    return np.where(loud, best, -1)


def runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, first window, windows) of each run of equal labels."""
    out: list[tuple[int, int, int]] = []
    for i, v in enumerate(labels.tolist()):
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1], out[-1][2] + 1)
        else:
            out.append((v, i, 1))
    return out


def pieces_on_air(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(tone, first window, windows) per piece: runs long enough to be one (AAC smears a window or two at each
    change), silence dropped, and a piece split by a pause joined again."""
    out: list[tuple[int, int, int]] = []
    for r in runs(labels):
        if r[0] < 0 or r[2] < 3:
            continue
        if out and out[-1][0] == r[0]:
            out[-1] = (r[0], out[-1][1], out[-1][2] + r[2])
        else:
            out.append(r)
    return [r for r in out if r[2] >= 5]


def spool_parts(state_dir: Path, segment_id: str) -> list[bytes]:
    db = sqlite3.connect(f"file:{state_dir / 'spool' / 'spool.sqlite3'}?mode=ro", uri=True)
    try:
        return [bytes(r[0]) for r in db.execute("SELECT data FROM stream_parts WHERE segment_id=? ORDER BY seq",
                                                 (segment_id,))]
    finally:
        db.close()


@pytest.mark.rtmp
@pytest.mark.timeout(240)
@pytest.mark.parametrize("lead_in", ["[]", "[8, 16]"], ids=["whole_chunks", "lead_in"])
def test_a_stream_at_real_time_pace_airs_continuously_and_starts_before_close(daemon_factory, nginx_rtmp, lead_in):
    """Also with a lead-in (video.lead_in_frames): the clip's first chunks shorter, the air just as continuous."""
    srv = nginx_rtmp()
    # a generous jitter allowance: the producer here shares a loaded box with the daemon
    d = daemon_factory(outputs=[{"name": "live", "url": srv.url("room")}],
                       extra=["streams.prebuffer_s=1.0", f"video.lead_in_frames={lead_in}"]).start()
    ev = d.events()
    seen: list[dict] = []
    n = 30  # 6 s
    with d.client() as c:
        ev.sync(c)
        time.sleep(1.0)  # idle on air first
        started_before_close = False
        with c.stream(format="pcm_s16le", sample_rate=RATE, channels=1, text="streamed") as s:
            sid = s.segment_id
            t0 = time.monotonic()
            for i in range(n):
                time.sleep(max(0.0, t0 + i * PIECE_S - time.monotonic()))  # real-time pace, no drift
                ack = s.append(piece(i))
                assert ack["seq"] == i and not ack["duplicate"]
                while (e := ev.get(0)) is not None:
                    seen.append(e)
                    started_before_close |= e["type"] == "started" and e.get("segment_id") == sid
            # the stored parts are exactly what was acknowledged, before the close
            assert b"".join(spool_parts(d.state_dir, sid)) == b"".join(piece(i) for i in range(n))
            closed = s.close()
        assert closed["parts"] == n and abs(closed["duration_s"] - n * PIECE_S) < 1e-6
        assert started_before_close, [(e["type"], e.get("segment_id")) for e in seen]
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == sid, 60, seen)
        time.sleep(1.5)
        st = c.status()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{st['metrics_port']}/metrics", timeout=10).read().decode()
    assert d.stop() == 0
    assert st["broadcast"]["producer_starved_seconds"] == 0.0, st["broadcast"]
    # push -> air of a stream is counted from its first acknowledged byte (a number, never asserted on time)
    p2a = st["latency"]["push_to_air"]["stream_first_byte"]
    assert p2a["count"] == 1 and p2a["max_s"] > 0
    assert 'flashtalk_push_to_air_seconds_count{kind="stream_first_byte"} 1.0' in metrics
    assert "flashtalk_producer_starved_seconds_total 0.0" in metrics
    assert st["streams"]["open"] == 0 and st["streams"]["closed"] == 1
    # the lead-in's chunks were rendered (their own render times), and only with a lead-in
    assert set(st["render_ahead"]["short_chunk_render_s"]) == ({"8", "16"} if lead_in != "[]" else set())
    started = next(e for e in seen if e["type"] == "started" and e.get("segment_id") == sid)
    # its stages on one clock (CLOCK_MONOTONIC, this process's too): first byte, first chunk cut, rendered, on air
    assert t0 <= started["cut_mono"] <= started["rendered_mono"] <= started["mono"], started
    start = started["media_time_s"]
    end = next(e["media_time_s"] for e in seen if e["type"] == "finished" and e.get("segment_id") == sid)
    assert abs(end - start - n * PIECE_S) <= 0.04 + 1e-6  # no pause inside the clip: it took exactly its length

    recs = srv.recordings("room")
    assert len(recs) == 1, recs
    x, _ = decode_mono(recs[0])
    labels = tones(x)
    win_s = 0.01
    on_air = pieces_on_air(labels)
    assert [r[0] for r in on_air] == [i % 4 for i in range(n)], on_air
    # each piece where its samples belong: piece i starts i * 200 ms after the first (10 ms windows, AAC smear)
    first_at = on_air[0][1]
    for i, (label, at, length) in enumerate(on_air):
        assert abs((at - first_at) * win_s - i * PIECE_S) <= 0.03, (i, at, first_at)
    # no dropout: not one silent 10 ms window from the first piece to the last
    span = labels[first_at: on_air[-1][1] + on_air[-1][2]]
    assert (span >= 0).all(), np.flatnonzero(span < 0)[:10]


@pytest.mark.timeout(240)
def test_sigkill_mid_stream_keeps_every_acknowledged_piece_resume_completes_and_the_abandoned_one_is_cut(
        daemon_factory):
    d = daemon_factory(extra=["streams.idle_timeout_s=3.0"])
    d.start()
    with d.client() as c:
        # A whole clip on air keeps both streams pending while the daemon dies, and after the restart (it replays
        # from its start) while `a` resumes, so every `started` is seen here.
        c.enqueue(b"".join(piece(i) for i in range(40)), format="pcm_s16le", sample_rate=RATE, channels=1)
        a = ClipStream(c, None, dict(format="pcm_s16le", sample_rate=RATE, channels=1, mode="enqueue"))
        a_id = a.open()
        for i in range(10):
            assert a.append(piece(i))["seq"] == i
        b = ClipStream(c, None, dict(format="pcm_s16le", sample_rate=RATE, channels=1, mode="enqueue"))
        b_id = b.open()
        for i in range(3):
            b.append(piece(i))
    d.kill()
    # every acknowledged byte is in the spool
    assert spool_parts(d.state_dir, a_id) == [piece(i) for i in range(10)]
    assert spool_parts(d.state_dir, b_id) == [piece(i) for i in range(3)]

    d.start()
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        st = c.status()["streams"]
        assert st["open"] == 2
        resumed = c.stream(segment_id=a_id, next_seq=10)
        dup = c.clip_append(a_id, seq=9, data=piece(9))  # the last acknowledged piece again: acked, ignored
        assert dup["duplicate"] and dup["next_seq"] == 10
        for i in range(10, 20):
            resumed.append(piece(i))
        done = resumed.close()
        assert done["parts"] == 20 and abs(done["duration_s"] - 20 * PIECE_S) < 1e-6
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == a_id, 60, seen)
        # b was never resumed: cut after streams.idle_timeout_s (counted from the restart), airs what it had
        cut = wait_for(ev, lambda e: e["type"] == "interrupted" and e.get("segment_id") == b_id, 60, seen)
        assert cut["reason"] == "stream_timeout"
        assert any(e["type"] == "stream_closed" and e.get("segment_id") == b_id and e.get("cut") for e in seen)
        with pytest.raises(Rejected) as ei:
            c.clip_append(b_id, seq=3, data=piece(3))
        assert ei.value.code == "stream_timed_out"
        kinds = [(e["type"], e.get("segment_id")) for e in seen]
        assert kinds.count(("started", a_id)) == 1 and kinds.count(("started", b_id)) == 1
    assert d.stop() == 0


@pytest.mark.timeout(240)
def test_bad_stream_input_each_its_own_code(daemon_factory):
    d = daemon_factory(extra=["streams.max_stream_bytes=50000", "streams.idle_timeout_s=1.5",
                              "streams.max_open_per_peer=2"]).start()
    ev = d.events()
    seen: list[dict] = []
    pcm = dict(format="pcm_s16le", sample_rate=RATE, channels=1)

    def code(fn) -> str:
        with pytest.raises(Rejected) as ei:
            fn()
        return ei.value.code

    with d.client() as c:
        ev.sync(c)
        other = c.enqueue(b"".join(piece(i) for i in range(10)), **pcm)["segment_id"]  # must air untouched
        s1 = c.clip_open(**pcm)["segment_id"]
        assert c.clip_append(s1, seq=0, data=piece(0))["next_seq"] == 1
        assert code(lambda: c.clip_append(s1, seq=2, data=piece(2))) == "sequence_gap"
        assert code(lambda: c.clip_append("f" * 16, seq=0, data=piece(0))) == "unknown_stream"
        assert c.clip_close(s1)["parts"] == 1
        assert code(lambda: c.clip_append(s1, seq=1, data=piece(1))) == "stream_closed"
        s2 = c.clip_open(**pcm)["segment_id"]
        c.clip_append(s2, seq=0, data=piece(0))
        assert code(lambda: c.clip_append(s2, seq=1, data=piece(1) + piece(2))) == "stream_too_large"
        assert c.clip_close(s2)["parts"] == 1  # the refused piece left s2 as it was, and open
        s3 = c.clip_open(**pcm)["segment_id"]
        c.clip_append(s3, seq=0, data=piece(0))
        s4 = c.clip_open(**pcm)["segment_id"]
        assert code(lambda: c.clip_open(**pcm)) == "too_many_streams"  # s3, s4 open for this peer
        time.sleep(2.5)
        assert code(lambda: c.clip_append(s3, seq=1, data=piece(1))) == "stream_timed_out"
        assert code(lambda: c.clip_open(format="wav")) == "bad_request"
        s5 = c.clip_open(**pcm)["segment_id"]
        c.clip_append(s5, seq=0, data=piece(0))
        assert c.clip_abort(s5)["was"] == "pending"
        assert code(lambda: c.clip_append(s5, seq=1, data=piece(1))) == "stream_closed"
        assert code(lambda: c.clip_abort("f" * 16)) == "unknown_stream"
        # nothing else was disturbed: the whole clip and the closed stream air to their end
        for sid in (other, s1, s2):
            wait_for(ev, lambda e, sid=sid: e["type"] == "finished" and e.get("segment_id") == sid, 60, seen)
        # they may all have aired before the abort: its event then comes after theirs
        is_drop = lambda e: e["type"] == "dropped" and e.get("segment_id") == s5  # noqa: E731
        if not any(is_drop(e) for e in seen):
            wait_for(ev, is_drop, 30, seen)
        st = c.status()
    assert st["state"] == "on_air"
    assert d.stop() == 0
    assert s4 not in [e.get("segment_id") for e in seen if e["type"] == "started"]
    assert {"type": "dropped", "segment_id": s5, "reason": "aborted"}.items() <= next(
        e for e in seen if e["type"] == "dropped" and e.get("segment_id") == s5).items()


@pytest.mark.rtmp
@pytest.mark.timeout(240)
def test_a_producer_slower_than_real_time_pauses_inside_the_clip_not_an_underrun(daemon_factory, nginx_rtmp):
    srv = nginx_rtmp()
    d = daemon_factory(outputs=[{"name": "live", "url": srv.url("room")}],
                       extra=["streams.prebuffer_s=0.4", "streams.due_margin_s=0.6"]).start()
    ev = d.events()
    seen: list[dict] = []
    n = 20
    with d.client() as c:
        ev.sync(c)
        with c.stream(format="pcm_s16le", sample_rate=RATE, channels=1) as s:
            sid = s.segment_id
            for i in range(n):
                s.append(piece(i))
                time.sleep(0.1 if i < 8 else 2 * PIECE_S)  # the prebuffer at once, then half real time
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == sid, 90, seen)
        time.sleep(1.0)
        st = c.status()
    assert d.stop() == 0
    b = st["broadcast"]
    assert b["producer_starved_seconds"] > 0.5, b
    assert b["underrun_frames_clip"] == 0, b
    started = next(e for e in seen if e["type"] == "started" and e.get("segment_id") == sid)
    # its stages on the daemon's CLOCK_MONOTONIC: first chunk cut, rendered, on air
    assert started["cut_mono"] <= started["rendered_mono"] <= started["mono"], started
    start = started["media_time_s"]
    end = next(e["media_time_s"] for e in seen if e["type"] == "finished" and e.get("segment_id") == sid)
    assert end - start > n * PIECE_S + 0.5  # the pauses are inside the clip
    assert not [e for e in seen if e["type"] == "idle" and start < e["media_time_s"] < end]
    # the clip's audio on air intact: every piece, in order, each whole (pauses only between them)
    x, _ = decode_mono(srv.recordings("room")[0])
    on_air = pieces_on_air(tones(x))
    assert [r[0] for r in on_air] == [i % 4 for i in range(n)], on_air
    assert abs(sum(r[2] for r in on_air) * 0.01 - n * PIECE_S) <= 0.02 * n


@pytest.mark.timeout(180)
def test_push_stream_reads_stdin_as_it_arrives(daemon_factory):
    import subprocess
    import sys

    d = daemon_factory().start()
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        cli = subprocess.Popen([sys.executable, "-m", "flashtalk_live", "push", "--stream", "-", "--sample-rate",
                                str(RATE), "--channels", "1", "--text", "from a pipe", "--endpoint", d.ipc],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
        assert cli.stdin is not None and cli.stdout is not None
        opened = json.loads(cli.stdout.readline())
        sid = opened["segment_id"]
        i = 0
        # the pipe stays open until the clip is on air: it airs from what was read so far
        while not any(e["type"] == "started" and e.get("segment_id") == sid for e in seen):
            assert i < 100, "not on air after 20 s of audio"
            cli.stdin.write(piece(i)[:7001])  # odd sizes: pieces end mid-sample
            cli.stdin.write(piece(i)[7001:])
            cli.stdin.flush()
            i += 1
            time.sleep(PIECE_S)
            while (e := ev.get(0)) is not None:
                seen.append(e)
        cli.stdin.close()
        closed = json.loads(cli.stdout.readline())
        assert cli.wait(30) == 0
        assert closed["closed"] and closed["bytes"] == i * 2 * PIECE and abs(closed["duration_s"] - i * PIECE_S) < 1e-6
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == sid, 60, seen)
    assert d.stop() == 0


def test_push_stream_of_an_ogg_opus_file_airs_its_whole_length(daemon_factory, tmp_path):
    """A TTS that writes Ogg Opus: `push --stream voice.opus` sends its pages as read (cut anywhere) and the clip
    is exactly the file's length on air."""
    import subprocess
    import sys

    from support.audiogen import encode

    path = tmp_path / "voice.opus"
    path.write_bytes(encode("opus", seconds=2.5, freq=500.0))
    d = daemon_factory().start()
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        out = subprocess.run([sys.executable, "-m", "flashtalk_live", "push", "--stream", str(path), "--endpoint",
                              d.ipc], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        closed = json.loads(out.stdout.strip().splitlines()[-1])
        assert closed["closed"] and closed["duration_s"] == pytest.approx(2.5, abs=1e-3)
        sid = closed["segment_id"]
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == sid, 60, seen)
    assert d.stop() == 0


@pytest.mark.timeout(120)
def test_a_stream_gathering_its_first_chunk_holds_back_programme_items_not_yet_on_air(tmp_path):
    # A programme of back-to-back 1.5 s items with 4 chunks rendered ahead: items are cut seconds before they air.
    # A stream opened now waits for its first chunk of audio (a slow producer: nothing for 3 s). The items cut but
    # not yet on air must not air meanwhile, or the reply waits behind them (an H100 run: 4.9 s instead of 2.5 s).
    from support.audio import wav_bytes
    from support.settings import room_settings
    from support.waiting import until
    from flashtalk_live.client import Client
    from flashtalk_live.daemon import Daemon

    for i, f in enumerate((500.0, 700.0, 900.0)):
        (tmp_path / f"p{i}.wav").write_bytes(wav_bytes(1.5, f))
    (tmp_path / "show.m3u").write_text("#EXTM3U\n#EXT-X-DEFAULT-PAUSE:0\n" + "".join(f"p{i}.wav\n" for i in range(3)))
    d = Daemon(room_settings(tmp_path, f'programme.playlist="{tmp_path / "show.m3u"}"', "renderer.lookahead_chunks=4",
                             "metrics.enabled=false"))
    seen: list[dict] = []
    d.events.subscribe(seen.append)
    d.start()
    try:
        until(lambda: sum(e["type"] == "started" and e.get("source") == "programme" for e in seen) >= 2, 60,
              "the programme on air")
        with Client(d.ingest.control_endpoints[0], timeout_s=20) as c:
            with c.stream(format="pcm_s16le", sample_rate=RATE, channels=1) as s:
                sid = s.segment_id
                time.sleep(3.0)
                for i in range(10):
                    s.append(piece(i))
                s.close()
        started = until(lambda: next((e for e in list(seen) if e["type"] == "started" and e.get("segment_id") == sid),
                                     None), 60, "the stream on air")
    finally:
        d.close()
    accepted = next(e for e in seen if e["type"] == "accepted" and e.get("segment_id") == sid)
    # what was already on air, or rendered in the time the re-plan leaves for the cut, may still start early on
    later = [(e.get("name"), round(e["mono"] - accepted["mono"], 2)) for e in seen
             if e["type"] == "started" and e.get("source") == "programme"
             and accepted["mono"] + 0.8 < e["mono"] < started["mono"]]
    assert not later, later
    assert started["mono"] - accepted["mono"] < 6.0  # it started once its audio came (3 s), not after the programme
