"""Who may talk to the daemon and what they may touch.

* tcp:// endpoints use ZeroMQ CURVE by default (`ingest.tcp_auth`): the server's key pair comes from a secret
  certificate file (made at first start when missing), the allowed clients' public keys from a folder of public
  certificates and/or a list. pyzmq's ThreadAuthenticator is the ZAP handler.
* Plain tcp (`tcp_auth = "none"`) is allowed on loopback only, unless `ingest.allow_unauthenticated_remote`.
* ipc:// socket files get `ingest.ipc_mode` and `ingest.ipc_group` right after bind.
* Every endpoint has a ZAP domain naming its class, so each message's ZAP User-Id tells who sent it
  (`peer_of(frame)`): "ipc", "tcp" (plain) or "curve:<public key>". ipc peers are trusted by default, CURVE peers
  only when their key is in `ingest.trusted_client_keys`, plain tcp peers never.
* Which commands and fields need a trusted peer is the command table's (ingest/commands.py: `authorize`); the
  files a trusted peer names must lie inside configured folders (`confine_path`, `confine_output_file`).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from flashtalk_live.ingest.commands import LOCAL_PEER, Peer  # noqa: F401 - the peer type lives with the table
from flashtalk_live.ingest.protocol import ProtocolError
from flashtalk_live.log import Throttle, get_logger
from flashtalk_live.settings import IngestSettings

# ZAP domains: one per endpoint class, returned as the User-Id of NULL-mechanism peers.
DOMAIN_IPC, DOMAIN_TCP, DOMAIN_CURVE = "ipc", "tcp", "curve"
CURVE_PREFIX = "curve:"


class EndpointRefused(RuntimeError):
    """An endpoint that must not be bound as configured (the message says what to set)."""


# -- keys ------------------------------------------------------------------------------------------------------

def create_keypair(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (secret, mode 0600) into `directory`; returns both paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    # pyzmq opens the secret file with the umask's mode: it must be 0600 before the key is written into it (a
    # chmod afterwards leaves a moment in which another user can open it), also when --force reuses a wider file.
    fd = os.open(d / f"{name}.key_secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    public, secret = zmq.auth.create_certificates(str(d), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def parse_key(item: str) -> bytes:
    """A public key given as 40 Z85 characters or as the path of a certificate file; returned as Z85 bytes."""
    s = item.strip()
    p = Path(s).expanduser()
    if p.is_file():
        public, _ = zmq.auth.load_certificate(str(p))
        return public
    if len(s) == 40:
        try:
            if len(z85.decode(s.encode("ascii"))) == 32:
                return s.encode("ascii")
        except (ValueError, UnicodeEncodeError):
            pass
    raise ValueError(f"client key {s[:60]!r} is neither 40 Z85 characters nor a certificate file")


def _dir_mtime(directory: str | None) -> object:
    """What tells that the folder's certificates changed: the folder's mtime (a file added, removed or renamed) and
    each certificate's own (a file written over in place, `cp new/alice.key clients/`, leaves the folder's alone)."""
    if not directory:
        return 0
    try:
        files = []
        with os.scandir(directory) as it:
            for e in it:
                if e.name.endswith(".key"):
                    try:
                        st = e.stat()
                    except OSError:
                        continue
                    files.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return os.stat(directory).st_mtime_ns, tuple(sorted(files))
    except OSError:
        return 0


def _load_named(directory: str | None) -> tuple[dict[bytes, str], set[str]]:
    """Public key -> certificate name (file name without .key) of every certificate in the folder, and the names of
    the files that could not be read as one (half-copied, or not a certificate)."""
    if not directory or not os.path.isdir(directory):
        return {}, set()
    out: dict[bytes, str] = {}
    bad: set[str] = set()
    for path in sorted(Path(directory).glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(str(path))
        except (OSError, ValueError):
            bad.add(path.name)
            continue
        out[public] = path.stem
    return out, bad


class KeyRing:
    """The client keys allowed over CURVE; the ZAP callback.

    Revocation: every handshake (and `take_revoked()`, which the ingest thread calls at least once a second)
    re-reads the folder when its mtime changed, so a certificate removed from it refuses the next handshake at once;
    the keys no longer allowed (from the folder, or from the config's lists on SIGHUP: `reload`) are kept until the
    ingest thread takes them and closes their open connections, whichever thread noticed the change."""

    def __init__(self, directory: str | None, keys: Iterable[str], trusted: Iterable[str],
                 refusals: Throttle | None = None) -> None:
        self.directory = directory
        self.trusted = {parse_key(k) for k in trusted}
        self.listed = {parse_key(k) for k in keys} | self.trusted
        self.log = get_logger("auth")
        self._mtime: object = None
        self._named: dict[bytes, str] = {}
        self._from_dir: set[bytes] = set()
        self._unreadable: set[str] = set()
        self._revoked: set[bytes] = set()  # revoked, connections not yet closed
        self._lock = threading.Lock()
        self._read_folder(_dir_mtime(directory))
        # a refused handshake costs the knocker nothing: a few lines per interval, the rest counted
        self.refusals = refusals or Throttle(self.log)

    @property
    def allowed(self) -> set[bytes]:
        return self.listed | self._from_dir

    def name_of(self, key: bytes) -> str:
        """The certificate name of a key (its file in the folder), else the key's first 8 characters."""
        return self._named.get(key) or key[:8].decode("ascii", "replace")

    def refresh(self, force: bool = False) -> None:
        """Re-read the folder if it changed since the last read, or held a file that was not a certificate (a copy
        still being written changes the file, not the folder); keys no longer allowed wait in `take_revoked()`
        (whichever thread noticed the change: a handshake's or the ingest thread's look)."""
        with self._lock:
            mtime = _dir_mtime(self.directory)
            if mtime == self._mtime and not force:
                return
            before = self.allowed
            self._read_folder(mtime)
            self._revoked |= before - self.allowed

    def _read_folder(self, mtime: object) -> None:
        named, bad = _load_named(self.directory)
        for name in sorted(bad - self._unreadable):  # once per file: the next reads retry it quietly
            self.log.warning("client_key_unreadable", file=name, note="not a certificate (yet): skipped, read "
                             "again until it is one or goes")
        self._unreadable = bad
        # A folder with an unreadable file is read again at the next look (mtime None), so a half-copied
        # certificate is taken once it is whole.
        self._mtime, self._from_dir = (None if bad else mtime), set(named)
        self._named = {**self._named, **named}  # a removed key keeps its name for the revocation's log line

    def reload(self, keys: Iterable[str], trusted: Iterable[str]) -> None:
        """New lists from the configuration (SIGHUP); keys no longer allowed wait in `take_revoked()`."""
        new_trusted = {parse_key(k) for k in trusted}
        new_listed = {parse_key(k) for k in keys} | new_trusted
        with self._lock:
            before = self.allowed
            self.trusted, self.listed = new_trusted, new_listed
            self._revoked |= before - self.allowed
        self.refresh(force=True)  # SIGHUP re-reads the folder whatever its mtime says

    def take_revoked(self) -> set[bytes]:
        """The keys revoked since the last call (their connections are the ingest thread's to close)."""
        self.refresh()
        with self._lock:
            out, self._revoked = self._revoked, set()
        return out

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            self.refresh()  # one stat: a certificate removed a moment ago refuses this handshake
        except Exception as e:  # noqa: BLE001 - an exception here would end the ZAP thread: every handshake hangs
            self.refusals("error", "client_keys_unreadable", "folder", error=repr(e)[:200])
        ok = key in self.allowed
        if not ok:
            self.refusals("warning", "curve_client_refused", "curve", key=key[:40].decode("ascii", "replace"))
        return ok


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, with the endpoint's domain as the User-Id of NULL peers and "curve:KEY" for CURVE."""

    def curve_user_id(self, client_public_key: bytes) -> str:
        return CURVE_PREFIX + z85.encode(client_public_key).decode("ascii")

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6 and msg[0] == b"1.0" and msg[5] == b"NULL":
            # NULL is only configured on ipc and (loopback or explicitly unsafe) plain tcp: accept, naming the class.
            self.zap_socket.send_multipart([b"1.0", msg[1], b"200", b"OK", msg[2], b""])
            return
        await super().handle_zap_message(msg)


@dataclass(frozen=True)
class CurveClientKeys:
    """What a CURVE client needs: the server's public key and its own key pair (all Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_cert: str | os.PathLike[str], client_secret_cert: str | os.PathLike[str]) -> "CurveClientKeys":
        """From the server's public certificate and the client's secret certificate (`flashtalk-live keys`)."""
        server_public, _ = zmq.auth.load_certificate(os.fspath(server_cert))
        public, secret = zmq.auth.load_certificate(os.fspath(client_secret_cert))
        if not secret:
            raise ValueError(f"{client_secret_cert}: no secret key (give the .key_secret file)")
        return cls(server_public, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Set before connect()."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


# -- endpoints -------------------------------------------------------------------------------------------------

def tcp_host(endpoint: str) -> str:
    """The host part of tcp://HOST:PORT (brackets of IPv6 removed)."""
    rest = endpoint[len("tcp://"):]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


def is_loopback(endpoint: str) -> bool:
    host = tcp_host(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: may reach the network


def check_unauthenticated(endpoint: str, cfg: IngestSettings, field: str) -> None:
    """EndpointRefused for a plain (tcp_auth = "none") tcp endpoint beyond loopback, unless the operator accepted the
    risk; the bind and `config show` (preflight.py) ask this same rule."""
    if endpoint.startswith("tcp://") and cfg.tcp_auth == "none" and not is_loopback(endpoint) \
            and not cfg.allow_unauthenticated_remote:
        raise EndpointRefused(
            f"{field}: refusing to bind {endpoint} without authentication: anyone on the network could "
            f'drive the room. Use ingest.tcp_auth = "curve" (the default) or a loopback address; '
            f"ingest.allow_unauthenticated_remote = true accepts the risk")


class Security:
    """Configures each bind of the ingest sockets and names the peer of each message. start() before binding."""

    def __init__(self, ingest: IngestSettings) -> None:
        self.cfg = ingest  # {state_dir} expanded (Settings.expanded)
        self.log = get_logger("auth")
        self._auth: _Authenticator | None = None
        self.keys: KeyRing | None = None
        self.server_public: bytes | None = None
        self._server_secret: bytes | None = None

    def start(self, ctx: zmq.Context) -> None:
        cfg = self.cfg
        try:
            self.keys = KeyRing(cfg.client_keys_dir or None, cfg.client_keys, cfg.trusted_client_keys,
                                Throttle(self.log, cfg.log_interval_s, cfg.log_burst))
        except (ValueError, OSError) as e:
            raise EndpointRefused(f"ingest.client_keys / trusted_client_keys: {e}") from None
        self._auth = _Authenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback(DOMAIN_CURVE, self.keys)

    def allows(self, key: str) -> bool:
        """Whether a CURVE key (Z85) is still allowed (a message from a revoked key is dropped)."""
        return self.keys is not None and key.encode("ascii") in self.keys.allowed

    def refresh_keys(self) -> set[bytes]:
        """Keys revoked since the last look (a certificate removed from the folder, a key gone from the config)."""
        return self.keys.take_revoked() if self.keys is not None else set()

    def name_of(self, key: bytes) -> str:
        return self.keys.name_of(key) if self.keys is not None else key[:8].decode("ascii", "replace")

    def flush_logs(self) -> None:
        """Write the count of refused handshakes held back this interval (the ingest thread calls this)."""
        if self.keys is not None:
            self.keys.refusals.flush()

    def stop(self) -> None:
        if self.keys is not None:
            self.keys.refusals.flush(force=True)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _server_keys(self) -> tuple[bytes, bytes]:
        if self._server_secret is None:
            path = Path(self.cfg.server_key).expanduser()
            if not path.exists():
                if not path.name.endswith(".key_secret"):
                    raise EndpointRefused(f"ingest.server_key {path} does not exist (make one with "
                                          f"`flashtalk-live keys server --dir {path.parent}`)")
                public_path, _ = create_keypair(path.parent, path.name[: -len(".key_secret")])
                self.log.warning("server_key_created", secret=str(path), public=str(public_path),
                                 hint="give the public certificate to CURVE clients")
            try:
                public, secret = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError) as e:
                raise EndpointRefused(f"ingest.server_key {path}: not a certificate ({e})") from None
            if not secret:
                raise EndpointRefused(f"ingest.server_key {path}: has no secret key (give the .key_secret file)")
            self.server_public, self._server_secret = public, secret
        assert self.server_public is not None
        return self.server_public, self._server_secret

    def prepare_bind(self, sock: zmq.Socket, endpoint: str, field: str) -> None:
        """Set the mechanism and ZAP domain that this endpoint's connections will use (options apply per bind)."""
        cfg = self.cfg
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(cfg.handshake_timeout_s * 1000))
        sock.setsockopt(zmq.BACKLOG, int(cfg.connection_backlog))
        # Heartbeats drop a peer that died without closing (its descriptor would be held forever otherwise).
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(cfg.heartbeat_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(cfg.heartbeat_timeout_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(cfg.heartbeat_timeout_s * 1000))
        if endpoint.startswith("tcp://") and cfg.tcp_auth == "curve":
            public, secret = self._server_keys()
            sock.curve_server = True
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.zap_domain = DOMAIN_CURVE.encode()
            return
        if not endpoint.startswith(("tcp://", "ipc://")):
            # Only ipc:// gets the ipc domain (its peers trusted, its file's permissions their guard): any other
            # transport (tipc:// reaches the cluster) would be an unauthenticated, trusted door.
            raise EndpointRefused(f"{field}: refusing to bind {endpoint}: only ipc:// and tcp:// endpoints are "
                                  "served (tcp:// with CURVE beyond loopback)")
        sock.curve_server = False
        if endpoint.startswith("tcp://"):
            check_unauthenticated(endpoint, cfg, field)
            if not is_loopback(endpoint):
                self.log.warning("unauthenticated_remote_endpoint", endpoint=endpoint, field=field,
                                 hint="ingest.allow_unauthenticated_remote is set: anyone who reaches this port "
                                      "can enqueue, clear and cancel")
            sock.zap_domain = DOMAIN_TCP.encode()
        else:
            sock.zap_domain = DOMAIN_IPC.encode()

    def after_bind(self, endpoint: str) -> None:
        """Give an ipc socket file its configured mode and group."""
        if not endpoint.startswith("ipc://"):
            return
        path = endpoint[len("ipc://"):]
        if not path or path.startswith("@"):  # abstract namespace: no file
            return
        try:
            if self.cfg.ipc_group:
                os.chown(path, -1, grp.getgrnam(self.cfg.ipc_group).gr_gid)
            os.chmod(path, self.cfg.ipc_mode)
        except (KeyError, OSError) as e:
            raise EndpointRefused(f"ingest.ipc_mode/ipc_group on {path}: {e}") from None

    def peer_of(self, frame: zmq.Frame) -> Peer:
        """Who sent the message this frame belongs to, from its ZAP User-Id and Peer-Address."""
        try:
            user = str(frame.get("User-Id"))
        except zmq.ZMQError:
            user = ""
        try:
            address = str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            address = ""
        if user.startswith(CURVE_PREFIX):
            key = user[len(CURVE_PREFIX):]
            trusted = self.keys is not None and key.encode("ascii") in self.keys.trusted
            return Peer("curve", key, address, trusted)
        if user == DOMAIN_IPC:
            return Peer("ipc", None, address, bool(self.cfg.ipc_trusted))
        return Peer("tcp", None, address, False)  # plain tcp, or unknown: never trusted


# -- paths a trusted peer may name ------------------------------------------------------------------------------

def _inside(path: str, dirs: Iterable[str]) -> bool:
    real = os.path.realpath(path)
    for d in dirs:
        root = os.path.realpath(d)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _has_dotdot(path: str) -> bool:
    return ".." in Path(path).parts


def confine_path(name: str, dirs: list[str], field: str) -> Path:
    """An existing file inside one of `dirs` (symlinks resolved); one error for missing and forbidden alike."""
    refused = ProtocolError("forbidden_path", f"not an allowed file: it must be an existing file inside {field}")
    if not isinstance(name, str) or not name or "\0" in name or _has_dotdot(name) or not dirs:
        raise refused
    candidates = [name] if os.path.isabs(name) else [os.path.join(d, name) for d in dirs]
    for c in candidates:
        if _inside(c, dirs) and os.path.isfile(c):
            return Path(os.path.realpath(c))
    raise refused


def confine_output_file(url: str, dirs: list[str]) -> None:
    """A file output may only write inside output_policy.file_dirs (no '..', symlinks resolved)."""
    if not os.path.isabs(url) or _has_dotdot(url) or not _inside(url, dirs):
        raise ProtocolError("forbidden_path",
                            "file outputs added at run time must be absolute paths inside output_policy.file_dirs")
