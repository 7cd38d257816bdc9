"""queue/streams.py's StreamRegistry against a real spool: restart edge cases, the codes a producer gets, and the
registry's state when an ingest worker and housekeeping meet over one stream."""

from __future__ import annotations

import pytest

from flashtalk_live.errors import Rejection
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.settings import Settings
from flashtalk_live.playout.timeline import Timeline

from support.level_clips import level_samples as pcm, ManualClock as Clock

CF = 28  # 1.12 s chunks at 25 fps


def settings() -> Settings:
    return Settings(state_dir="/nonexistent-state", streams={"prebuffer_s": 0.0, "idle_timeout_s": 5.0})


def registry(spool: Spool, clock: Clock) -> StreamRegistry:
    st = settings()
    return StreamRegistry(st.streams, st.ingest, st.encoder, spool, chunk_s=CF / 25, clock=clock)


def open_stream(reg: StreamRegistry) -> str:
    return reg.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                    peer="test").entry.segment_id


def code_of(fn) -> str:
    with pytest.raises(Rejection) as ei:
        fn()
    return ei.value.code


def test_a_stream_cut_before_a_restart_answers_stream_timed_out_after_it(tmp_path):
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, 4800))
    clock.t = 6.0
    assert reg.sweep() == [sid]
    assert code_of(lambda: reg.append(sid, 1, pcm(1, 4800))) == "stream_timed_out"
    spool.close()
    spool = Spool(tmp_path / "spool")
    reg2 = registry(spool, clock)
    # the same stream, the same producer mistake: the same code as before the restart
    assert code_of(lambda: reg2.append(sid, 1, pcm(1, 4800))) == "stream_timed_out"
    assert code_of(lambda: reg2.close(sid)) == "stream_timed_out"


def test_an_empty_stream_cut_just_before_a_crash_never_holds_the_queue(tmp_path):
    """The idle timeout of a stream with no audio is two commits (state 'cut', then the clip leaves the queue): a crash
    between them must not leave a clip that can never start at the head of the queue."""
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    empty = open_stream(reg)
    whole = spool.add(pcm(2, 4800), {}, "enqueue", None, 0.1, format="pcm_s16le", sample_rate=48000,
                      channels=2).segment_id
    spool.cancel = lambda sid: (_ for _ in ()).throw(SystemExit("killed"))  # the crash, right after the 'cut'
    clock.t = 6.0
    with pytest.raises(SystemExit):
        reg.sweep()
    spool.close()
    spool = Spool(tmp_path / "spool")
    reg2 = registry(spool, clock)
    st = settings()
    tl = Timeline(st.video, st.encoder, spool, None, streams=reg2, replannable=True)
    started = [m.segment_id for _ in range(4) for m in tl.next_chunk().marks if m.kind == "started"]
    assert started == [whole]
    assert spool.get(empty) is None


def test_an_append_whose_clip_left_the_queue_meanwhile_is_refused_with_a_code_not_internal(tmp_path):
    """A cancel / clear drops the clip in the spool before its `dropped` event reaches the registry: an append that
    runs in between is the producer's lost race, answered with a protocol code (not an AssertionError: internal)."""
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, 4800))
    assert spool.cancel(sid) == "pending"  # the event that tells the registry comes just after
    assert code_of(lambda: reg.append(sid, 1, pcm(1, 4800))) in ("unknown_stream", "stream_closed")


def test_an_append_that_waited_while_the_sweep_cut_its_stream_cuts_it_once(tmp_path):
    """An ingest worker has the stream, housekeeping cuts it first: the append gets stream_timed_out and the cut
    (its events, the count, the spool) happens once."""
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    cuts: list = []
    reg.on_cut = lambda s, had: cuts.append((s, had))
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, 4800))
    clock.t = 6.0
    get_open = reg._get_open

    def raced(segment_id):  # the worker got the stream, then the sweep ran before it took the stream's lock
        o = get_open(segment_id)
        assert reg.sweep() == [sid]
        return o

    reg._get_open = raced
    assert code_of(lambda: reg.append(sid, 1, pcm(1, 4800))) == "stream_timed_out"
    assert cuts == [(sid, True)]
    assert reg.status()["cut"] == 1


def test_a_close_that_waited_while_another_close_ended_the_stream_closes_it_once(tmp_path):
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, 4800))
    get_open = reg._get_open

    def raced(segment_id):  # a resent close: both workers got the stream before either closed it
        o = get_open(segment_id)
        reg._get_open = get_open
        reg.close(segment_id)
        return o

    reg._get_open = raced
    assert reg.close(sid)["duplicate"]  # the resend's answer: closed already
    assert reg.status()["closed"] == 1


def test_a_stream_closed_with_no_audio_leaves_nothing_behind(tmp_path):
    """empty_audio: the clip left the queue, and the registry keeps nothing of it (a producer repeating that mistake
    must not grow the daemon: each stream's buffers are ~0.5 MB)."""
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    sid = open_stream(reg)
    assert code_of(lambda: reg.close(sid)) == "empty_audio"
    assert spool.get(sid) is None
    assert reg.live(sid) is None
    assert code_of(lambda: reg.append(sid, 0, pcm(1, 10))) == "stream_closed"


def test_a_close_resent_after_a_lost_reply_is_answered_again_also_after_a_restart(tmp_path):
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, 4800))
    first = reg.close(sid)
    assert not first["duplicate"]
    assert reg.close(sid) == {**first, "duplicate": True}
    assert reg.status()["closed"] == 1
    assert code_of(lambda: reg.append(sid, 1, pcm(1, 4800))) == "stream_closed"  # an append is still refused
    spool.close()  # killed after the close committed, before its reply went out
    spool = Spool(tmp_path / "spool")
    reg2 = registry(spool, clock)
    assert reg2.close(sid) == {**first, "duplicate": True}


def test_a_closed_stream_aborted_afterwards_is_not_answered_closed_by_a_later_close(tmp_path):
    spool, clock = Spool(tmp_path / "spool"), Clock()
    reg = registry(spool, clock)
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, 4800))
    reg.close(sid)
    assert code_of(lambda: reg.abort(sid)) == "stream_closed"  # the server then cancels the clip
    assert code_of(lambda: reg.close(sid)) == "stream_closed"


def _mp3_stream(reg: StreamRegistry, data: bytes) -> str:
    sid = reg.open({}, "enqueue", None, format="mp3", sample_rate=None, channels=None, declared_s=None,
                   peer="test").entry.segment_id
    reg.append(sid, 0, data)
    return sid


@pytest.mark.parametrize("end", ["close", "sweep"])
def test_a_stream_end_whose_spool_write_failed_keeps_the_decoders_tail_for_the_retry(tmp_path, monkeypatch, end):
    """The decoder is flushed before the end is written; a failed write (a full disk) must leave the tail to flush
    again: a retried close (or the next sweep) airs as much audio as a close that never failed."""
    from support.audiogen import encode

    from flashtalk_live.queue.spool import SpoolError

    data = encode("mp3", seconds=1.0)
    clock = Clock()
    reference = registry(Spool(tmp_path / "a"), clock)
    sid = _mp3_stream(reference, data)
    reference.close(sid)
    whole = reference._live[sid].seconds

    spool = Spool(tmp_path / "b")
    reg = registry(spool, clock)
    sid = _mp3_stream(reg, data)
    real = spool.end_stream
    failures = [1]

    def end_stream(*args, **kwargs):
        if failures:
            failures.pop()
            raise SpoolError("disk_full", "the disk is full")
        return real(*args, **kwargs)

    monkeypatch.setattr(spool, "end_stream", end_stream)
    if end == "close":
        with pytest.raises(SpoolError):
            reg.close(sid)
        reg.close(sid)
    else:
        clock.t = 6.0
        assert reg.sweep() == []  # the failed cut is logged; the stream stays open
        assert reg.sweep() == [sid]
    assert reg._live[sid].seconds == pytest.approx(whole) and whole > 0.9
