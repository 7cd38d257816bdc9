"""Issue 5 end to end: the daemon process with a tiny FlashTalk model, loaded from a tiny checkpoint folder in the
released layout, streams the model's frames with the clips' audio to nginx-rtmp."""

from __future__ import annotations

import av
import numpy as np
import pytest

from flashtalk_live.checkpoints.fake import write_fake_release

from support.audiogen import encode
from support.daemon_harness import NEW_FRAMES, TINY_PROFILE, wait_for
from support.rtmp_harness import max_gap, read_media

# Small enough to run faster than real time on two CPU cores next to the encoder: 28 new frames per chunk
# (the production chunk length) at 32x32, one motion frame.


@pytest.mark.rtmp
@pytest.mark.timeout(300)
@pytest.mark.alone  # the tiny model on the CPU: no other test of a `pytest -n` run beside it
def test_daemon_streams_the_tiny_flashtalk_model(tmp_path, daemon_factory, nginx_rtmp):
    rel = write_fake_release(tmp_path / "models")
    (tmp_path / "tiny.toml").write_text(TINY_PROFILE)
    srv = nginx_rtmp()
    d = daemon_factory(outputs=[{"name": "live", "url": srv.url("avatar")}], extra=[
        'renderer.kind="flashtalk"', f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"',
        f'model.profile="{tmp_path / "tiny.toml"}"', 'model.device="cpu"', 'model.dtype="float32"',
        f"video.chunk_frames={NEW_FRAMES}", "video.width=48", "video.height=80", "renderer.lookahead_chunks=4",
        # CI's two cores are shared with other jobs: a slow chunk must not count as a hung engine here.
        "renderer.deadline_factor=20",
    ]).start()
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        # on air at once with the still renderer; the engine loads, warms up, then takes over
        st0 = c.status()
        assert st0["renderer"]["active"] == "still"
        wait_for(ev, lambda e: e["type"] == "renderer_changed" and e.get("renderer") == "flashtalk", 120, seen)
        under_at_switch = c.status()["broadcast"]["underrun_frames"]
        ids = [c.enqueue(encode(fmt, seconds=1.2, freq=f))["segment_id"]
               for fmt, f in (("wav_s16", 440.0), ("mp3", 880.0), ("flac", 1320.0))]
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == ids[-1], 120, seen)
        st = c.status()
    assert d.stop() == 0
    # The engine starts loading only once the still renderer's first frame is out: its imports and build do not
    # hold back the room's first frame.
    events = [x.get("event") for x in d.log_lines()]
    assert "renderer_loading" in events and events.index("on_air") < events.index("renderer_loading")

    order = [(e["type"], e["segment_id"]) for e in seen if e.get("segment_id") in ids and e["type"] in ("started", "finished")]
    assert order == [(k, i) for i in ids for k in ("started", "finished")]
    r = st["renderer"]
    assert r["active"] == "flashtalk" and r["failures"] == 0, r  # every chunk had exactly its frame count
    if r["render_rtf"] < 0.8:  # an engine that keeps up with a margin never underruns (a loaded CI box may not)
        assert st["broadcast"]["underrun_frames"] == under_at_switch, st["broadcast"]
    print(f"\ntiny engine on the CPU: render real-time factor {r['render_rtf']}, drift {r['drift']}")

    rec = srv.recordings("avatar")
    assert len(rec) == 1
    info = read_media(rec[0], decode=True)
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 48, 80)
    assert max_gap(info.video_pts) <= 0.041 and abs(info.audio_end - info.video_end) < 0.04
    # The model's frames move (random tiny weights: every frame differs); the still renderer's never do.
    with av.open(str(rec[0])) as cont:
        frames = [f.to_ndarray(format="rgb24").astype(np.int16) for f in cont.decode(video=0)]
    tail = frames[-3 * NEW_FRAMES:]
    diffs = [np.abs(a - b).mean() for a, b in zip(tail, tail[1:])]
    moving = sum(d > 0.5 for d in diffs)
    if r["render_rtf"] < 0.8:
        assert moving == len(diffs), diffs
    else:  # an engine slower than real time on a loaded box: an underrun repeats a frame now and then
        assert moving >= 0.8 * len(diffs), diffs
    head = frames[:3]
    assert max(np.abs(a - b).mean() for a, b in zip(head, head[1:])) < 0.5  # the still portrait at start-up
