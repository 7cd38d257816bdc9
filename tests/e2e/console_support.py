"""Helpers for the console tests: an in-process daemon with its console, WAV bytes, and a small HTTP client.

Imported by name: pytest puts tests/e2e on sys.path (prepend import mode)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flashtalk_live.daemon import Daemon
from flashtalk_live.settings import load_settings
from flashtalk_live.timeline.chunk import RenderChunk
from support.audio import wav_bytes  # noqa: F401 - re-exported for the console tests


def console_settings(tmp_path: Path, *extra: str):
    return load_settings(None, [
        f'state_dir="{tmp_path / "state"}"',
        'ingest.control=["ipc://{state_dir}/control.sock"]', 'ingest.events=["ipc://{state_dir}/events.sock"]',
        "video.width=128", "video.height=128", 'encoder.preset="ultrafast"', "encoder.video_bitrate=300000",
        "metrics.port=0", f'outputs=[{{name="rec", url="{tmp_path / "rec.flv"}"}}]', 'programme.playlist=""',
        f'output_policy.file_dirs=["{tmp_path}"]', "console.preview_fps=10", *extra,
    ], environ={})


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


def wait_until(pred: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class ChunkColourRenderer:
    """Paints every chunk a different colour, so consecutive aired frames differ from chunk to chunk."""

    name = "colours"

    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h

    def start_session(self, reference_image, prompt):
        pass

    def ready(self):
        return True

    def render(self, chunk: RenderChunk) -> np.ndarray:
        colour = np.array([(67 * chunk.index) % 256, (29 * chunk.index) % 256, 128], np.uint8)
        return np.broadcast_to(colour, (chunk.n_frames, self.h, self.w, 3))

    def close(self):
        pass
