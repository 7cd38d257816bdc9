"""benchmarks/lead_in_ramps.py: the ramps ranked by the admission's own head start, repeats of a length included."""

from __future__ import annotations

import itertools

import pytest

from benchmarks.lead_in_ramps import main, short_times
from flashtalk_live.playout.admission import Admission, ramps


def test_ramps_are_every_non_falling_sequence_and_times_parse():
    assert ramps([16, 8], 2) == [(8,), (16,), (8, 8), (8, 16), (16, 16)]
    assert short_times("12=0.4,16=0.5") == {12: 0.4, 16: 0.5}


def test_the_first_row_is_the_shortest_head_start_the_admission_plans(capsys):
    # a fixed cost per chunk (0.2 s) makes a 12-frame chunk slower than its own air at the margin: repeating 16
    # beats each length once
    short = {12: 0.2 + 0.02 * 12, 16: 0.2 + 0.02 * 16, 20: 0.2 + 0.02 * 20}
    assert main(["--rate", "0.7", "--short", ",".join(f"{k}={v}" for k, v in short.items()), "--max-chunks", "4",
                 "--top", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| [")]
    adm = Admission(chunk_s=28 / 25, fps=25, base_chunks=2, capacity_s=8.0, margin=0.2, buffered_s=lambda: 0.0)
    adm.rate.value, adm.rate.short = 0.7, short
    best = min(adm.first_chunks_s(r) for k in range(1, 5)
               for r in itertools.combinations_with_replacement(sorted(short), k))
    first = rows[0].split("|")
    assert float(first[2]) == pytest.approx(best, abs=1e-3)
    each_once = next(r for r in rows if "each length once" in r)
    assert float(each_once.split("|")[2]) > best + 0.01
