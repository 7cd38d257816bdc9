"""benchmarks/first_frame.py end to end on the embedded defaults: real starts of `flashtalk-live run`, each part of
the start-up split read from the daemon's own lines, and the import table of a start under -X importtime."""

from __future__ import annotations

import re

import pytest

from benchmarks.first_frame import costliest_own, main, slowest_imports


def test_slowest_imports_keep_the_first_two_levels():
    text = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |        100 |       deep.leaf",
        "import time:       200 |        300 |     numpy.core",
        "import time:       300 |        600 |   numpy",
        "import time:        50 |        700 | flashtalk_live.cli",
    ])
    assert slowest_imports(text, 5) == [(700, 50, " flashtalk_live.cli"), (600, 300, "   numpy")]
    # own time at any depth: where a slow first level's time goes, the deep leaf included
    assert [r[2].strip() for r in costliest_own(text, 3)] == ["numpy", "numpy.core", "deep.leaf"]


@pytest.mark.timeout(180)
def test_two_starts_print_every_part_of_the_split(capsys):
    assert main(["--runs", "2", "--imports", "5"]) == 0
    out = capsys.readouterr().out
    for label in ("first log line", "`on_air` first_chunk_s", "`on_air` first_frame_s", "`on_air` process_s",
                  "status reporting a frame out"):
        row = next(line for line in out.splitlines() if label in line)
        assert re.search(r"\| \d+\.\d{3} \| \d+\.\d{3} \|$", row), row  # a measured value, not "-"
    assert "flashtalk_live.cli" in out


@pytest.mark.timeout(60)
def test_a_daemon_that_exits_before_its_first_frame_is_reported_with_its_code_and_log():
    """An operator's mistake (an odd width: exit 2 and one line) ends the benchmark with that line, not a trace."""
    with pytest.raises(SystemExit, match=r"exited with 2 before its first frame(.|\n)*width"):
        main(["--runs", "1", "--set", "video.width=447"])
