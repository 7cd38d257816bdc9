"""Render ahead through the disk (issue 10, item 2): a RAM bound of one chunk, so the buffered future is spilled.

The real daemon in-process, a renderer double that draws moving frames labelled with their timeline frame (so they
are packed to YUV 4:2:0, not held as a still view), slowed by the operator drill so the render-ahead buffer grows to
seconds, and `renderer.lookahead_ram_bytes` of one chunk: nearly every chunk goes to a spill file and back. Read
back from the recording: every clip's tone in order from its announced start, and inside each clip the frames'
labels step by one (nothing repeated, dropped or reordered on the way through the disk). No timing in the checks.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from flashtalk_live.daemon import Daemon
from flashtalk_live.playout.framestore import SPILL_SUFFIX
from flashtalk_live.images import default_portrait, fit_image
from flashtalk_live.chunks import RenderChunk

from support.air import band_power, decode_audio_mono
from support.render_ahead import CHUNK, FPS, clip_marks, push_clips, settings
from support.rtmp_harness import read_media


SIZE, BITS = 64, 8
CHUNK_YUV = CHUNK * SIZE * SIZE * 3 // 2


class LabelRenderer:
    """The portrait sliding one pixel a frame, under a top band of 8 black/white blocks: the frame index mod 256."""

    name = "label"

    def __init__(self) -> None:
        self.base = fit_image(default_portrait(), SIZE + 64, SIZE, "cover")

    def start_session(self, reference_image, prompt):
        pass

    def ready(self):
        return True

    def render(self, chunk: RenderChunk) -> np.ndarray:
        out = np.empty((chunk.n_frames, SIZE, SIZE, 3), np.uint8)
        for j in range(chunk.n_frames):
            k = chunk.start_frame + j
            out[j] = self.base[:, k % 64: k % 64 + SIZE]
            for b in range(BITS):
                out[j, :8, b * 8:(b + 1) * 8] = 235 if (k >> b) & 1 else 16
        return out

    def close(self):
        pass


def label(frame: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if frame[2:6, b * 8 + 2: b * 8 + 6].mean() > 128)


def decode_video(path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(c.streams.video[0])]


@pytest.mark.timeout(240)
def test_clips_air_in_order_through_spill_files_with_no_underrun(tmp_path):
    clip_s, period_s, n_clips = 3.0, 7.5, 4  # 40% duty cycle, about 30 s of air
    s = settings(tmp_path, "renderer.drill_slowdown=1.5", f"renderer.lookahead_ram_bytes={CHUNK_YUV}")
    d = Daemon(s, renderer_factory=lambda _s: LabelRenderer())
    spill_dir = tmp_path / "state" / "render-ahead"
    most_on_disk = [0]

    def on_event(e: dict) -> None:
        most_on_disk[0] = max(most_on_disk[0], d.playout.lookahead.store.disk_bytes)

    freqs = [400.0 + 150.0 * i for i in range(n_clips)]
    events, ids, st = push_clips(d, tmp_path, freqs, clip_s, period_s, on_event, renderer="label")

    b, ra = st["broadcast"], st["render_ahead"]
    print(f"\nspilled {ra['spilled_chunks_total']} chunks, most on disk {most_on_disk[0]} B, RAM now "
          f"{ra['ram_bytes']} B, render rate {ra['render_rate']}, underrun frames clip={b['underrun_frames_clip']}")
    assert ra["spilled_chunks_total"] >= 10 and ra["spill_failures_total"] == 0 and ra["spill_read_failures_total"] == 0
    assert most_on_disk[0] >= 2 * CHUNK_YUV  # the buffered future really lived on disk
    assert not list(spill_dir.glob(f"*{SPILL_SUFFIX}"))  # emptied at stop
    assert b["underrun_frames_clip"] == 0
    started, finished = clip_marks(events, "started"), clip_marks(events, "finished")
    assert [sid for sid, _ in started] == ids and [sid for sid, _ in finished] == ids

    rec = tmp_path / "rec.flv"
    assert not read_media(rec).errors
    x, first_pts, rate = decode_audio_mono(rec)
    win = rate // FPS
    p0 = band_power(x, rate, freqs[0], win)
    origin = first_pts + np.flatnonzero(p0 > 0.25 * p0.max())[0] * win / rate - started[0][1] / FPS
    video = decode_video(rec)
    for (sid, f0), (_, f1), f in zip(started, finished, freqs):
        a = int((f0 / FPS + origin - first_pts + 0.1) * rate)
        seg = x[a: a + int((clip_s - 0.2) * rate)]
        assert abs(np.argmax(np.abs(np.fft.rfft(seg))) * rate / len(seg) - f) < 5, sid
        p = band_power(seg, rate, f, win)
        assert p.min() > 0.2 * np.median(p), (sid, "the tone has a gap: the clip stalled on air")
        # The clip's pictures, as aired: labels step by one frame at a time.
        t0, t1 = f0 / FPS + origin + 0.1, f1 / FPS + origin - 0.1
        labels = [label(fr) for t, fr in video if t0 <= t <= t1]
        assert len(labels) >= (clip_s - 0.4) * FPS - 1, sid
        assert all((b2 - b1) % 256 == 1 for b1, b2 in zip(labels, labels[1:])), (sid, labels)
