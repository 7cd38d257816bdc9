"""Random edit sequences over a room driven by hand (support/replan_room.py: real spool, look-ahead, timeline and
re-planner), seeded, each checked against what aired: the air is contiguous, every acknowledged clip that was not
cancelled or cleared finishes, a clip starts again only after a play_now requeued it, the programme keeps its cyclic
order (a clip a play_now cut may replay), idle frames are silent and a clip's frames carry only its own sound.

Each sequence mixes rendering and airing at random paces (the pacer somewhere inside the chunk on air, a render in
flight during an edit) with enqueue, insert, play_now, cancel (of any clip, or of the clip on air as `skip` does)
and clear, with and without a playlist, re-planning within chunks or at boundaries, the render rate unknown, at
half or at real time. The review that wrote the first version found 12 failing sequences in 260 on 36e6986 (a
playlist given back out of order by a re-plan, a play_now clip restarted at every chunk); a failure names its seed.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from flashtalk_live.chunks import RenderChunk, RenderedChunk

from support.level_clips import add_level_clip
from support.queue_fakes import labelled_wav
from support.replan_room import Room
from support.settings import load_programme, section_settings

SEEDS_PER_CASE, CASES = 10, 4
MAX_LEVEL = 60  # clip levels 1..60; programme items use 61 and up


class Sequence:
    """One seeded run: the room, what was pushed (level and length by segment id) and what an edit removed."""

    def __init__(self, seed: int, tmp: Path) -> None:
        self.rnd = rnd = random.Random(seed)
        self.room = Room(tmp, within_chunk=rnd.random() < 0.7)
        self.playlist: list[str] = []
        if rnd.random() < 0.6:
            lines = ["#EXTM3U"]
            for i in range(rnd.randint(1, 4)):
                name = f"p{i}"
                labelled_wav(tmp / f"{name}.wav", MAX_LEVEL + 1 + i, rnd.choice([0.4, 0.9, 1.5, 2.2]))
                lines.append(f"{name}.wav")
                if rnd.random() < 0.4:
                    lines.append(f"#EXT-X-PAUSE:{rnd.choice([0.2, 0.6, 1.3])}")
                self.playlist.append(name)
            (tmp / "list.m3u").write_text("\n".join(lines) + "\n")
            self.room.tl.programme = load_programme(tmp / "list.m3u", section_settings(video={}))
        self.settle = rnd.random() < 0.8  # the air's bookkeeping removes finished clips from the spool
        self.room.rate = rnd.choice([None, 0.5, 1.0])
        self.pushed: dict[str, int] = {}
        self.removed: set[str] = set()
        self.finished: set[str] = set()
        self.edits: list[str] = []

    def air(self) -> None:
        r = self.room
        if not len(r.la):
            return
        r.air()
        self.finished |= {m.segment_id for m in r.aired[-1].marks if m.kind == "finished"}
        if self.settle:
            for m in r.aired[-1].marks:
                if m.source == "queue" and m.kind in ("finished", "interrupted") and not m.requeued:
                    r.spool.mark_finished(m.segment_id)

    def push(self, mode: str) -> None:
        level = len(self.pushed) + 1
        if level > MAX_LEVEL:
            return
        with self.room.rp.editing(mode):
            sid = add_level_clip(self.room.spool, level, self.rnd.choice([0.3, 0.7, 1.0, 1.5, 2.5]), mode)
        self.pushed[sid] = level

    def on_air(self) -> str | None:
        """The queue clip on air by the marks that aired (what `skip` cuts)."""
        on = None
        for c in self.room.aired:
            for m in c.marks:
                if m.kind == "started":
                    on = m.segment_id
                elif m.segment_id == on:
                    on = None
        return on

    def cancel(self, sid: str) -> None:
        r = self.room
        with r.rp.editing("cancel", sid):
            was = r.spool.cancel(sid) if r.spool.get(sid) is not None else None
        if was:
            self.removed.add(sid)

    def step(self) -> None:
        rnd, r = self.rnd, self.room
        if rnd.random() < 0.35:  # render and air at their own paces; the pacer somewhere in the chunk on air
            r.render(rnd.randint(0, 3))
            for _ in range(rnd.randint(0, 2)):
                self.air()
            last = r.la.last_taken
            r.air_at = None
            if last is not None and rnd.random() < 0.8:
                r.air_at = last.chunk.start_frame + rnd.randint(0, last.chunk.n_frames - 1)
                if r.la.next_air_frame is not None:
                    r.air_at = min(r.air_at, r.la.next_air_frame - 1)
            return
        edit = rnd.choice(["enqueue", "insert", "play_now", "cancel", "clear", "cancel", "skip"])
        self.edits.append(edit)
        in_flight: RenderChunk | None = r.rp.next_chunk() if rnd.random() < 0.3 else None
        r.now += rnd.random() * 0.5
        if edit in ("enqueue", "insert", "play_now"):
            self.push(edit)
        elif edit == "cancel":
            ids = [e.segment_id for e in r.spool.view()[0] + r.spool.view()[1]]
            if ids:
                self.cancel(rnd.choice(ids))
        elif edit == "skip":
            on = self.on_air()
            if on is not None:
                self.cancel(on)
        else:
            with r.rp.editing("clear"):
                self.removed |= set(r.spool.clear())
        if in_flight is not None:  # the render in flight ends after the edit (its chunk may have been discarded)
            r.rp.put(RenderedChunk(in_flight, np.zeros((in_flight.n_frames, 2, 2, 3), np.uint8), "t", 0.0), r.stop)
        end = r.la.on_air_end  # a re-plan within the chunk on air ends it there
        if end is not None and r.aired and r.aired[-1].end_frame > end:
            r.aired[-1] = r.aired[-1].head(end - r.aired[-1].start_frame)

    def drain(self) -> None:
        """Render and air until every clip still owed has finished, then 10 chunks more (the programme's order after
        the queue; a lost clip stops it at 200)."""
        r = self.room
        r.air_at = None
        after = 0
        for _ in range(200):
            r.render(1)
            self.air()
            if set(self.pushed) - self.removed <= self.finished:
                after += 1
                if after > 10:
                    return

    def faults(self) -> list[str]:
        aired = self.room.aired
        out: list[str] = []
        frames = [c.start_frame + j for c in aired for j in range(c.n_frames)]
        if frames != list(range(len(frames))):
            return ["the air is not contiguous"]
        marks = [m for c in aired for m in c.marks]
        state: dict[str, str] = {}
        for m in marks:
            if m.source != "queue":
                continue
            was = state.get(m.segment_id)
            if m.kind == "started":
                if was == "on":
                    out.append(f"{m.segment_id[:8]} started twice without an end")
                if was in ("finished", "cut"):
                    out.append(f"{m.segment_id[:8]} started after it {was}")
                state[m.segment_id] = "on"
            elif m.kind == "finished":
                if was != "on":
                    out.append(f"{m.segment_id[:8]} finished while {was}")
                state[m.segment_id] = "finished"
            else:
                state[m.segment_id] = "requeued" if m.requeued else "cut"
        for sid, level in self.pushed.items():
            if sid not in self.removed and state.get(sid) != "finished":
                out.append(f"{sid[:8]} (level {level}) lost: {state.get(sid)}")
        expected: int | None = None
        last_cut: str | None = None
        for m in marks:
            if m.source != "programme":
                continue
            name = m.segment_id.split(":")[1]
            i = self.playlist.index(name)
            if m.kind == "started":
                if expected is not None and i != expected and name != last_cut:
                    out.append(f"programme: {name} started, {self.playlist[expected]} expected")
                last_cut = None
            else:
                expected = (i + 1) % len(self.playlist)
                last_cut = name if m.kind == "interrupted" else None
        for c in aired:
            spf = c.audio.shape[0] // c.n_frames
            for j, seg in enumerate(c.frame_segments):
                levels = set(np.round(c.audio[j * spf:(j + 1) * spf, 0] * 64).astype(int).tolist()) - {0}
                if seg is None and levels:
                    out.append(f"idle frame {c.start_frame + j} has sound {sorted(levels)}")
                elif seg in self.pushed and ((levels and self.pushed[seg] not in levels) or len(levels) > 2):
                    # a frame on a boundary may hold two clips' sound, named after the one with the most samples
                    out.append(f"frame {c.start_frame + j} of level {self.pushed[seg]} holds {sorted(levels)}")
        return out


@pytest.mark.parametrize("case", range(CASES))
def test_random_edit_sequences_lose_nothing_and_air_each_clip_once_in_order(tmp_path, case):
    failing = []
    for seed in range(case * SEEDS_PER_CASE, (case + 1) * SEEDS_PER_CASE):
        run = tmp_path / str(seed)
        run.mkdir()
        seq = Sequence(seed, run)
        for _ in range(seq.rnd.randint(5, 25)):
            seq.step()
        seq.drain()
        faults = seq.faults()
        seq.room.spool.close()
        if faults:
            failing.append((seed, seq.edits, faults[:3]))
    assert not failing, failing
