"""An in-memory stand-in for the spool (flashtalk_live/queue/spool.py), same interface, for timeline unit tests.

Clip audio is labelled so tests can see exactly which samples aired where: broadcast channel 0 = the sample's
index inside its clip, channel 1 = the clip's number; model audio = 1000 + clip number (constant).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np


@dataclass
class FakeEntry:
    segment_id: str
    duration_s: float
    number: int
    n: int
    play_now: bool = False
    broken: bool = False

    @property
    def mode(self) -> str:
        return "play_now" if self.play_now else "enqueue"


@dataclass
class FakeClipAudio:
    broadcast: np.ndarray
    model: np.ndarray
    duration_s: float


class FakeQueue:
    def __init__(self, rate: int = 48000, channels: int = 2) -> None:
        self.rate, self.channels = rate, channels
        self.pending: collections.deque[FakeEntry] = collections.deque()
        self.interrupted: list[str] = []
        self.taken: list[str] = []
        self.requeued: list[str] = []
        self._entries: dict[str, FakeEntry] = {}
        self._n = 0

    def add(self, segment_id: str, n_samples: int, play_now: bool = False, broken: bool = False) -> FakeEntry:
        self._n += 1
        e = FakeEntry(segment_id, n_samples / self.rate, self._n, n_samples, play_now, broken)
        self._entries[segment_id] = e
        # play_now goes to the front, like the spool does.
        if play_now:
            self.pending.appendleft(e)
        else:
            self.pending.append(e)
        return e

    # -- the spool interface --------------------------------------------------------------------
    def take_next(self) -> FakeEntry | None:
        if not self.pending:
            return None
        e = self.pending.popleft()
        self.taken.append(e.segment_id)
        return e

    def load_audio(self, entry: FakeEntry) -> FakeClipAudio:
        if entry.broken:
            raise OSError(f"{entry.segment_id}: spool file vanished")
        b = np.empty((entry.n, self.channels), np.float32)
        b[:, 0] = np.arange(entry.n)
        b[:, 1:] = entry.number
        m = np.full(entry.n * 16000 // self.rate, 1000 + entry.number, np.float32)
        return FakeClipAudio(b, m, entry.duration_s)

    def peek(self) -> FakeEntry | None:
        return self.pending[0] if self.pending else None

    def untake(self, segment_id: str) -> bool:
        """Back to the head, as the spool does when a re-plan discards a buffered clip."""
        if segment_id not in self.taken:
            return False
        self.taken.remove(segment_id)
        self.pending.appendleft(self._entries[segment_id])
        return True

    def requeue(self, segment_id: str) -> bool:
        """Cut by play_now: back to pending right after the waiting play_now clips."""
        e = self._entries.get(segment_id)
        if e is None or e in self.pending:
            return False
        waiting = 0
        while waiting < len(self.pending) and self.pending[waiting].play_now:
            waiting += 1
        self.pending.insert(waiting, e)
        self.requeued.append(segment_id)
        return True

    def unrequeue(self, segment_id: str) -> bool:
        e = self._entries.get(segment_id)
        if e is None or e not in self.pending:
            return False
        self.pending.remove(e)
        return True

    def is_cancel_requested(self, segment_id: str) -> bool:
        return False

    def interrupt_pending(self) -> bool:
        return bool(self.pending) and self.pending[0].play_now

    def mark_interrupted(self, segment_id: str) -> None:
        self.interrupted.append(segment_id)


def write_wav(path, data: np.ndarray, rate: int = 48000) -> None:
    """Write float [-1, 1] audio [n] or [n, channels] as a 16-bit PCM WAV with PyAV."""
    import av

    data = np.asarray(data, np.float32)
    if data.ndim == 1:
        data = data[:, None]
    layout = {1: "mono", 2: "stereo"}[data.shape[1]]
    pcm = np.round(data * 32768).clip(-32768, 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=rate, layout=layout)
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.reshape(1, -1)), format="s16", layout=layout)
        f.sample_rate, f.pts = rate, 0
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def labelled_wav(path, level: int, seconds: float, rate: int = 48000) -> int:
    """A stereo WAV whose every sample is level/64 (exact in s16 and after float conversion). Returns samples."""
    n = int(round(seconds * rate))
    write_wav(path, np.full((n, 2), level / 64, np.float32), rate)
    return n
