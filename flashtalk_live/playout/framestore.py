"""The render-ahead buffer's storage: rendered chunks held compactly, in RAM up to a bound and on disk past it.

A rendered chunk's RGB frames are packed on the render thread into planar YUV 4:2:0 (BT.709, limited range, point
chroma siting: the very conversion `media/encoder.py` applies, so the encoder's own RGB->YUV of an unpacked frame
gives back the same planes), half the bytes of RGB. Frames that are n views of one still frame (strides[0] == 0)
are kept as they are: they cost nothing. Packed chunks stay in RAM up to `max_ram_bytes`; past it each chunk goes
to its own file in `spill_dir` (one write, read back and deleted when it is taken). The spill is an optimisation of
memory, never a condition of the air: a failed write (full disk, under the storage watermark, read-only folder)
keeps the chunk in RAM over the bound, counted, with one warning per episode.

`FrameStore` is the FIFO the `Lookahead` holds: `pack` (the costly part, outside the look-ahead's lock), `append`,
`popleft` (RGB again), and `clear`/`pop` for the paths that drop the buffered future; each releases its files.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from flashtalk_live.log import get_logger
from flashtalk_live.settings import RendererSettings, StorageSettings
from flashtalk_live.chunks import RenderedChunk

SPILL_SUFFIX = ".yuv"


class Yuv420:
    """RGB uint8 frames <-> planar YUV 4:2:0 planes, one reformatter per thread that uses it (libswscale state)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _fmt(self) -> VideoReformatter:
        r = getattr(self._local, "r", None)
        if r is None:
            r = self._local.r = VideoReformatter()
        return r

    @staticmethod
    def packable(shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and shape[3] == 3 and shape[1] % 2 == 0 and shape[2] % 2 == 0

    def to_yuv(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [n, H, W, 3] -> uint8 [n, H*3/2, W]: each frame's Y, U and V planes one after another."""
        n, h, w, _ = frames.shape
        out = np.empty((n, h * 3 // 2, w), np.uint8)
        r = self._fmt()
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            vf = r.reformat(vf, format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG,
                            interpolation=Interpolation.POINT, threads=1)
            out[i] = vf.to_ndarray()
        return out

    def to_rgb(self, planes: np.ndarray) -> np.ndarray:
        """The inverse of to_yuv: uint8 [n, H*3/2, W] -> uint8 [n, H, W, 3]."""
        n, h2, w = planes.shape
        h = h2 * 2 // 3
        out = np.empty((n, h, w, 3), np.uint8)
        r = self._fmt()
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(planes[i], format="yuv420p")
            vf = r.reformat(vf, format="rgb24", src_colorspace=Colorspace.ITU709, src_color_range=ColorRange.MPEG,
                            interpolation=Interpolation.POINT, threads=1)
            out[i] = vf.to_ndarray()
        return out


@dataclass(frozen=True)
class PackedFrames:
    """A chunk's frames as the store holds them. `shape` is the RGB shape they unpack to."""

    shape: tuple[int, int, int, int]
    kind: str  # "yuv420" (planes), "rgb" (kept as given: odd size, or packing off), "still" (views of one frame)
    data: np.ndarray | None  # in RAM; None once spilled
    path: Path | None = None  # the spill file
    nbytes: int = 0  # what it costs where it is (RAM or disk); 0 for a still


class FrameStore:
    """A FIFO of RenderedChunks whose frames are PackedFrames (see the module docstring).

    compact: pack to YUV 4:2:0 (False: keep RGB, e.g. tests that compare frames bit for bit).
    max_ram_bytes: packed bytes kept in RAM before chunks spill; None = no bound (never spill).
    spill_dir: where spilled chunks go; cleaned of spill files on construction and on close(). None = never spill.
    min_free_bytes: a spill that would leave less free space on the disk is not made (the storage watermark).
    """

    def __init__(self, *, compact: bool = True, max_ram_bytes: int | None = None,
                 spill_dir: str | os.PathLike[str] | None = None, min_free_bytes: int = 0) -> None:
        self.compact = compact
        self.max_ram_bytes = max_ram_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.min_free_bytes = min_free_bytes
        self._yuv = Yuv420()
        self._items: collections.deque[RenderedChunk] = collections.deque()
        self._lock = threading.Lock()  # the counters: pack/discard run outside the look-ahead's lock
        self._seq = 0
        self._log = get_logger("framestore")
        self.ram_bytes = 0
        self.disk_bytes = 0
        self.spilled_chunks = 0  # chunks written to disk, ever
        self.spilled_now = 0  # chunks on disk now
        self.spill_failures = 0  # chunks kept in RAM over the bound because the spill failed
        self.spill_error: str | None = None  # set while spills fail (one warning per episode)
        self.spill_files_cleaned = 0
        self.read_failures = 0  # spilled chunks that could not be read back: aired as a hold of the last frame
        self._last_frame: np.ndarray | None = None
        if self.spill_dir is not None:
            self._clean()

    @classmethod
    def from_settings(cls, renderer: RendererSettings, storage: StorageSettings) -> "FrameStore":
        """renderer: with {state_dir} expanded (Settings.expanded)."""
        return cls(compact=renderer.lookahead_compact, max_ram_bytes=renderer.lookahead_ram_bytes,
                   spill_dir=renderer.lookahead_spill_dir, min_free_bytes=storage.min_free_bytes)

    # -- packing ---------------------------------------------------------------------------------------------
    def pack(self, item: RenderedChunk, urgent: bool = False) -> RenderedChunk:
        """The chunk with its frames packed (and spilled past the RAM bound); already packed ones pass through.

        urgent: the air takes this chunk next (nothing waits before it), so it stays RGB where the RAM bound has room:
        packing saves memory only while a chunk waits, and its pack and unpack (28 frames at 448x768: 0.09 s warm,
        0.25 s for the room's first chunk on the 2-core CI VM) would delay its first frame."""
        frames = item.frames
        if isinstance(frames, PackedFrames) or (not self.compact and self.max_ram_bytes is None):
            return item  # a plain store (RAM, RGB, no bound) holds chunks as they are and counts no bytes
        shape = tuple(frames.shape)
        keep_rgb = urgent and (self.max_ram_bytes is None or self.ram_bytes + frames.nbytes <= self.max_ram_bytes)
        if frames.ndim == 4 and frames.shape[0] > 0 and frames.strides[0] == 0:
            packed = PackedFrames(shape, "still", frames)
        elif self.compact and Yuv420.packable(shape) and not keep_rgb:
            planes = self._yuv.to_yuv(frames)
            packed = self._place(PackedFrames(shape, "yuv420", planes, None, planes.nbytes))
        else:
            data = np.ascontiguousarray(frames)
            packed = self._place(PackedFrames(shape, "rgb", data, None, data.nbytes))
        if packed.path is None:
            with self._lock:
                self.ram_bytes += packed.nbytes
        # packed frames ride in the frames slot from here until the pacer unpacks them (Lookahead.take)
        return dataclasses.replace(item, frames=packed)  # type: ignore[arg-type]  # packed frames ride in the frames slot

    def _place(self, p: PackedFrames) -> PackedFrames:
        """Spill `p` when it does not fit the RAM bound and the disk takes it; else `p` as it is."""
        if self.max_ram_bytes is None or self.spill_dir is None or self.ram_bytes + p.nbytes <= self.max_ram_bytes:
            return p
        with self._lock:
            self._seq += 1
            path = self.spill_dir / f"chunk-{self._seq:09d}{SPILL_SUFFIX}"
        try:
            st = os.statvfs(self.spill_dir)
            free = st.f_bavail * st.f_frsize
            if free - p.nbytes < self.min_free_bytes:
                raise OSError(f"{free} bytes free: a chunk of {p.nbytes} bytes would cross the storage watermark "
                              f"({self.min_free_bytes} bytes)")
            assert p.data is not None
            with open(path, "xb", buffering=0) as f:
                view = p.data.data.cast("B")  # ndarray.data: the array's memoryview (contiguous: packed above)
                while view:  # one write() in practice; a short write continues where it stopped
                    view = view[f.write(view):]
        except OSError as e:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            with self._lock:
                self.spill_failures += 1
                first = self.spill_error is None
                self.spill_error = f"{type(e).__name__}: {e}"
            if first:
                self._log.warning("render_ahead_spill_failed", path=str(path), error=self.spill_error,
                                  ram_bytes=self.ram_bytes, note="chunks stay in RAM over the bound; the air goes on")
            return p
        with self._lock:
            self.disk_bytes += p.nbytes
            self.spilled_chunks += 1
            self.spilled_now += 1
            recovered, self.spill_error = self.spill_error, None
        if recovered is not None:
            self._log.info("render_ahead_spill_recovered", failures=self.spill_failures)
        return dataclasses.replace(p, data=None, path=path)

    def unpack(self, item: RenderedChunk) -> RenderedChunk:
        """The chunk with RGB frames again; a spilled chunk is read back and its file deleted."""
        p = item.frames
        if not isinstance(p, PackedFrames):
            return item
        try:
            data = self._read(p) if p.path is not None else p.data
        except OSError as e:
            # The chunk's sound still airs (a clip is delayed, never lost); its pictures hold the last frame.
            self.read_failures += 1
            self._log.error("render_ahead_spill_read_failed", path=str(p.path), error=repr(e))
            data = None
        finally:
            self._release(p)
        if data is None:
            last = self._last_frame if self._last_frame is not None else np.zeros(p.shape[1:], np.uint8)
            frames = np.broadcast_to(last, p.shape)
        else:
            frames = self._yuv.to_rgb(data) if p.kind == "yuv420" else data
        if frames.shape[0]:
            self._last_frame = frames[-1]
        return dataclasses.replace(item, frames=frames)

    def peek(self, item: RenderedChunk) -> np.ndarray | None:
        """RGB frames of a chunk still held (it stays held); None if its spill file cannot be read."""
        p = item.frames
        if not isinstance(p, PackedFrames):
            return p
        try:
            data = self._read(p) if p.path is not None else p.data
        except OSError:
            return None
        assert data is not None
        return self._yuv.to_rgb(data) if p.kind == "yuv420" else data

    @staticmethod
    def _read(p: PackedFrames) -> np.ndarray:
        assert p.path is not None
        shape = p.shape if p.kind == "rgb" else (p.shape[0], p.shape[1] * 3 // 2, p.shape[2])
        data = np.empty(shape, np.uint8)
        with open(p.path, "rb", buffering=0) as f:
            view = data.data.cast("B")  # ndarray.data: the array's memoryview
            while view:  # one read() in practice
                n = f.readinto(view)
                if not n:
                    raise OSError(f"spill file {p.path} is short")
                view = view[n:]
        return data

    def discard(self, item: RenderedChunk) -> None:
        """Forget a packed chunk that will never be taken (its file is deleted)."""
        if isinstance(item.frames, PackedFrames):
            self._release(item.frames)

    def _release(self, p: PackedFrames) -> None:
        with self._lock:
            if p.path is not None:
                self.disk_bytes -= p.nbytes
                self.spilled_now -= 1
            else:
                self.ram_bytes -= p.nbytes
        if p.path is not None:
            try:
                p.path.unlink(missing_ok=True)
            except OSError as e:
                self._log.warning("render_ahead_spill_unlink_failed", path=str(p.path), error=repr(e))

    # -- the FIFO (the Lookahead's lock guards these) -----------------------------------------------------------
    def append(self, item: RenderedChunk) -> None:
        self._items.append(self.pack(item))

    def popleft(self) -> RenderedChunk:
        """The oldest chunk, unpacked to RGB."""
        return self.unpack(self._items.popleft())

    def pop(self) -> RenderedChunk:
        """Drop the newest chunk (re-planning the future); returned packed, its frames released."""
        item = self._items.pop()
        self.discard(item)
        return item

    def trim_newest(self, n: int) -> None:
        """Keep only the newest chunk's first `n` frames (a re-plan within it). A spilled chunk reads back its file's
        first frames; bytes are counted as held until the chunk goes (the RAM of a view stays held as well)."""
        item = self._items[-1]
        p = item.frames
        frames: Any
        if isinstance(p, PackedFrames):
            frames = dataclasses.replace(p, shape=(n, *p.shape[1:]), data=None if p.data is None else p.data[:n])
        else:
            frames = p[:n]
        self._items[-1] = dataclasses.replace(item, chunk=item.chunk.head(n), frames=frames)

    def newest(self) -> RenderedChunk:
        """The newest chunk as held (packed): for its times, not its frames."""
        return self._items[-1]

    def clear(self) -> None:
        while self._items:
            self.pop()

    def restamp(self, fn: Callable[[RenderedChunk], RenderedChunk]) -> None:
        """Replace every held chunk by fn(chunk) (audio, marks: e.g. a cut); the packed frames stay as they are."""
        self._items = collections.deque(fn(it) for it in self._items)

    def __iter__(self) -> Iterator[RenderedChunk]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    # -- life cycle and status -----------------------------------------------------------------------------------
    def _clean(self) -> None:
        """Delete spill files left by an earlier run (or this one, on close)."""
        assert self.spill_dir is not None
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            for f in self.spill_dir.glob(f"*{SPILL_SUFFIX}"):
                f.unlink(missing_ok=True)
                self.spill_files_cleaned += 1
        except OSError as e:  # a spill dir we cannot use only means no spilling
            self._log.warning("render_ahead_spill_dir_unusable", path=str(self.spill_dir), error=repr(e))

    def close(self) -> None:
        """Drop everything held and delete the spill files (the daemon is stopping)."""
        self.clear()
        if self.spill_dir is not None:
            self._clean()

    def stats(self) -> dict[str, Any]:
        return {"ram_bytes": self.ram_bytes, "disk_bytes": self.disk_bytes,
                "spilled_chunks": self.spilled_now, "spilled_chunks_total": self.spilled_chunks,
                "spill_failures_total": self.spill_failures, "spill_error": self.spill_error,
                "spill_read_failures_total": self.read_failures,
                "max_ram_bytes": self.max_ram_bytes, "compact": self.compact}
