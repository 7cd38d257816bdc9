"""The idle bank in the daemon with the tiny FlashTalk release: once built, idle airs from it and the model is not
called while idle; a clip after idle is rendered live and idle resumes from the bank through a nearest-pick join;
a restart on the same state directory loads the bank from disk instead of rendering it, and FlashTalk is on duty
once that bank's idle airs (no render call needed)."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from flashtalk_live.checkpoints.fake import write_fake_release
from flashtalk_live.client import Client
from flashtalk_live.daemon import Daemon
from flashtalk_live.playout.idlebank import frame_distance, thumb

from support.audio import wav_bytes
from support.settings import room_settings as settings
from support.waiting import until

TINY_PROFILE = 'base = "quality"\nheight = 32\nwidth = 32\nframe_num = 29\nmotion_frames = 1\n'
BANK = 3


def tiny_settings(tmp_path):
    rel = write_fake_release(tmp_path / "models")
    (tmp_path / "tiny.toml").write_text(TINY_PROFILE)
    return settings(tmp_path, 'renderer.kind="flashtalk"', f'model.weights_dir="{rel.weights_dir}"',
                    f'model.wav2vec_dir="{rel.wav2vec_dir}"', f'model.profile="{tmp_path / "tiny.toml"}"',
                    'model.device="cpu"', 'model.dtype="float32"', "video.chunk_frames=28", "video.width=48",
                    "video.height=80", "renderer.lookahead_chunks=3", f"renderer.idle_bank_chunks={BANK}",
                    # a busy 2-core box must not make a slow chunk count as a hung engine
                    "renderer.deadline_factor=20")


def calls(d: Daemon) -> int:
    return len(d.renderers.preferred.render_seconds)  # one entry per render() call


def bank(d: Daemon) -> dict:
    return d.status()["render_ahead"]["idle_bank"]


@pytest.mark.timeout(600)
@pytest.mark.alone  # the tiny model on the CPU: no other test of a `pytest -n` run beside it
def test_idle_airs_from_the_bank_and_a_clip_joins_it(tmp_path):
    s = tiny_settings(tmp_path)
    d = Daemon(s)
    events: list[dict] = []
    d.events.subscribe(events.append)
    d.start()
    try:
        until(lambda: bank(d)["state"] == "ready", 300, "the bank to be built")
        st = bank(d)
        assert st["from_render"] == BANK and st["from_disk"] == 0 and st["renderer"] == "flashtalk"
        # Idle from the bank: the model draws nothing while several more idle chunks air.
        before, served = calls(d), bank(d)["served_chunks"]
        until(lambda: bank(d)["served_chunks"] >= served + BANK + 1, 120, "idle chunks served from the bank")
        assert calls(d) == before

        with Client(f"ipc://{tmp_path / 'state'}/control.sock") as c:
            seg = c.enqueue(wav_bytes(1.5, 440.0), format="wav")["segment_id"]
        until(lambda: any(e["type"] == "finished" and e.get("segment_id") == seg for e in events), 300,
              "the clip to finish")
        after_clip = calls(d)
        assert after_clip > before  # the clip itself was rendered live (conditioned on the aired bank frames)
        until(lambda: bank(d)["served_chunks"] > served + BANK + 3, 120, "idle from the bank after the clip")
        join = bank(d)["last_join"]
        assert join is not None and join["crossfade_frames"] == s.renderer.idle_bank_crossfade_frames
        assert calls(d) == after_clip  # idle after the clip costs no render call either
        # The join, measured on thumbs as the pick does: the step from the clip's last frame into the nearest bank
        # chunk (before the blend spreads it over crossfade_frames + 1 steps) vs the bank's own frame-to-frame step.
        chunks = list(d.playout.render_ahead.bank.chunks.values())
        typical = float(np.mean([frame_distance(thumb(a), thumb(b)) for c in chunks
                                 for a, b in zip(c.frames, c.frames[1:])]))
        chain = [frame_distance(thumb(a.frames[-1]), thumb(b.frames[0])) for a, b in zip(chunks, chunks[1:])]
        blended = join["distance"] / (join["crossfade_frames"] + 1)
        print(f"\nidle bank join (tiny random model, thumbs): clip->bank distance {join['distance']}, per blended "
              f"step {blended:.2f}; bank frame-to-frame {typical:.2f}; chain links {np.round(chain, 2).tolist()}")
        assert max(chain) < 3 * typical  # chunk k+1 continues chunk k: its links look like any other frame step
        body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=10).read().decode()
        assert f"flashtalk_idle_bank_chunks {float(BANK)}" in body and "flashtalk_idle_bank_served_chunks_total" in body
        status = d.status()
        assert status["renderer"]["active"] == "flashtalk" and status["renderer"]["failures"] == 0
        assert status["render_ahead"]["idle_replayed_chunks"] == 0  # the stopgap loop was never needed
    finally:
        d.close()

    # A restart on the same state directory: the bank comes from disk, not from the model.
    d2 = Daemon(s)
    events2: list[dict] = []
    d2.events.subscribe(events2.append)
    d2.start()
    try:
        until(lambda: bank(d2)["state"] == "ready", 300, "the bank to load from disk")
        until(lambda: bank(d2)["served_chunks"] >= 1, 120, "idle served from the bank loaded from disk")
        st = bank(d2)
        assert st["from_disk"] == BANK and st["from_render"] == 0 and st["rendered_chunks"] == 0
        # FlashTalk's pictures go out without one render call: FlashTalk is the renderer on duty, and says so
        # (status, the event; a room shown on the still fallback while the model's idle airs would page someone).
        assert d2.status()["renderer"]["active"] == "flashtalk"
        until(lambda: any(e["type"] == "renderer_changed" and e["renderer"] == "flashtalk" and e["previous"] == "still"
                          for e in events2), 60, "FlashTalk's first bank frame on air")
        r = d2.status()["renderer"]
        assert r["on_air"] == "flashtalk" and not r["on_fallback"], r
    finally:
        d2.close()
    files = sorted((tmp_path / "state" / "idlebank").rglob("*.npz"))
    assert len(files) == BANK and np.all([f.stat().st_size > 28 * 48 * 80 * 3 for f in files])
