"""File outputs: .flv, fragmented .mp4 and segmented recordings read back with PyAV; bad URLs and I/O errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from flashtalk_live.events import EventBus
from flashtalk_live.config import load_settings
from flashtalk_live.outputs.kinds import kind_name as output_kind, validate_url
from flashtalk_live.outputs.manager import OutputManager
from flashtalk_live.settings import OutputPolicy, OutputSettings

from support.outputs_driver import FPS, by_name, frame_and_audio, make_encoder
from support.rtmp_harness import max_gap, read_media

POLICY = OutputPolicy(backoff_initial_s=0.05, backoff_max_s=0.1)


def _push(m: OutputManager, enc, frames: int) -> int:
    """Unpaced: files do not care about wall-clock time. Returns the packets handed over."""
    n = 0
    for i in range(frames):
        pk = enc.encode(*frame_and_audio(i, enc.channels))
        n += len(pk)
        m.send(pk)
    tail = enc.flush()
    m.send(tail)
    return n + len(tail)


@pytest.mark.timeout(60)
def test_flv_and_mp4_recordings_read_back(tmp_path: Path) -> None:
    enc = make_encoder()
    bus = EventBus()
    events: list[dict] = []
    bus.subscribe(events.append)
    m = OutputManager.for_encoder(POLICY, bus, enc)
    m.add(OutputSettings(name="flv", url=str(tmp_path / "a" / "rec-%Y%m%d.flv")))
    m.add(OutputSettings(name="mp4", url=f"file:{tmp_path}/b/rec.mp4"))
    total = _push(m, enc, 5 * FPS)
    st = by_name(m.status())
    m.close(2.0)
    for name, path in (("flv", next((tmp_path / "a").glob("rec-*.flv"))), ("mp4", tmp_path / "b" / "rec.mp4")):
        info = read_media(path, decode=True)
        print(name, path.name, info.video_packets, info.audio_packets, info.keyframes, info.video_end, info.audio_end)
        assert info.errors == []
        assert (info.video_codec, info.audio_codec, info.sample_rate, info.channels) == ("h264", "aac", 48000, 2)
        assert (info.width, info.height) == (256, 256) and round(info.fps) == FPS
        assert info.keyframes[0] == info.video_pts[0] == 0.0
        assert info.video_packets == 5 * FPS  # the file opened before the first frame: nothing lost
        assert max_gap(info.video_pts) <= 1 / FPS + 1e-6
        assert abs(info.video_end - info.audio_end) < 0.05
        assert info.video_packets + info.audio_packets == st[name]["sent_packets"]
        # AAC's priming packet (stamped before time 0) is in no file and no drop; nothing else goes missing.
        assert st[name]["dropped_packets"] == 0
        assert st[name]["sent_packets"] + 1 == total
        assert st[name]["state"] == "up" and st[name]["segments"] == 1
    assert [e["type"] for e in events if e["output"] == "flv"] == ["endpoint_up", "endpoint_down"]


@pytest.mark.timeout(60)
def test_segmented_recording_cuts_on_keyframes(tmp_path: Path) -> None:
    enc = make_encoder()
    m = OutputManager.for_encoder(POLICY, None, enc)
    m.add(OutputSettings(name="seg", url=str(tmp_path / "seg-%H%M%S-{n}.mp4"), segment_seconds=2.0))
    _push(m, enc, 7 * FPS)
    st = by_name(m.status())["seg"]
    m.close(2.0)
    files = sorted(tmp_path.glob("seg-*.mp4"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    assert [p.stem.rsplit("-", 1)[1] for p in files] == ["0", "1", "2", "3"]
    assert st["segments"] == 4
    frames = 0
    for i, f in enumerate(files):
        info = read_media(f, decode=True)
        print(f.name, info.video_packets, info.keyframes, round(info.video_end, 3), round(info.audio_end, 3))
        assert info.errors == [] and info.keyframes[0] == info.video_pts[0] == 0.0
        assert max_gap(info.video_pts) <= 1 / FPS + 1e-6
        if i < len(files) - 1:
            assert info.video_end == pytest.approx(2.0, abs=1e-6)  # GOP 2 s: each cut at the next keyframe
        frames += info.video_packets
    assert frames == 7 * FPS  # segments join without losing a frame
    # ... nor audio: the late AAC packets of each cut still go to the segment they belong to; the one
    # packet not written is the encoder's priming packet at -1024 samples, before the first keyframe, which is not
    # counted as dropped (no program sound is lost: issue 21)
    assert st["dropped_packets"] == 0


@pytest.mark.timeout(60)
def test_unwritable_path_is_reported_and_retried_without_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    enc = make_encoder()
    m = OutputManager.for_encoder(POLICY, None, enc)
    m.add(OutputSettings(name="bad", url=str(blocker / "rec.flv")))
    m.add(OutputSettings(name="good", url=str(tmp_path / "ok.flv")))
    import time

    for i in range(2 * FPS):
        m.send(enc.encode(*frame_and_audio(i, enc.channels)))
        if i % 10 == 0:
            time.sleep(0.06)  # let the (tiny) backoff expire a few times
    st = by_name(m.status())
    m.close(2.0)
    print(st["bad"])
    assert st["bad"]["state"] == "down" and st["bad"]["sent_packets"] == 0
    assert "not-a-dir" in st["bad"]["last_error"] or "Not a directory" in st["bad"]["last_error"]
    assert st["bad"]["reconnects"] >= 1
    assert st["good"]["state"] == "up" and read_media(tmp_path / "ok.flv").video_packets == 2 * FPS


@pytest.mark.timeout(30)
def test_existing_recordings_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "same.flv").write_bytes(b"keep me")
    enc = make_encoder()
    m = OutputManager.for_encoder(POLICY, None, enc)
    m.add(OutputSettings(name="r", url=str(tmp_path / "same.flv")))
    _push(m, enc, FPS)
    m.close(2.0)
    assert (tmp_path / "same.flv").read_bytes() == b"keep me"
    assert read_media(tmp_path / "same-1.flv").video_packets == FPS


def test_bad_output_urls_get_clear_errors(tmp_path: Path) -> None:
    assert output_kind("rtmp://h/app/key") == "rtmp" and output_kind("RTMPS://h/app/key") == "rtmp"
    assert output_kind("/x/y.FLV") == "file" and output_kind("file:///x/y.mp4") == "file"
    for url, problem in (("srt://h:9000", "unknown scheme 'srt'"), ("/x/y.avi", "unsupported file type '.avi'"),
                         ("http://h/x.flv", "unknown scheme 'http'"), ("rec", "unsupported file type '(none)'")):
        with pytest.raises(ValueError, match=re.escape(problem) + "; expected rtmp:// or rtmps://"):
            validate_url(url)
        with pytest.raises(ValueError, match=re.escape(problem)):  # the same rule at config load
            load_settings(None, environ={}, replace={"outputs": [{"name": "x", "url": url}]})
    enc = make_encoder()
    m = OutputManager.for_encoder(POLICY, None, enc)
    try:
        with pytest.raises(ValueError, match="segment_seconds applies to file outputs"):
            m.add(OutputSettings(name="x", url="rtmp://h/app/key", segment_seconds=60))
        with pytest.raises(ValueError, match="unsupported file type '.webm'"):
            m.add(OutputSettings(name="y", url=str(tmp_path / "y.webm")))
        assert m.add(OutputSettings(name="off", url=str(tmp_path / "off.flv"), enabled=False)) is False
        assert m.names() == []
    finally:
        m.close(1.0)
    with pytest.raises(RuntimeError, match="closed"):
        m.add(OutputSettings(name="late", url=str(tmp_path / "late.flv")))
    assert not os.path.exists(tmp_path / "off.flv")


def test_retention_removes_only_this_outputs_old_and_excess_files(tmp_path: Path) -> None:
    from flashtalk_live.outputs.retention import apply_retention, template_pattern

    d = tmp_path / "rec"
    d.mkdir()
    template = d / "live-%Y%m%d-%H%M%S.flv"
    now = 1_000_000.0
    mine = []
    for i, name in enumerate(["live-20260101-000000.flv", "live-20260102-000000.flv", "live-20260103-000000-1.flv",
                              "live-20260104-000000.flv"]):
        p = d / name
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - (4 - i) * 86400, now - (4 - i) * 86400))
        mine.append(p)
    empty = d / "live-20260105-000000.flv"
    empty.touch()
    others = [d / "notes.txt", d / "other-20260101-000000.flv", d / "live-20260101-000000.mp4"]
    for p in others:
        p.write_bytes(b"y" * 5000)
        os.utime(p, (0, 0))
    assert template_pattern(template).match(mine[2].name)
    # by age: files older than 2.5 days go, the 0-byte leftover too; nothing the template cannot name
    removed = apply_retention(template, 2.5 * 86400, 0, now=now)
    assert sorted(removed) == sorted([mine[0], mine[1], empty])
    # by size: oldest first until the total fits; the open segment is kept whatever its age
    removed = apply_retention(template, 0, 1500, keep=[mine[2]], now=now)
    assert removed == [mine[3]]
    assert mine[2].exists() and all(p.exists() for p in others)


@pytest.mark.timeout(60)
def test_segmented_recording_keeps_within_its_size_budget(tmp_path: Path) -> None:
    enc = make_encoder()
    budget = 60_000
    m = OutputManager.for_encoder(POLICY.model_copy(update={"recording_max_bytes": budget}), EventBus(), enc)
    m.add(OutputSettings(name="rec", url=str(tmp_path / "r" / "seg-{n}.flv"), segment_seconds=1.0))
    _push(m, enc, 16 * FPS)  # cuts at keyframes: every 2 s (GOP)
    st = by_name(m.status())["rec"]
    m.close(2.0)
    files = sorted((tmp_path / "r").glob("seg-*.flv"))
    assert st["segments"] >= 5 and st["retention_removed"] >= 1
    assert len(files) == st["segments"] - st["retention_removed"]
    closed = files[:-1]  # retention runs at each open: everything but the newest fits the budget (plus one segment)
    assert sum(p.stat().st_size for p in closed) <= budget + max(p.stat().st_size for p in files)
    assert all(p.stat().st_size > 0 for p in files)
    assert read_media(files[-1]).video_packets > 0


@pytest.mark.timeout(60)
def test_retention_never_deletes_another_outputs_open_recording(tmp_path: Path) -> None:
    """Two recordings in one folder whose templates overlap ("live-%Y%m%d-{n}.flv" can name "live-full-20260101.flv":
    strftime codes match anything): the segmented one's retention, run at each cut, must not unlink the other's file
    while it is being written (it was: the other output went on writing into a deleted inode and its recording was
    lost), nor count it against its own budget."""
    enc = make_encoder()
    m = OutputManager.for_encoder(POLICY.model_copy(update={"recording_max_bytes": 20_000}), None, enc)
    m.add(OutputSettings(name="full", url=str(tmp_path / "r" / "live-full-%Y%m%d.flv")))
    m.add(OutputSettings(name="seg", url=str(tmp_path / "r" / "live-%Y%m%d-{n}.flv"), segment_seconds=1.0))
    from flashtalk_live.outputs.retention import template_pattern

    _push(m, enc, 8 * FPS)  # cuts at keyframes: every 2 s (GOP), retention at each
    st = by_name(m.status())
    full_path = Path(st["full"]["path"])
    m.close(2.0)
    assert template_pattern(tmp_path / "r" / "live-%Y%m%d-{n}.flv").match(full_path.name)  # the overlap
    assert st["seg"]["segments"] >= 4
    assert full_path.exists(), "the unsegmented recording was deleted by the other output's retention"
    assert read_media(full_path).video_packets == 8 * FPS


@pytest.mark.timeout(60)
def test_an_flv_recording_never_wraps_its_timestamps(tmp_path: Path) -> None:
    """FLV stamps packets in 31-bit milliseconds (24.8 days); an unsegmented .flv recording of a 24/7 room reaches
    that. The encoder's counters are moved just below it (as ~24.8 days of air would), then 3 s more are recorded:
    every file of the output must stay monotonic from 0 and hold every frame (an RTMP connection is cut over before
    the wrap, output_policy.planned_reconnect_hours; a recording was not, and its timestamps jumped back)."""
    enc = make_encoder()
    m = OutputManager.for_encoder(POLICY, None, enc)
    m.add(OutputSettings(name="long", url=str(tmp_path / "long.flv")))
    for i in range(FPS):
        m.send(enc.encode(*frame_and_audio(i, enc.channels)))
    jump = int((2**31 / 1000 - 1) * FPS)  # 1 s before the wrap
    enc.frames = jump
    leftover = enc.audio_samples_in - enc.audio_samples  # in the resampler, not yet encoded
    enc.audio_samples_in = jump * (48000 // FPS)
    enc.audio_samples = enc.audio_samples_in - leftover
    _push(m, enc, 3 * FPS)
    m.close(2.0)
    files = sorted(tmp_path.glob("long*.flv"), key=lambda p: p.stat().st_mtime_ns)
    frames = 0
    for f in files:
        info = read_media(f)
        print(f.name, info.video_packets, info.video_dts[:2], info.video_dts[-2:])
        assert info.video_dts == sorted(info.video_dts), f"{f.name}: timestamps went back"
        assert info.video_dts[-1] < 2**31 / 1000
        frames += info.video_packets
    assert frames == 4 * FPS


@pytest.mark.timeout(30)
def test_a_runtime_file_output_given_as_a_file_url_is_confined_by_its_path(tmp_path: Path) -> None:
    """output_add takes a recording as a path or a file: URL (the same output-kind rules as the config). The file
    policy must judge the path the output writes: `file:///<inside file_dirs>/x.flv` was refused as
    forbidden_path (the policy was handed the URL itself, never an absolute path), `file:///<elsewhere>` must be."""
    from flashtalk_live.errors import Rejection
    from flashtalk_live.ingest.auth import confine_output_file

    allowed = tmp_path / "rec"
    allowed.mkdir()
    confine = lambda url: confine_output_file(url, [str(allowed)])  # noqa: E731
    enc = make_encoder()
    m = OutputManager.for_encoder(POLICY, None, enc)
    try:
        assert m.add(OutputSettings(name="inside", url=f"file://{allowed}/x.flv"), confine_file=confine)
        with pytest.raises(Rejection) as e:
            m.add(OutputSettings(name="outside", url=f"file://{tmp_path}/y.flv"), confine_file=confine)
        assert e.value.code == "forbidden_path"
        assert m.names() == ["inside"]
        _push(m, enc, FPS)
    finally:
        m.close(2.0)
    assert read_media(allowed / "x.flv").video_packets == FPS
