"""The console's token: where it comes from, and how a request proves it holds it.

A state-changing request needs `Authorization: Bearer <token>`. No cookie is ever set or read, so another site's page
cannot make the browser send the token (CSRF): a cross-site form cannot set that header, and a cross-site fetch that
sets it needs a CORS preflight this server never grants.
"""

from __future__ import annotations

from typing import Any

import hmac
import os
import secrets
from pathlib import Path
from flashtalk_live.settings import ConfigError, ConsoleSettings, is_loopback_host

GENERATED_TOKEN_FILE = "console.token"


def resolve_token(console: ConsoleSettings, metrics_host: str, state_dir: str) -> tuple[str, str]:
    """(token, where it came from). console.token, else console.token_file, else a random one written to
    {state_dir}/console.token (0600) on the first start and read back on later ones. ConfigError when a non-loopback
    bind has no configured token (settings refuse that too) or the token file is unusable. `console`: its {state_dir}
    expanded (Settings.expanded)."""
    c = console
    if c.token is not None and c.token.get_secret_value().strip():
        return c.token.get_secret_value().strip(), "console.token"
    if c.token_file:
        path = Path(c.token_file)
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"console.token_file: cannot read {path}: {e.strerror}") from None
        if not token:
            raise ConfigError(f"console.token_file: {path} is empty")
        return token, str(path)
    if not is_loopback_host(metrics_host):
        raise ConfigError(f"console: metrics.host {metrics_host!r} is not loopback; set console.token or "
                          f"console.token_file (or console.enabled = false)")
    path = Path(state_dir) / GENERATED_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # an existing (empty) file keeps its mode through O_TRUNC: 0600 before the token
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    return token, str(path)


def bearer_ok(environ: dict[str, Any], token: str) -> bool:
    """True when the request's Authorization header carries exactly `token` (constant-time compare)."""
    value = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, given = value.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
