"""Fixtures for end-to-end tests of the daemon process."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from support.daemon_harness import DaemonProcess


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def make(outputs: list[dict[str, Any]] | None = None, extra: list[str] | None = None,
             name: str = "state") -> DaemonProcess:
        d = DaemonProcess(tmp_path / name, outputs if outputs is not None else
                          [{"name": "rec", "url": str(tmp_path / "rec.flv")}], extra)
        made.append(d)
        return d

    yield make
    for d in made:
        d.kill()
