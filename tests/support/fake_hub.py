"""A local stand-in for the Hugging Face hub: the three routes `snapshot_download` uses, over real HTTP.

    GET  /api/models/<repo>/revision/<rev>      -> {"sha", "siblings": [{"rfilename"}]}
    HEAD /<repo>/resolve/<commit>/<file>        -> X-Repo-Commit, ETag, Content-Length
    GET  /<repo>/resolve/<commit>/<file>        -> the bytes

Point HF_ENDPOINT (or `endpoint=`) at `hub.url`; `hub.requests` records (method, path) of every request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                for repo, files in hub.repos.items():
                    commit = hashlib.sha1(repo.encode()).hexdigest()
                    if path.startswith(f"/api/models/{repo}/revision/"):
                        body = json.dumps({"id": repo, "sha": commit,
                                           "siblings": [{"rfilename": f} for f in files]}).encode()
                        return self._send(200, body, {"Content-Type": "application/json"}, head)
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix):].split("/", 1)[-1]
                        if name in files:
                            data = files[name]
                            etag = '"%s"' % hashlib.sha256(data).hexdigest()
                            return self._send(200, data, {"X-Repo-Commit": commit, "ETag": etag}, head)
                self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self) -> None:  # noqa: N802
                self._route(False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._route(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
