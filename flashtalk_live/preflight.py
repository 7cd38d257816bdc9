"""What `run` needs from this machine before it starts anything, checked by `run` and `config show` alike.

Each check answers with a ConfigError (exit 2, one line naming the setting, the value and what is expected), so an
operator's mistake never becomes a restart loop (systemd's RestartPreventExitStatus=2) or a room that airs the
wrong thing:

* the state directory can be written, and the room's locks are free: the state directory, every ipc socket (statelock.py), every fixed tcp port (ingest
  endpoints, metrics.port);
* a plain tcp endpoint beyond loopback is refused unless accepted (ingest/auth.py, the rule the bind asks);
* the files the config names exist and are readable: the portrait (decoded), the playlist (parsed), the renderer's
  weights (renderers/kinds.py `needs`), the overlay font and layer images.

Probes create nothing and bind nothing that outlives them; the daemon still takes the real locks and ports when it
starts (a room started between the check and the bind is refused there, with the same line).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from PIL import ImageFont

from flashtalk_live.ingest.auth import EndpointRefused, check_unauthenticated
from flashtalk_live.ingest.server import ipc_path
from flashtalk_live.images import ImageError, load_image
from flashtalk_live.renderers.kinds import renderer_kind
from flashtalk_live.settings import ConfigError, Settings
from flashtalk_live.statelock import EndpointBusy, check_free, endpoint_busy, probe, socket_lock_path
from flashtalk_live.playout.programme import PlaylistError, parse_playlist


def check(settings: Settings) -> None:
    """Every check below, in the order an operator would fix them; the first failure raises ConfigError."""
    check_state_dir(settings.path(settings.state_dir))
    check_free(settings.path(settings.state_dir))
    check_endpoints(settings)
    check_files(settings)


def check_state_dir(state_dir: str) -> None:
    """The state directory is a folder this user may write, or can be made as one (its nearest existing parent)."""
    p = Path(state_dir)
    while not p.exists() and p != p.parent:
        p = p.parent
    what = "state_dir" if str(p) == state_dir else f"state_dir's parent {str(p)!r}"
    if not p.is_dir():
        raise ConfigError(f"state_dir = {state_dir!r}: {what} is not a folder; expected a folder this user may write")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"state_dir = {state_dir!r}: {what} is not writable by this user (uid {os.getuid()}); "
                          "expected a folder this user may write (under systemd: the unit's StateDirectory=)")


# -- sockets and ports ---------------------------------------------------------------------------------------------
def check_endpoints(settings: Settings) -> None:
    ingest = settings.expanded(settings.ingest)
    for field, endpoints in (("ingest.control", ingest.control), ("ingest.events", ingest.events)):
        for ep in endpoints:
            if not ep.startswith(("ipc://", "tcp://")):  # the bind's rule (auth.Security.prepare_bind)
                raise ConfigError(f"{field}: refusing to bind {ep}: only ipc:// and tcp:// endpoints are served "
                                  "(tcp:// with CURVE beyond loopback)")
            path = ipc_path(ep)
            if path is not None:
                holder = probe(socket_lock_path(path))
                if holder is not None:
                    raise endpoint_busy(field, ep, holder)
            elif ep.startswith("tcp://"):
                try:
                    check_unauthenticated(ep, ingest, field)
                except EndpointRefused as e:
                    raise ConfigError(str(e)) from None
                host, _, port = ep[len("tcp://"):].rpartition(":")
                if port.isdigit() and int(port) and port_in_use(host, int(port)):
                    raise EndpointBusy(f"{field}: cannot bind {ep}: the address is in use (another room or program "
                                       "listens there); expected a free port for each room")
    m = settings.metrics
    if m.enabled and m.port and port_in_use(m.host, m.port):
        raise EndpointBusy(f"metrics.port = {m.port} on {m.host}: cannot listen: the port is in use (another room or "
                           "program listens there); expected a free port for each room, or metrics.port = 0 for any "
                           "free one (logged at start)")


def port_in_use(host: str, port: int) -> bool:
    """Whether a listener holds host:port now (a bind with SO_REUSEADDR fails, as the daemon's own would). Hosts that
    are not addresses (an interface name) are left to the bind."""
    host = host.strip("[]")
    host = "0.0.0.0" if host in ("*", "") else host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return False
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return True
    return False


# -- files -----------------------------------------------------------------------------------------------------------
def check_files(settings: Settings) -> None:
    v = settings.video
    if v.reference_image:
        path = settings.path(v.reference_image)
        _readable("video.reference_image", path, "file", "a readable portrait image (PNG or JPEG)")
        try:
            load_image(path)
        except ImageError as e:
            raise ConfigError(f"video.reference_image = {path!r}: {e}; expected a PNG or JPEG portrait") from None
    playlist = settings.programme.playlist
    if playlist:
        path = settings.path(playlist)
        _readable("programme.playlist", path, "file", 'a readable M3U or TOML playlist ("" for idle silence)')
        try:
            parse_playlist(Path(path), Path(path).read_text(), settings.programme.shuffle,
                           settings.programme.pause_seconds)
        except (PlaylistError, UnicodeDecodeError) as e:
            raise ConfigError(f"programme.playlist = {path!r}: {e}") from None
    for field, path, kind in renderer_kind(settings.renderer.kind).needs(settings):
        what = {"dir": "folder", "file": "file", "any": "file or folder"}[kind]
        _readable(field, settings.path(path) if path else "", kind,
                  f"the {what} renderer.kind = {settings.renderer.kind!r} loads (`flashtalk-live models download`)")
    o = settings.overlays
    if o.font:
        path, _, index = o.font.partition("#")
        _readable("overlays.font", path, "file", "a .ttf/.otf/.ttc font file (path#N for face N)")
        try:
            ImageFont.truetype(path, 16, index=int(index or 0))
        except (OSError, ValueError) as e:
            raise ConfigError(f"overlays.font = {o.font!r}: not a usable font ({e}); expected a .ttf/.otf/.ttc "
                              "file (path#N for face N of a collection)") from None
    for i, layer in enumerate(o.layers):
        if layer.image:
            _readable(f"overlays.layers[{i}].image", settings.path(layer.image), "file",
                      "a readable PNG/JPEG/WebP image")


def _readable(field: str, path: str, kind: str, expected: str) -> None:
    if not path:
        raise ConfigError(f"{field} is not set; expected {expected}")
    p = Path(path)
    if kind == "dir":
        ok, why = p.is_dir(), "no such folder"
    elif kind == "file":
        ok, why = p.is_file(), "no such file"
    else:
        ok, why = p.exists(), "no such file or folder"
    if ok and not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        ok, why = False, f"not readable by this user (uid {os.getuid()})"
    if not ok:
        raise ConfigError(f"{field} = {path!r}: {why}; expected {expected}")
