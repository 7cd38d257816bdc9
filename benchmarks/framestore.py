"""What holding render-ahead chunks compactly costs (playout/framestore.py), per chunk of moving portrait frames on one
CPU core: RGB->YUV 4:2:0 on the render thread, YUV->RGB on the broadcast thread, bytes RGB vs YUV, and the spill
file's write and read (the page cache makes the read cheap; --dir on the real state disk, and --sync to time the
write through to it). Prints a table; CPU only, no GPU.

    OMP_NUM_THREADS=1 python benchmarks/framestore.py [--sizes 640x384 448x768 1280x720] [--frames 28] [--reps 5]
        [--dir /var/lib/flashtalk-live/render-ahead-bench] [--sync]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from flashtalk_live.playout.framestore import FrameStore, Yuv420
from flashtalk_live.images import default_portrait, fit_image
from flashtalk_live.chunks import RenderChunk, RenderedChunk


def chunk(w: int, h: int, n: int) -> RenderedChunk:
    base = fit_image(default_portrait(), w + n, h, "cover")
    frames = np.stack([base[:, j: j + w] for j in range(n)])
    c = RenderChunk(0, 0, n, np.zeros((n * 1920, 2), np.float32), np.zeros(n * 640, np.float32), [None] * n)
    return RenderedChunk(c, frames, "bench", 0.0)


def ms(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["640x384", "448x768", "1280x720"])
    ap.add_argument("--frames", type=int, default=28)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", default=None, help="spill folder (default: a temporary one)")
    ap.add_argument("--sync", action="store_true", help="fsync each spill write (time the disk, not the page cache)")
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    spill = a.dir or tempfile.mkdtemp(prefix="framestore-bench-")
    yuv = Yuv420()
    print(f"{a.frames} frames a chunk, best of {a.reps}; spill folder {spill}{' (fsync)' if a.sync else ''}")
    print(f"{'size':>10} {'RGB MB':>8} {'YUV MB':>8} {'pack ms':>8} {'unpack ms':>9} {'write ms':>9} {'read ms':>8} "
          f"{'pack ms/frame':>14} {'unpack ms/frame':>16}")
    try:
        for size in a.sizes:
            w, h = (int(v) for v in size.split("x"))
            item = chunk(w, h, a.frames)
            planes = yuv.to_yuv(item.frames)
            t_pack = ms(lambda: yuv.to_yuv(item.frames), a.reps)
            t_unpack = ms(lambda: yuv.to_rgb(planes), a.reps)
            # The store's own spill path: pack into the spill folder (convert + write), then take (read + convert).
            store = FrameStore(max_ram_bytes=0, spill_dir=spill)
            writes, reads = [], []
            for _ in range(a.reps):
                t = time.perf_counter()
                packed = store.pack(item)
                if a.sync and packed.frames.path is not None:
                    fd = os.open(packed.frames.path, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                writes.append(time.perf_counter() - t)
                t = time.perf_counter()
                store.unpack(packed)
                reads.append(time.perf_counter() - t)
            assert store.spilled_chunks == a.reps and store.spill_failures == 0, store.stats()
            t_write, t_read = min(writes) * 1000 - t_pack, min(reads) * 1000 - t_unpack
            print(f"{size:>10} {item.frames.nbytes / 1e6:8.2f} {planes.nbytes / 1e6:8.2f} {t_pack:8.1f} "
                  f"{t_unpack:9.1f} {max(t_write, 0):9.1f} {max(t_read, 0):8.1f} {t_pack / a.frames:14.2f} "
                  f"{t_unpack / a.frames:16.2f}")
            store.close()
    finally:
        if a.dir is None:
            shutil.rmtree(spill, ignore_errors=True)
    print("write/read ms: the store's spill path less the conversion timed alone (best of each)")


if __name__ == "__main__":
    main()
