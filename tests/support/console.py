"""Helpers for the console tests: an in-process daemon with its console, WAV bytes, and a small HTTP client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from flashtalk_live.daemon import Daemon

from support.audio import wav_bytes  # noqa: F401 - re-exported for the console tests
from support.fakes import PaintRenderer
from support.settings import room_settings


def console_settings(tmp_path: Path, *extra: str):
    return room_settings(tmp_path, f'output_policy.file_dirs=["{tmp_path}"]', "console.preview_fps=10", *extra)


def ChunkColourRenderer(w: int, h: int) -> PaintRenderer:
    """Every chunk a different colour, so consecutive aired frames differ from chunk to chunk."""
    return PaintRenderer(w, h, name="colours", colour=lambda i: ((67 * i) % 256, (29 * i) % 256, 128))


def start_daemon(tmp_path: Path, *extra: str) -> Daemon:
    d = Daemon(console_settings(tmp_path, *extra))
    d.start()
    return d


class Http:
    """GET/POST against the console; returns (status, headers, body bytes) and never raises on an HTTP error."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
                token: str | None = "default", headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        tok = self.token if token == "default" else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        if ctype:
            req.add_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get_json(self, path: str) -> dict[str, Any]:
        status, _, body = self.request("GET", path, token=None)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def command(self, name: str, fields: dict[str, Any] | None = None, data: bytes | None = None,
                ctype: str = "audio/wav", token: str | None = "default") -> tuple[int, dict[str, Any]]:
        if data is None:
            status, _, body = self.request("POST", f"/api/commands/{name}", json.dumps(fields or {}).encode(),
                                           "application/json", token)
        else:
            q = "?args=" + urllib.request.quote(json.dumps(fields)) if fields else ""
            status, _, body = self.request("POST", f"/api/commands/{name}{q}", data, ctype, token)
        return status, json.loads(body)
