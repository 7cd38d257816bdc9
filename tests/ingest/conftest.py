"""Fixtures for the ingest tests: encoded clips of every format, settings on a short temporary state dir, a live server."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from flashtalk_live.events import EventBus
from flashtalk_live.ingest.server import IngestServer
from flashtalk_live.queue.spool import Spool
from flashtalk_live.settings import Settings
from flashtalk_live.config import load_settings

from support.audiogen import FORMATS, encode, pcm_s16le


@pytest.fixture(scope="session")
def clips() -> dict[str, tuple[bytes, dict[str, Any]]]:
    """name -> (file bytes, request fields: format hint [+ rate/channels for raw]), 0.6 s of 440 Hz each."""
    out: dict[str, tuple[bytes, dict[str, Any]]] = {n: (encode(n, 0.6), {"format": FORMATS[n][5]}) for n in FORMATS}
    out["pcm_s16le"] = (pcm_s16le(0.6, 24000, 2), {"format": "pcm_s16le", "sample_rate": 24000, "channels": 2})
    return out


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # ipc:// paths are limited to ~107 bytes, so keep the state dir short rather than under pytest's tmp_path.
    d = Path(tempfile.mkdtemp(prefix="ftl-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_settings(state_dir: Path) -> Callable[..., Settings]:
    def make(*overrides: str) -> Settings:
        return load_settings(None, [f'state_dir="{state_dir}"', *overrides], environ={})

    return make


class Running:
    """A started IngestServer with its spool and bus."""

    def __init__(self, server: IngestServer, spool: Spool, bus: EventBus, settings: Settings) -> None:
        self.server, self.spool, self.bus, self.settings = server, spool, bus, settings

    @property
    def ipc(self) -> str:
        return next(e for e in self.server.control_endpoints if e.startswith("ipc://"))

    @property
    def tcp(self) -> str:
        return next(e for e in self.server.control_endpoints if e.startswith("tcp://"))

    @property
    def events(self) -> str:
        return self.server.event_endpoints[0]


@pytest.fixture
def running(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Running]]:
    """Factory: start a server (ipc + tcp control, ipc + tcp events) with extra settings overrides and handlers.

    tcp is plain loopback (ingest.tcp_auth="none") unless the overrides say otherwise; tests/ingest/test_auth.py
    covers CURVE."""
    started: list[Running] = []

    def start(*overrides: str, handlers: dict | None = None, status_provider=None) -> Running:
        s = make_settings(
            'ingest.tcp_auth="none"',
            'ingest.control=["ipc://{state_dir}/control.sock", "tcp://127.0.0.1:0"]',
            'ingest.events=["ipc://{state_dir}/events.sock", "tcp://127.0.0.1:0"]',
            *overrides,
        )
        spool = Spool.from_settings(s.expanded(s.queue), s.encoder, s.storage)
        bus = EventBus()
        srv = IngestServer(s.expanded(s.ingest), s.encoder, spool, bus, status_provider or (lambda: {"daemon": "test"}), handlers)
        srv.start()
        r = Running(srv, spool, bus, s)
        started.append(r)
        return r

    yield start
    for r in started:
        r.server.stop()
        r.spool.close()
