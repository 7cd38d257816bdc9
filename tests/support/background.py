"""Long preparations that need no real time (the type check, the container image build) run in the background from
the start of the session, and the tests that need their result wait for it: their minutes overlap the real-time
tests' waits (a daemon airing a clip mostly sleeps) instead of adding to the suite's wall time.

A job runs at the lowest CPU and I/O priority (`nice -n 19`, `ionice -c 3`), so a test beside it keeps the CPU it
would have had on a box busy with anything else; a test that needs the box to itself (the playout drills) waits for
every job to end first (`wait_all`). The check a job makes is the one its test made before: same command, same
inputs; only when it starts changes. A test module declares its job with `register(Job(...))` (at import, that is at
collection); tests/conftest.py starts the jobs whose modules have a test in the session once collection is done
(only those: `pytest -m "not image"` builds no image) and kills any still running when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from support.procs import kill_group


@dataclass
class Finished:
    """A job's outcome: exit status, everything it printed (stdout and stderr together) and how long it ran."""

    returncode: int
    output: str
    seconds: float


@dataclass
class Job:
    """A command that a test needs the outcome of; `start()` once, then `result()` from the test."""

    name: str
    argv: Callable[[Path], Sequence[str]]  # given a scratch folder of its own
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    cwd: Path | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None
    t0: float = 0.0
    t1: float | None = None

    def start(self, scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self.log = scratch / f"{self.name}.log"
        low = ["nice", "-n", "19"] + (["ionice", "-c", "3"] if shutil.which("ionice") else [])
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*low, *self.argv(scratch)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd, env=os.environ | self.env,
                                         start_new_session=True)
        self.t0 = time.monotonic()

    @property
    def started(self) -> bool:
        return self.proc is not None

    def result(self, timeout_s: float) -> Finished:
        """Waits for the job, starting it now if the session did not (raises subprocess.TimeoutExpired after
        `timeout_s`, killing it)."""
        if self.proc is None:
            self.start(Path(tempfile.mkdtemp(prefix=f"pytest-background-{self.name}-")))
        assert self.proc is not None and self.log is not None
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if self.t1 is None:
            self.t1 = time.monotonic()
        return Finished(rc, self.log.read_text(errors="replace"), self.t1 - self.t0)

    def wait(self, timeout_s: float) -> None:
        if self.proc is not None:
            self.result(timeout_s)

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, 30)


JOBS: dict[str, Job] = {}  # by the path of the test module that declared it


def register(job: Job, module: str) -> Job:
    """Declares `job` for the tests of `module` (pass `__file__`); started after collection if one was collected."""
    JOBS[str(Path(module).resolve())] = job
    return job


def wait_all(timeout_s: float) -> None:
    """Waits for every started job to end (for a test that needs the box to itself)."""
    deadline = time.monotonic() + timeout_s
    for job in JOBS.values():
        job.wait(max(1.0, deadline - time.monotonic()))
