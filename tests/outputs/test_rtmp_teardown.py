"""RTMP output teardown against the broadcast thread, with no server: a child that never reads its pipe."""

from __future__ import annotations

import select
import sys
from pathlib import Path

import pytest

from flashtalk_live.outputs import rtmp
from flashtalk_live.settings import OutputPolicy, OutputSettings

from support.outputs_driver import make_encoder


@pytest.mark.timeout(30)
def test_removing_an_up_connection_never_waits_on_its_pipe_holding_the_send_lock(tmp_path: Path, monkeypatch) -> None:
    """remove()/close() of a connection that is up gives its child `timeout` to take the buffered FLV. The broadcast
    thread's RtmpOutput.send() reads `self.conn`, checks `dead` and then takes the connection's lock, so a send()
    that read the connection just before remove() took it waits for that lock: finish() must not hold it while it
    waits for a child that does not read (it did, for the whole timeout: a stall of every output and the encoder)."""
    mute = tmp_path / "mute_child.py"
    mute.write_text("import time\ntime.sleep(60)\n")  # alive, never reads stdin: the pipe fills
    monkeypatch.setattr(rtmp, "CHILD", str(mute))
    enc = make_encoder()
    out = rtmp.RtmpOutput(OutputSettings(name="up", url="rtmp://127.0.0.1:9/app/KEY"), OutputPolicy(),
                          enc.video_stream, enc.audio_stream, lambda: None, lambda *a, **k: None)
    conn = rtmp.ChildConnection(out)
    try:
        conn.phase = "up"
        for _ in range(64):  # 4 MiB of muxed FLV waiting for the pipe (1 MiB at most)
            conn.sink.chunks.append(memoryview(b"\0" * (64 << 10)))
        held_while_waiting: list[bool] = []
        real_select = select.select

        def watching_select(r, w, x, timeout=None):
            held_while_waiting.append(conn.lock.locked())
            return real_select(r, w, x, timeout)

        monkeypatch.setattr(rtmp.select, "select", watching_select)
        out.conn = conn
        out.close(0.3)
        assert held_while_waiting, "finish() never waited for the pipe"
        assert not any(held_while_waiting), "finish() waited for the child holding the lock send() takes"
        assert conn.proc.poll() is not None and conn.dead
    finally:
        conn.kill()
