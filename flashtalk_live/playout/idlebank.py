"""The idle bank: model-rendered silent chunks of the current avatar, cached on disk, looped on air while idle.

The bank is one chain of chunks rendered by the preferred renderer with silent audio, chunk k conditioned on the
frames of chunk k-1 (RenderChunk.motion_frames), so playing k then k+1 is as continuous as live rendering. Chunks
come from disk (keyed by a hash of the avatar image bytes, the prompt, the renderer/model/video configuration and
the renderer's own identity: profile and weights), else they are rendered: at warm-up and in spare render time by
RenderAhead, or while idle is on air (the next link of the chain is rendered and aired, so building costs what live
idle cost before). Once built, idle costs no render call. Joins: after the chain's last chunk, or after anything that
is not a bank chunk (a clip), the chunk whose first frame is nearest to the last aired frame (mean absolute pixel
difference on a downscaled frame) airs next, its first `crossfade_frames` dissolved from that last frame.

Disk: {state_dir}/idlebank/<key>/<seq>.npz, written to a temporary file and renamed (a crash never leaves a partial
file under a real name); an unreadable, mismatched or corrupt file is deleted and the chunk is rendered again. A
full disk or a write error leaves the bank in RAM only. `disk_cap_bytes` bounds the whole folder: other avatars'
banks go first, oldest first; past the cap the rest of this bank stays in RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flashtalk_live.log import get_logger
from flashtalk_live.images import crossfade
from flashtalk_live.settings import ModelSettings, RendererSettings, VideoSettings
from flashtalk_live.chunks import MODEL_AUDIO_RATE, RenderChunk

FILE_VERSION = 1
THUMB_SIDE = 48  # frames are compared at about this many pixels on their longer side


def thumb(frame: np.ndarray) -> np.ndarray:
    """A downscaled (box-averaged) int16 copy of one uint8 [H, W, 3] frame, for nearest-frame picks."""
    s = max(1, max(frame.shape[:2]) // THUMB_SIDE)
    h, w = frame.shape[0] // s * s, frame.shape[1] // s * s
    f = frame[:h, :w].reshape(h // s, s, w // s, s, 3).astype(np.int32).mean(axis=(1, 3))
    return f.astype(np.int16)


def frame_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference of two thumbs (0..255)."""
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def bank_key(image: np.ndarray, prompt: str, config: str, renderer: str) -> str:
    """What decides a bank's pixels: the avatar image bytes, the prompt, the configuration, the renderer."""
    h = hashlib.sha256()
    h.update(json.dumps([FILE_VERSION, list(image.shape), str(image.dtype), prompt, config, renderer]).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:32]


def renderer_identity(r: Any) -> str | None:
    """The part of the key the renderer knows (FlashTalk: profile and weights); None when it is not ready or keeps
    no bank (a renderer opts in with a `bank_identity` string: idle of a cheap renderer costs nothing anyway)."""
    ident = getattr(r, "bank_identity", None) if r is not None else None
    if not ident or not r.ready():
        return None
    return f"{r.name}:{ident}"


@dataclass
class BankChunk:
    seq: int  # link in the chain: chunk seq was conditioned on chunk seq-1
    frames: np.ndarray  # uint8 [n, H, W, 3]
    first: np.ndarray  # thumb of frames[0]
    source: str  # "disk" or "render"


class BankStore:
    """The on-disk side: one folder per key, one .npz per chunk; never raises on I/O (the bank is a cache)."""

    def __init__(self, root: str | os.PathLike[str], cap_bytes: int, shape: tuple[int, ...]) -> None:
        self.root = Path(root)
        self.cap_bytes = cap_bytes
        self.shape = tuple(shape)
        self.error: str | None = None  # the last write failure (the bank then lives in RAM)
        self.corrupt = 0
        self._log = get_logger("idlebank")

    def _dir(self, key: str) -> Path:
        return self.root / key

    def list(self, key: str) -> list[int]:
        """Sequence numbers with a file for this key (not yet checked)."""
        d = self._dir(key)
        try:
            names = [p.name for p in d.iterdir()]
        except OSError:
            return []
        for n in names:
            if n.endswith(".tmp"):  # a write cut short by a crash
                (d / n).unlink(missing_ok=True)
        return sorted(int(n[:-4]) for n in names if n.endswith(".npz") and n[:-4].isdigit())

    def load(self, key: str, seq: int) -> np.ndarray | None:
        path = self._dir(key) / f"{seq:04d}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                frames = z["frames"]
            if meta != {"version": FILE_VERSION, "key": key, "seq": seq} or frames.dtype != np.uint8 \
                    or frames.shape != self.shape:
                raise ValueError(f"mismatched bank file: {meta}, {frames.dtype}{list(frames.shape)}")
            os.utime(path)  # recently used: evicted last
            return frames
        except Exception as e:  # noqa: BLE001 - a corrupt or partial file is rebuilt, never fatal
            self.corrupt += 1
            self._log.warning("idle_bank_file_ignored", path=str(path), error=repr(e))
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            return None

    def save(self, key: str, seq: int, frames: np.ndarray) -> bool:
        if self.cap_bytes <= 0:
            return False
        d = self._dir(key)
        tmp = None
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not self._make_room(key, frames.nbytes + 4096):
                return False
            fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
            meta = np.frombuffer(json.dumps({"version": FILE_VERSION, "key": key, "seq": seq}).encode(), np.uint8)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, frames=frames, meta=meta)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / f"{seq:04d}.npz")
            tmp = None
            self.error = None
            return True
        except OSError as e:  # a full disk or a read-only state dir: RAM only, the air goes on
            if self.error is None:
                self._log.warning("idle_bank_disk_write_failed", error=repr(e), note="the bank stays in RAM")
            self.error = repr(e)
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _make_room(self, key: str, need: int) -> bool:
        """Evict other keys' folders (least recently used first) until `need` more bytes fit under the cap."""
        sizes: dict[Path, tuple[int, float]] = {}
        for d in self.root.iterdir():
            if d.is_dir():
                files = [p.stat() for p in d.iterdir() if p.is_file()]
                sizes[d] = (sum(s.st_size for s in files), max((s.st_mtime for s in files), default=0.0))
        total = sum(s for s, _ in sizes.values())
        for d, (size, _) in sorted(((d, v) for d, v in sizes.items() if d.name != key), key=lambda x: x[1][1]):
            if total + need <= self.cap_bytes:
                break
            shutil.rmtree(d, ignore_errors=True)
            total -= size
        return total + need <= self.cap_bytes

    def used_bytes(self) -> int:
        try:
            return sum(p.stat().st_size for p in self.root.rglob("*.npz"))
        except OSError:
            return 0


class IdleBank:
    """The bank for the current avatar and renderer. All methods run on the render thread."""

    def __init__(self, *, size: int, crossfade_frames: int, config: str, store: BankStore | None,
                 chunk_frames: int, fps: int = 25) -> None:
        self.size = size
        self.fps = fps
        self.crossfade_frames = crossfade_frames
        self.config = config
        self.store = store
        self.chunk_frames = chunk_frames
        self._avatar: tuple[np.ndarray, str] | None = None
        self._renderer: str | None = None
        self.key: str | None = None
        self.renderer_name: str | None = None
        self.chunks: dict[int, BankChunk] = {}
        self._to_load: list[int] = []
        self._last_served: int | None = None  # the bank chunk that aired last, None after anything else
        self.served = 0
        self.rendered = 0
        self.last_join: dict[str, Any] | None = None
        self._log = get_logger("idlebank")

    # -- which bank ------------------------------------------------------------------------------------
    def set_avatar(self, image: np.ndarray, prompt: str) -> None:
        """A new avatar: the old chunks never air again; the new bank loads or builds from the next step."""
        self._avatar = (image, prompt)
        self._rekey()

    def sync(self, renderer: str | None) -> None:
        """The preferred renderer's identity now (None: not ready): the bank follows it."""
        if renderer != self._renderer:
            self._renderer = renderer
            self._rekey()

    def _rekey(self) -> None:
        key = None
        if self._avatar is not None and self._renderer is not None:
            key = bank_key(self._avatar[0], self._avatar[1], self.config, self._renderer)
        if key == self.key:
            return
        self.key = key
        self.renderer_name = None if self._renderer is None else self._renderer.split(":", 1)[0]
        self.chunks, self._last_served = {}, None
        self._to_load = [] if key is None or self.store is None else self.store.list(key)[: self.size]
        if key is not None:
            self._log.info("idle_bank_key", key=key[:12], on_disk=len(self._to_load), size=self.size)

    @property
    def active(self) -> bool:
        return self.key is not None

    def serves(self, renderer: str) -> bool:
        """True when idle for `renderer` comes from this bank (it has at least one chunk of it)."""
        return self.active and bool(self.chunks) and renderer == self.renderer_name

    # -- building --------------------------------------------------------------------------------------
    def load_one(self) -> bool:
        """Read one chunk from disk; False when nothing is left to read."""
        while self._to_load and self.key is not None:
            seq = self._to_load.pop(0)
            frames = self.store.load(self.key, seq) if self.store is not None else None
            if frames is not None:
                self._add(seq, frames, "disk")
                return True
        return False

    def wants_chunk(self) -> bool:
        return self.active and not self._to_load and len(self.chunks) < self.size

    def build_chunk(self, tail: np.ndarray | None) -> RenderChunk:
        """The next link: silent audio, conditioned on the chain's last chunk (or on `tail`, what aired last)."""
        prev = self.chunks.get(self._next_seq() - 1)
        motion = prev.frames if prev is not None else tail
        n = self.chunk_frames
        return RenderChunk(index=-1, start_frame=0, n_frames=n, audio=np.zeros((0, 1), np.float32),
                           model_audio=np.zeros(n * MODEL_AUDIO_RATE // self.fps, np.float32), frame_segments=[None] * n,
                           idle=True, model_history=np.zeros(MODEL_AUDIO_RATE, np.float32),
                           motion_frames=None if motion is None else motion[-8:])

    def _next_seq(self) -> int:
        return max(self.chunks) + 1 if self.chunks else 0

    def add_rendered(self, frames: np.ndarray) -> None:
        """A chunk of build_chunk() as the renderer drew it: into RAM, and to disk when it fits."""
        if not self.wants_chunk():
            return
        seq = self._next_seq()
        self._add(seq, frames, "render")
        self.rendered += 1
        if self.store is not None and self.key is not None:
            self.store.save(self.key, seq, frames)
        if len(self.chunks) == self.size:
            self._log.info("idle_bank_ready", key=(self.key or "")[:12], chunks=self.size, **self._sources())

    def _add(self, seq: int, frames: np.ndarray, source: str) -> None:
        self.chunks[seq] = BankChunk(seq, frames, thumb(frames[0]), source)

    def successor_missing(self) -> bool:
        """The chunk on air is the chain's last and the chain is not complete: render its successor now."""
        return self.wants_chunk() and self._last_served is not None and self._last_served == self._next_seq() - 1

    # -- on air ----------------------------------------------------------------------------------------
    def serve(self, n_frames: int, last_aired: np.ndarray | None) -> np.ndarray | None:
        """Frames for the next idle chunk: the chain's successor, else the nearest chunk with a short blend. A
        shorter chunk (a lead-in's) gets the head of that link, and the chunk after it joins through the nearest
        pick (the chain's next link would skip the rest)."""
        if not self.chunks or n_frames > self.chunk_frames:
            return None
        frames = self._serve_link(last_aired)
        if n_frames < self.chunk_frames:
            self._last_served = None
            return frames[:n_frames]
        return frames

    def _serve_link(self, last_aired: np.ndarray | None) -> np.ndarray:
        nxt = self.chunks.get(self._last_served + 1) if self._last_served is not None else None
        if nxt is not None:
            self._last_served = nxt.seq
            self.served += 1
            return nxt.frames
        if last_aired is None:
            pick, dist = min(self.chunks.values(), key=lambda c: c.seq), None
        else:
            t = thumb(last_aired)
            pick, dist = min(((c, frame_distance(t, c.first)) for c in self.chunks.values()), key=lambda x: x[1])
        frames = pick.frames if last_aired is None else crossfade(pick.frames, last_aired, self.crossfade_frames)
        self.last_join = {"seq": pick.seq, "distance": None if dist is None else round(dist, 2),
                          "crossfade_frames": 0 if last_aired is None else self.crossfade_frames}
        self._last_served = pick.seq
        self.served += 1
        return frames

    def interrupted(self) -> None:
        """Something other than a bank chunk aired: the next idle chunk joins through the nearest pick."""
        self._last_served = None

    # -- status ----------------------------------------------------------------------------------------
    def _sources(self) -> dict[str, int]:
        return {"from_disk": sum(c.source == "disk" for c in self.chunks.values()),
                "from_render": sum(c.source == "render" for c in self.chunks.values())}

    def state(self) -> str:
        if not self.active:
            return "waiting_renderer"
        if self._to_load:
            return "loading"
        return "ready" if len(self.chunks) >= self.size else "building"

    def status(self) -> dict[str, Any]:
        st = self.store
        return {
            "state": self.state(), "key": None if self.key is None else self.key[:12],
            "renderer": self.renderer_name, "chunks_ready": len(self.chunks), "chunks_target": self.size,
            **self._sources(), "served_chunks": self.served, "rendered_chunks": self.rendered,
            "last_join": self.last_join,
            "disk": None if st is None else {"dir": str(st.root), "cap_bytes": st.cap_bytes, "error": st.error,
                                             "corrupt_files_ignored": st.corrupt},
        }


def bank_from_settings(r: RendererSettings, v: VideoSettings, model: ModelSettings,
                       state_dir: str | Path) -> IdleBank | None:
    """The daemon's bank (None when renderer.idle_bank is off); state_dir expanded."""
    if not r.idle_bank:
        return None
    config = json.dumps({"renderer": r.kind, "model": model.model_dump(mode="json"),
                         "video": [v.width, v.height, v.fps, v.chunk_frames, v.fit]}, sort_keys=True)
    shape = (v.chunk_frames, v.height, v.width, 3)
    store = BankStore(Path(state_dir) / "idlebank", r.idle_bank_disk_bytes, shape)
    return IdleBank(size=r.idle_bank_chunks, crossfade_frames=r.idle_bank_crossfade_frames, config=config,
                    store=store, chunk_frames=v.chunk_frames, fps=v.fps)
