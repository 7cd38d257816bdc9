"""The package type-checks: mypy over flashtalk_live/ at the strictness pyproject.toml states ([tool.mypy]: every
annotated function, pydantic's plugin, no unused or bare `# type: ignore`), zero errors.

mypy runs from a cold cache (a folder of its own) as a background job from the start of the session
(tests/support/background.py): its half minute of CPU overlaps the real-time tests instead of adding to the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.background import Job, register

ROOT = Path(__file__).resolve().parents[2]
MYPY = register(Job("mypy", lambda scratch: [sys.executable, "-m", "mypy", "--cache-dir", str(scratch / "mypy-cache")],
                    cwd=ROOT), __file__)


@pytest.mark.timeout(900)
def test_mypy_finds_no_errors() -> None:
    r = MYPY.result(880)
    print(f"mypy ran {r.seconds:.0f} s in the background")
    assert r.returncode == 0, r.output[-8000:]
    assert "Success: no issues found" in r.output
