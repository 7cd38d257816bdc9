"""The render thread's side and the air's side of a room done by hand over a real spool, look-ahead, timeline and
re-planner (tests/playout: test_replan.py, test_edit_sequences.py)."""

from __future__ import annotations

import threading

import numpy as np

from flashtalk_live.chunks import RenderedChunk
from flashtalk_live.playout.pacing import Lookahead
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline
from flashtalk_live.queue.spool import Spool
from flashtalk_live.settings import Settings


class Room:
    """The render thread's side (cut, 'render', put) and the air's side (take a chunk) done by hand."""

    def __init__(self, tmp_path, *, within_chunk: bool = True, margin: float = 0.0) -> None:
        self.spool = Spool(tmp_path / "spool")
        st = Settings(state_dir="/nonexistent-state")
        self.tl = Timeline(st.video, st.encoder, self.spool, None, replannable=True)
        self.la = Lookahead(64)
        # The pacer's position and the render rate, set by a test (None: no air clock, re-plans at chunk boundaries).
        self.air_at: int | None = None
        self.rate: float | None = None
        self.abandon: float | None = None  # the renderer's step: it stops an abandoned chunk at the next (None: never)
        self.share: float | None = None  # ... within this share of its render (None: all of it)
        self.now = 100.0  # the replanner's clock, moved by a test
        # with a margin, render_s as the admission plans it: the rate's time and the planning margin
        planned = {} if not margin else {"render_s": lambda n: (lambda r: None if r is None else r * n / 25 * (
            1 + margin))(self.rp.rate())}
        self.rp = Replanner(self.tl, self.la, poll_s=0.001, air_frame=lambda: self.air_at, rate=lambda: self.rate,
                            **planned, abandon_s=lambda: self.abandon, stoppable_share=lambda: self.share,
                            render_margin=margin, within_chunk=within_chunk, clock=lambda: self.now)
        self.aired: list = []
        self.stop = threading.Event()

    def render(self, n: int) -> list:
        out = []
        for _ in range(n):
            c = self.rp.next_chunk()
            out.append(c)
            assert self.rp.put(RenderedChunk(c, np.zeros((c.n_frames, 2, 2, 3), np.uint8), "t", 0.0), self.stop)
        return out

    def air(self, n: int = 1) -> None:
        for _ in range(n):
            self.aired.append(self.la.get_nowait().chunk)

    def flush(self) -> list:
        while len(self.la):
            self.air()
        return self.aired

    def order(self) -> list[str]:
        """Clips in the order they start in what aired."""
        return [m.segment_id for c in self.aired for m in c.marks if m.kind == "started"]
