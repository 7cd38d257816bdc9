"""The render-ahead frame store: YUV 4:2:0 round trip, spill to disk past the RAM bound, failures that keep the air.

Real files, a real full tmpfs (ENOSPC from the kernel) where the machine lets us mount one, the real Lookahead and
Pacer on top."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from structlog.testing import capture_logs
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from flashtalk_live.playout.framestore import SPILL_SUFFIX, FrameStore, PackedFrames, Yuv420
from flashtalk_live.playout.pacing import Lookahead, Pacer
from flashtalk_live.images import default_portrait, fit_image
from flashtalk_live.chunks import Mark, RenderChunk, RenderedChunk

from support.box_faults import fill

W, H, NF, SPF = 64, 48, 6, 640
CHUNK_YUV = NF * W * H * 3 // 2


def portrait(w: int = 640, h: int = 384) -> np.ndarray:
    return fit_image(default_portrait(), w, h, "cover")


def moving_frames(i: int, nf: int = NF, w: int = W, h: int = H) -> np.ndarray:
    """Chunk i's frames: the portrait, shifted one pixel a frame (every frame differs)."""
    base = portrait(w + 64, h)
    return np.stack([base[:, (i * nf + j) % 64:(i * nf + j) % 64 + w] for j in range(nf)])


def rendered(i: int, frames: np.ndarray | None = None, segs: list | None = None) -> RenderedChunk:
    frames = moving_frames(i) if frames is None else frames
    n = frames.shape[0]
    audio = np.full((n * SPF, 1), float(i + 1), np.float32)
    chunk = RenderChunk(i, i * n, n, audio, np.zeros(n * 640, np.float32), segs or [None] * n)
    return RenderedChunk(chunk, frames, "test", 0.0)


def spill_files(d: Path) -> list[Path]:
    return sorted(d.glob(f"*{SPILL_SUFFIX}"))


# -- the conversion ----------------------------------------------------------------------------------------------

def test_yuv420_round_trip_of_the_portrait_is_close():
    f = portrait()[None]
    planes = Yuv420().to_yuv(f)
    assert planes.shape == (1, 384 * 3 // 2, 640) and planes.nbytes * 2 == f.nbytes
    back = Yuv420().to_rgb(planes)
    err = np.abs(back.astype(int) - f)
    # Quantisation (limited range) is +-1 or 2; chroma at half resolution costs more only on sharp colour edges.
    assert err.mean() < 2.0 and np.percentile(err, 99) <= 10, (err.mean(), np.percentile(err, 99))
    assert 100 * np.mean(err.max(axis=-1) > 12) < 0.5  # under 0.5% of pixels off by more than 12


def test_yuv420_round_trip_of_random_colour_blocks_is_exact_to_quantisation():
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, (4, 384 // 8, 640 // 8, 3), dtype=np.uint8).repeat(8, 1).repeat(8, 2)
    back = Yuv420().to_rgb(Yuv420().to_yuv(blocks))
    # Blocks aligned to the 2x2 chroma grid: only the 8-bit limited-range quantisation remains.
    assert np.abs(back.astype(int) - blocks).max() <= 3


def test_packed_planes_are_what_the_encoder_makes_of_the_unpacked_frame():
    """The encoder converts RGB -> yuv420p the same way, so a stored frame reaches H.264 as stored, not degraded twice."""
    yuv = Yuv420()
    planes = yuv.to_yuv(portrait()[None])
    rgb = yuv.to_rgb(planes)[0]
    vf = VideoReformatter().reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="yuv420p",
                                     dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG,
                                     interpolation=Interpolation.POINT)
    d = np.abs(vf.to_ndarray().astype(int) - planes[0])
    # Chroma comes back as stored (no second loss of resolution); luma only picks up 8-bit RGB rounding.
    assert d[384:].max() <= 1 and d[:384].max() <= 4 and d[:384].mean() < 1.5


# -- the store ----------------------------------------------------------------------------------------------------

def test_still_views_are_held_as_they_are_and_cost_nothing(tmp_path):
    still = np.broadcast_to(portrait(W, H), (NF, H, W, 3))
    st = FrameStore(max_ram_bytes=0, spill_dir=tmp_path)
    st.append(rendered(0, still))
    assert st.ram_bytes == 0 and st.disk_bytes == 0 and not spill_files(tmp_path)
    out = st.popleft().frames
    assert out.strides[0] == 0 and np.shares_memory(out, still)


def test_chunks_spill_past_the_ram_bound_and_read_back_identical_to_ram(tmp_path):
    spill = tmp_path / "spill"
    ram, disk = FrameStore(), FrameStore(max_ram_bytes=2 * CHUNK_YUV, spill_dir=spill)
    for i in range(5):
        ram.append(rendered(i))
        disk.append(rendered(i))
    assert isinstance(next(iter(disk)).frames, PackedFrames)
    assert (disk.ram_bytes, disk.disk_bytes, disk.spilled_chunks) == (2 * CHUNK_YUV, 3 * CHUNK_YUV, 3)
    files = spill_files(spill)
    assert len(files) == 3 and all(f.stat().st_size == CHUNK_YUV for f in files)
    assert disk.stats()["spilled_chunks"] == 3 and ram.disk_bytes == 0
    for i in range(5):
        a, b = ram.popleft(), disk.popleft()
        assert b.frames.shape == (NF, H, W, 3) and b.frames.dtype == np.uint8
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.chunk.audio, b.chunk.audio)
        assert np.abs(b.frames.astype(int) - moving_frames(i)).mean() < 3
    assert (disk.ram_bytes, disk.disk_bytes) == (0, 0) and not spill_files(spill)  # read back, then deleted


def test_spill_dir_is_cleaned_at_start_on_discard_and_at_stop(tmp_path):
    (tmp_path / f"chunk-000000001{SPILL_SUFFIX}").write_bytes(b"from a crashed run")
    (tmp_path / "keep.txt").write_text("not ours")
    st = FrameStore(max_ram_bytes=0, spill_dir=tmp_path)
    assert spill_files(tmp_path) == [] and (tmp_path / "keep.txt").exists() and st.spill_files_cleaned == 1
    for i in range(4):
        st.append(rendered(i))
    assert len(spill_files(tmp_path)) == 4
    st.pop()  # the newest, dropped by a re-plan
    assert len(spill_files(tmp_path)) == 3 and len(st) == 3
    st.close()
    assert spill_files(tmp_path) == [] and len(st) == 0 and st.disk_bytes == 0


def test_a_spill_dir_that_cannot_be_written_keeps_chunks_in_ram_and_warns_once(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spill folder should be")
    with capture_logs() as logs:  # not stdout: where logs go depends on what earlier tests configured
        st = FrameStore(max_ram_bytes=CHUNK_YUV, spill_dir=blocker)
        for i in range(4):
            st.append(rendered(i))
    assert st.spilled_chunks == 0 and st.spill_failures == 3 and st.spill_error is not None
    assert st.ram_bytes == 4 * CHUNK_YUV  # over the bound: the air comes first
    assert [e["event"] for e in logs].count("render_ahead_spill_failed") == 1
    for i in range(4):
        assert np.abs(st.popleft().frames.astype(int) - moving_frames(i)).mean() < 3


def test_the_storage_watermark_stops_spilling(tmp_path):
    st = FrameStore(max_ram_bytes=0, spill_dir=tmp_path, min_free_bytes=1 << 62)
    st.append(rendered(0))
    assert st.spill_failures == 1 and "watermark" in st.spill_error and not spill_files(tmp_path)


def test_a_full_disk_keeps_the_air_going_and_spilling_resumes_when_space_returns(tmp_path, tmpfs):
    fs = tmpfs(tmp_path / "fs", "1m")
    ballast = fill(fs)
    la = Lookahead(8, SPF, store=FrameStore(max_ram_bytes=CHUNK_YUV, spill_dir=fs / "spill"))
    for i in range(3):
        assert la.put(rendered(i, segs=["clip"] * NF))
    st = la.store
    assert st.spill_failures == 2 and st.spilled_chunks == 0 and "free" in st.spill_error
    sim = [0.0]
    pacer = Pacer(la, 25, SPF, 1, clock=lambda: sim[0], sleep=lambda dt: sim.__setitem__(0, sim[0] + dt))
    aired = [next(pacer) for _ in range(NF)]  # chunk 0 on air; two chunks still in RAM over the bound
    ballast.unlink()
    assert la.put(rendered(3))
    assert st.spilled_chunks == 1 and st.spill_error is None and len(spill_files(fs / "spill")) == 1
    aired += [next(pacer) for _ in range(3 * NF)]
    assert not any(p.underrun for p in aired)
    assert [float(p.audio[0, 0]) for p in aired[::NF]] == [1.0, 2.0, 3.0, 4.0]  # every chunk, in order
    assert np.abs(aired[-1].frame.astype(int) - moving_frames(3)[-1]).mean() < 3


def test_a_chunk_the_air_takes_next_stays_rgb_and_one_that_waits_is_packed(tmp_path):
    """Nothing queued before it: its pack and unpack would only delay its first frame (the room's first chunk)."""
    la = Lookahead(8, SPF, store=FrameStore(spill_dir=tmp_path))
    first, second = moving_frames(0), moving_frames(1)
    assert la.put(rendered(0, first)) and la.put(rendered(1, second))
    kinds = [item.frames.kind for item in la.store]
    assert kinds == ["rgb", "yuv420"] and la.store.ram_bytes == first.nbytes + CHUNK_YUV
    sim = [0.0]
    pacer = Pacer(la, 25, SPF, 1, clock=lambda: sim[0], sleep=lambda dt: sim.__setitem__(0, sim[0] + dt))
    aired = [next(pacer).frame for _ in range(2 * NF)]
    assert all(np.array_equal(a, f) for a, f in zip(aired[:NF], first))  # as rendered, not round-tripped
    assert np.abs(np.stack(aired[NF:]).astype(int) - second).mean() < 3


def test_a_chunk_the_air_takes_next_is_packed_where_its_rgb_would_cross_the_ram_bound(tmp_path):
    la = Lookahead(8, SPF, store=FrameStore(max_ram_bytes=CHUNK_YUV, spill_dir=tmp_path))
    assert la.put(rendered(0))
    assert [item.frames.kind for item in la.store] == ["yuv420"] and not spill_files(tmp_path)


def test_a_lost_spill_file_airs_its_sound_over_the_last_frame(tmp_path):
    st = FrameStore(max_ram_bytes=CHUNK_YUV, spill_dir=tmp_path)
    st.append(rendered(0))
    st.append(rendered(1))
    spill_files(tmp_path)[0].unlink()  # someone cleaned the folder under us
    first = st.popleft()
    second = st.popleft()
    assert st.read_failures == 1 and st.disk_bytes == 0
    assert float(second.chunk.audio[0, 0]) == 2.0 and second.frames.shape == (NF, H, W, 3)
    assert np.array_equal(second.frames[0], first.frames[-1])


def test_cut_scrubs_spilled_chunks_and_keeps_their_frames(tmp_path):
    la = Lookahead(8, SPF, store=FrameStore(max_ram_bytes=0, spill_dir=tmp_path))
    for i in range(3):
        item = rendered(i, segs=["a"] * NF)
        item.chunk.marks = [Mark(i * NF, "started", "a")] if i == 0 else []
        la.put(item)
    assert len(spill_files(tmp_path)) == 3
    la.cut("a")
    out = [la.get_nowait() for _ in range(3)]
    assert all(not o.chunk.audio.any() and o.chunk.idle for o in out)  # silenced, now idle
    assert out[0].chunk.marks == [Mark(0, "interrupted", "a", "queue")]
    assert np.abs(out[2].frames.astype(int) - moving_frames(2)).mean() < 3
    assert not spill_files(tmp_path)


def test_the_store_status_reaches_the_metrics_page(tmp_path):
    from prometheus_client import generate_latest

    from flashtalk_live.metrics import metrics_registry

    st = FrameStore(max_ram_bytes=CHUNK_YUV, spill_dir=tmp_path)
    for i in range(3):
        st.append(rendered(i))
    page = generate_latest(metrics_registry(lambda: {"render_ahead": {"buffered_s": 0.72, **st.stats()}})).decode()
    assert "flashtalk_render_ahead_seconds 0.72" in page
    assert f'flashtalk_render_ahead_bytes{{where="ram"}} {float(CHUNK_YUV)}' in page
    assert f'flashtalk_render_ahead_bytes{{where="disk"}} {float(2 * CHUNK_YUV)}' in page
    assert "flashtalk_render_ahead_spilled_chunks_total 2.0" in page
    assert "flashtalk_render_ahead_spill_failures_total 0.0" in page
    st.close()
