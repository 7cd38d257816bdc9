"""Authentication, trust and limits on the real ingest server: CURVE over tcp, ipc permissions, trusted commands,
rate and in-flight limits, one slow request never blocking another connection."""

from __future__ import annotations

import grp
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
import zmq
import zmq.auth

from flashtalk_live.cli import main as cli_main
from flashtalk_live.client import Client, ClientTimeout, EventStream, Rejected
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.auth import CurveClientKeys, create_keypair
from flashtalk_live.ingest.protocol import encode_request
from flashtalk_live.ingest.server import IngestError, IngestServer
from flashtalk_live.queue.spool import Spool

from support.waiting import until

CURVE = 'ingest.tcp_auth="curve"'


def keys_cli(state_dir: Path, *args: str, capsys) -> dict:
    assert cli_main(["keys", *args, "--set", f'state_dir="{state_dir}"']) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def curve_keys(state_dir: Path, tmp_path: Path, capsys):
    """The server pair and an allowed client pair made by `flashtalk-live keys`, plus a pair nobody allowed."""
    server = keys_cli(state_dir, "server", capsys=capsys)
    alice = keys_cli(state_dir, "client", "alice", "--out", str(tmp_path), capsys=capsys)
    assert Path(alice["allowed_in"]).parent == state_dir / "keys" / "clients"
    assert stat.S_IMODE(os.stat(alice["secret_certificate"]).st_mode) == 0o600
    _, mallory = create_keypair(tmp_path / "other", "mallory")
    return {
        "server": server,
        "alice": CurveClientKeys.load(server["public_certificate"], alice["secret_certificate"]),
        "alice_key": alice["public_key"],
        "mallory": CurveClientKeys.load(server["public_certificate"], mallory),
    }


@pytest.mark.timeout(60)
def test_curve_allowed_key_works_others_refused_and_server_keeps_serving(running, curve_keys, state_dir, tmp_path,
                                                                         capsys):
    r = running(CURVE)
    with Client(r.tcp, timeout_s=5, curve=curve_keys["alice"]) as alice:
        assert alice.ping()["pong"]
        for curve in (None, curve_keys["mallory"]):  # no keys at all; a key nobody allowed
            with Client(r.tcp, timeout_s=1, curve=curve) as stranger, pytest.raises(ClientTimeout):
                stranger.ping()
        assert alice.status()["ok"]
        tcp_events = [e for e in r.server.event_endpoints if e.startswith("tcp://")][0]
        with EventStream(tcp_events, curve=curve_keys["alice"]) as ev:
            ev.sync(alice)  # the event feed is CURVE too
    # a client allowed while the server runs (a new file in client_keys_dir) gets in without a restart
    bob = keys_cli(state_dir, "client", "bob", "--out", str(tmp_path), capsys=capsys)
    bob_keys = CurveClientKeys.load(curve_keys["server"]["public_certificate"], bob["secret_certificate"])
    with Client(r.tcp, timeout_s=5, curve=bob_keys) as c:
        assert c.ping()["pong"]
    # the keys CLI refuses to replace the server pair silently
    assert cli_main(["keys", "server", "--set", f'state_dir="{state_dir}"']) == 1


def test_remote_bind_without_auth_is_refused_unless_explicitly_allowed(make_settings):
    s = make_settings('ingest.tcp_auth="none"', 'ingest.control=["tcp://0.0.0.0:0"]', 'ingest.events=[]')
    srv = IngestServer(s.expanded(s.ingest), s.encoder, None, EventBus())  # type: ignore[arg-type]  # refused before the spool is needed
    with pytest.raises(IngestError) as ei:
        srv.start()
    msg = str(ei.value)
    assert "\n" not in msg and "refusing to bind tcp://0.0.0.0:0 without authentication" in msg
    assert "ingest.allow_unauthenticated_remote" in msg and 'tcp_auth = "curve"' in msg
    s = make_settings('ingest.tcp_auth="none"', "ingest.allow_unauthenticated_remote=true",
                      'ingest.control=["tcp://0.0.0.0:0"]', 'ingest.events=[]')
    spool = Spool.from_settings(s.expanded(s.queue), s.encoder, s.storage)
    with capture_logs() as logs, IngestServer(s.expanded(s.ingest), s.encoder, spool, EventBus()):
        pass
    spool.close()
    warned = [e for e in logs if e["event"] == "unauthenticated_remote_endpoint"]
    assert warned and warned[0]["log_level"] == "warning"
    # CURVE (the default) binds 0.0.0.0 without complaint: the key pair is made on first start
    s = make_settings('ingest.control=["tcp://0.0.0.0:0"]', 'ingest.events=[]')
    spool = Spool.from_settings(s.expanded(s.queue), s.encoder, s.storage)
    with IngestServer(s.expanded(s.ingest), s.encoder, spool, EventBus()):
        pass
    spool.close()
    assert Path(s.path(s.ingest.server_key)).is_file()


def test_ipc_socket_files_get_mode_and_group(running):
    group = grp.getgrgid(os.getgid()).gr_name
    r = running("ingest.ipc_mode=0o600", f'ingest.ipc_group="{group}"')
    for ep in (r.ipc, r.events):
        st = os.stat(ep[len("ipc://"):])
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == os.getgid()
    r2 = running(f'state_dir="{Path(r.ipc[len("ipc://"):]).parent / "b"}"')
    assert stat.S_IMODE(os.stat(r2.ipc[len("ipc://"):]).st_mode) == 0o660  # the default


def test_commands_that_touch_the_server_need_a_trusted_peer(running, curve_keys, state_dir):
    calls = []

    def handler(call):
        calls.append(call)
        return {"done": True}

    handlers = {"output_add": handler, "output_remove": handler, "set_avatar": handler}
    r = running(CURVE, f'ingest.trusted_client_keys=["{curve_keys["alice_key"]}"]', handlers=handlers)
    plain = running(f'state_dir="{state_dir / "plain"}"', handlers=handlers)  # plain loopback tcp
    # an allowed but untrusted CURVE client
    _, sec = create_keypair(Path(r.settings.path(r.settings.ingest.client_keys_dir)), "carol")
    carol = Client(r.tcp, timeout_s=5, curve=CurveClientKeys.load(curve_keys["server"]["public_certificate"], sec))
    plain_client = Client(plain.tcp, timeout_s=5)
    for c in (plain_client, carol):
        for cmd, fields in (("output_add", {"name": "x", "url": "/tmp/x.flv"}), ("output_remove", {"name": "x"}),
                            ("set_avatar", {"image": "/etc/passwd"})):
            with pytest.raises(Rejected) as ei:
                c.call(cmd, **fields)
            assert ei.value.code == "unauthorized", (cmd, ei.value)
        assert c.call("set_avatar", b"\x89PNG...", prompt="bytes are fine")["done"]  # image bytes: any peer
    assert len(calls) == 2
    with Client(r.ipc) as local, Client(r.tcp, curve=curve_keys["alice"]) as alice:
        assert local.call("output_add", name="x", url="/tmp/x.flv")["done"]
        assert alice.call("set_avatar", image="portrait.png")["done"]
    assert len(calls) == 4
    for c in (plain_client, carol):
        c.close()


@pytest.mark.parametrize("first, second, burst", [
    ("tcp", "ipc", 3),  # another peer
    ("ipc", "ipc", 2),  # the same process, another connection
])
def test_rate_limit_is_per_connection(running, first, second, burst):
    r = running("ingest.rate_per_s=0.01", f"ingest.rate_burst={burst}")
    with Client(getattr(r, first)) as a, Client(getattr(r, second)) as b:
        for _ in range(burst):
            assert a.ping()["pong"]
        with pytest.raises(Rejected) as ei:
            a.ping()
        assert ei.value.code == "rate_limited" and "ingest.rate_per_s" in ei.value.reason
        for _ in range(burst):  # b has a full bucket of its own
            assert b.ping()["pong"]


def test_text_limits(running):
    r = running("ingest.max_prompt_chars=10", "ingest.max_id_chars=8",
                handlers={"set_avatar": lambda call: {"prompt": call.args.prompt}})
    with Client(r.ipc) as c:
        assert c.call("set_avatar", prompt="short")["prompt"] == "short"
        for fields, code in (({"prompt": "x" * 11}, "prompt_too_long"), ({"id": "y" * 9}, "id_too_long")):
            with pytest.raises(Rejected) as ei:
                c.call("set_avatar", **fields)
            assert ei.value.code == code, ei.value
        with pytest.raises(Rejected) as ei:
            c.cancel("z" * 9)
        assert ei.value.code == "id_too_long"


@pytest.mark.timeout(60)
def test_a_slow_request_blocks_neither_other_connections_nor_the_server_and_inflight_is_capped(running):
    release, entered = threading.Event(), threading.Event()

    def slow(call):  # a slow command of the table (any will do)
        entered.set()
        assert release.wait(30)
        return {"slow": True}

    r = running("ingest.max_inflight_per_peer=2", handlers={"outputs": slow})
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(r.tcp)
    try:
        for i in range(3):  # pipelined on one connection: the third is over its in-flight cap
            sock.send_multipart([b""] + encode_request("outputs", id=f"s{i}"))
        assert entered.wait(10)
        assert sock.poll(10_000)
        busy = json.loads(sock.recv_multipart()[-1])
        assert (busy["ok"], busy["code"]) == (False, "busy")
        with Client(r.ipc) as other:  # served while the slow handler still holds a worker
            assert other.ping()["pong"] and other.status()["ok"]
        assert not release.is_set()
        release.set()
        got = [json.loads(sock.recv_multipart()[-1]) for _ in range(2) if sock.poll(10_000)]
        assert [g["id"] for g in got] == ["s0", "s1"] and all(g["slow"] for g in got)  # in order
    finally:
        release.set()
        sock.close(0)


@pytest.mark.timeout(60)
def test_a_revoked_clients_next_request_times_out_instead_of_blocking_in_the_send(running, curve_keys, state_dir):
    """The server cuts a revoked key's connection and refuses its reconnect; libzmq then drops the client socket's
    only connection, and a DEALER send with no connection blocks for ever (a CI run hung 300 s in that state, in
    tests/e2e/test_bounded_costs.py)."""
    r = running(CURVE)
    with Client(r.tcp, timeout_s=2, curve=curve_keys["alice"]) as alice:
        assert alice.ping()["pong"]
        (state_dir / "keys" / "clients" / "alice.key").unlink()
        sock = alice._sock
        assert sock is not None
        # the state that hung: nothing left to send on (the cut, then the refused reconnect)
        until(lambda: not sock.poll(0, zmq.POLLOUT), 20, "alice's socket left without a connection")
        with pytest.raises(ClientTimeout, match="could not be sent"):  # the old send never returned
            alice.ping()


def test_a_revocation_noticed_by_a_handshake_still_reaches_the_ingest_thread(tmp_path):
    """The folder's change may be seen first by a handshake (the ZAP thread): the revoked key must still be handed to
    the ingest thread, which closes its connections."""
    from flashtalk_live.ingest.auth import KeyRing

    d = tmp_path / "clients"
    pub_alice, _ = create_keypair(d, "alice")
    pub_bob, _ = create_keypair(d, "bob")
    ring = KeyRing(str(d), [], [])
    bob = zmq.auth.load_certificate(str(pub_bob))[0]
    assert ring.callback("curve", bob)
    pub_bob.unlink()
    os.utime(d, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a coarse clock must not hide the change
    assert not ring.callback("curve", bob)  # the handshake re-read the folder: refused at once
    assert ring.take_revoked() == {bob}
    assert ring.name_of(bob) == "bob" and ring.take_revoked() == set()


def test_a_certificate_still_being_copied_is_skipped_then_taken_once_whole(tmp_path):
    """An operator copies carol.key into the folder while the daemon looks (CI caught the ingest thread dying on
    the half-written file): the partial file is skipped and logged once, and the whole file is taken at the next
    look, although writing into it does not change the folder's mtime."""
    from flashtalk_live.ingest.auth import KeyRing

    from support.logs import capture_logs, log_lines

    d = tmp_path / "clients"
    create_keypair(d, "alice")
    pub_carol, _ = create_keypair(tmp_path / "elsewhere", "carol")
    whole = pub_carol.read_bytes()
    carol = zmq.auth.load_certificate(str(pub_carol))[0]
    logs = capture_logs()
    ring = KeyRing(str(d), [], [])  # its logger is bound now: to the buffer
    (d / "carol.key").write_bytes(whole[: len(whole) // 3])  # the copy has begun
    for _ in range(3):
        ring.refresh()
        assert not ring.callback("curve", carol)
    folder = os.stat(d).st_mtime_ns
    (d / "carol.key").write_bytes(whole)  # the copy is done: the file changed, not the folder
    os.utime(d, ns=(folder, folder))
    assert ring.take_revoked() == set()
    assert ring.callback("curve", carol) and ring.name_of(carol) == "carol"
    assert [e["file"] for e in log_lines(logs, "client_key_unreadable")] == ["carol.key"]


@pytest.mark.parametrize("existing_mode", [None, 0o644])
def test_a_secret_certificate_is_never_on_disk_readable_by_others(tmp_path, monkeypatch, existing_mode):
    """The secret key is written into a file that is 0600 from its first byte: pyzmq writes it with the umask's mode,
    so a chmod afterwards leaves a moment in which another user can open it (and read it for as long as they like).
    Also for `keys client --force` over an older, wider file."""
    import zmq.auth.certs

    seen: dict[str, int] = {}
    write = zmq.auth.certs._write_key_file

    def recording(path, *a, **kw):
        write(path, *a, **kw)
        if str(path).endswith(".key_secret"):
            seen["mode"] = stat.S_IMODE(os.stat(path).st_mode)

    monkeypatch.setattr(zmq.auth.certs, "_write_key_file", recording)
    tmp_path.chmod(0o755)
    if existing_mode is not None:
        old = tmp_path / "bob.key_secret"
        old.write_text("old")
        old.chmod(existing_mode)
    umask = os.umask(0o022)
    try:
        _, secret = create_keypair(tmp_path, "bob")
    finally:
        os.umask(umask)
    assert seen["mode"] & 0o077 == 0, oct(seen["mode"])
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


@pytest.mark.parametrize("endpoint", ["tipc://{5560,0,0}", "tipc://{5560,0}@0.0.0", "ws://0.0.0.0:5555",
                                      "TCP://0.0.0.0:5555"])
def test_an_endpoint_neither_ipc_nor_tcp_is_refused_not_taken_for_a_trusted_ipc_one(endpoint, tmp_path):
    """Every endpoint that is not tcp:// was given the ipc ZAP domain: its peers were named "ipc" and trusted
    (ingest.ipc_trusted), with no key and no socket file permissions. tipc (built into this libzmq) reaches the
    whole cluster: such an endpoint is the operator's mistake to refuse (exit 2), never a trusted door."""
    from flashtalk_live.ingest.auth import EndpointRefused, Security
    from flashtalk_live.settings import IngestSettings

    sec = Security(IngestSettings(server_key=str(tmp_path / "server.key_secret"), client_keys_dir=None))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    try:
        with pytest.raises(EndpointRefused, match="ingest.control"):
            sec.prepare_bind(sock, endpoint, "ingest.control")
    finally:
        sock.close(0)
        ctx.term()


def test_a_certificate_overwritten_in_place_revokes_the_key_it_held(tmp_path):
    """Rotating a client's key by copying its new certificate over the old file (`cp new/alice.key clients/`) writes
    the file, not the folder: the folder's mtime stays, and the old key was still allowed, handshake after handshake,
    with its open connections kept, until a SIGHUP."""
    from flashtalk_live.ingest.auth import KeyRing

    d = tmp_path / "clients"
    old_pub, _ = create_keypair(d, "alice")
    new_pub, _ = create_keypair(tmp_path / "new", "alice")
    old_key, _ = zmq.auth.load_certificate(str(old_pub))
    new_key, _ = zmq.auth.load_certificate(str(new_pub))
    ring = KeyRing(str(d), [], [])
    assert ring.callback("curve", old_key)
    folder_mtime = os.stat(d).st_mtime_ns
    with open(old_pub, "r+b") as f:  # what cp does to an existing file: same inode, new contents
        f.truncate(0)
        f.write(new_pub.read_bytes())
    os.utime(old_pub, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert os.stat(d).st_mtime_ns == folder_mtime
    assert ring.callback("curve", new_key)
    assert not ring.callback("curve", old_key)
    assert ring.take_revoked() == {old_key}


def test_config_show_refuses_an_endpoint_neither_ipc_nor_tcp_as_the_bind_does(tmp_path):
    from flashtalk_live.config import load_settings
    from flashtalk_live.preflight import check_endpoints
    from flashtalk_live.settings import ConfigError

    s = load_settings(overrides=[f'state_dir="{tmp_path}"', 'ingest.control=["tipc://{5560,0,0}"]'], environ={})
    with pytest.raises(ConfigError, match="ingest.control: refusing to bind tipc://"):
        check_endpoints(s)


@pytest.mark.timeout(60)
def test_revoking_a_key_leaves_alone_a_connection_that_reused_its_closed_connections_descriptor(running, curve_keys,
                                                                                                  state_dir, tmp_path):
    """The descriptor a key's requests came from was remembered after its connection ended: another key's connection
    given the same descriptor (the kernel hands out the lowest free one) was shut down when the first key was
    revoked, before it had sent anything that would overwrite the entry."""
    import subprocess
    import sys

    from support.logs import capture_logs, log_lines

    r = running(CURVE)
    _, bob_secret = create_keypair(state_dir / "keys" / "clients", "bob")
    cap = r.server._caps[0]
    ctx = zmq.Context()
    alice = ctx.socket(zmq.DEALER)
    alice.setsockopt(zmq.LINGER, 0)
    curve_keys["alice"].apply(alice)
    held: list[int] = []
    bob = None
    try:
        alice.connect(r.tcp)
        alice.send_multipart([b""] + encode_request("ping"))
        assert alice.poll(5000)
        alice.recv_multipart()
        (alice_fd,) = r.server._curve_fds
        alice.close(0)
        until(lambda: not cap.open, 10, "alice's connection seen to end")
        while True:  # every free descriptor below alice's old one taken: the next accept gets hers
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd >= alice_fd:
                os.close(fd)
                break
            held.append(fd)
        logs = capture_logs()
        # bob, in a process of his own (his descriptors are not this one's): connected, nothing sent
        bob = subprocess.Popen([sys.executable, "-c", (
            "import sys, zmq\n"
            "from flashtalk_live.ingest.auth import CurveClientKeys\n"
            f"k = CurveClientKeys.load({curve_keys['server']['public_certificate']!r}, {str(bob_secret)!r})\n"
            "s = zmq.Context().socket(zmq.DEALER); k.apply(s); s.connect(sys.argv[1]); sys.stdin.read()\n"),
            r.tcp], stdin=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        until(lambda: len(cap.open) == 1, 20, "bob's connection accepted")
        assert cap.open == {alice_fd}, "precondition: bob's connection has alice's old descriptor"
        (state_dir / "keys" / "clients" / "alice.key").unlink()
        until(lambda: log_lines(logs, "key_revoked"), 10, "alice revoked")
        assert [e["control_connections_closed"] for e in log_lines(logs, "key_revoked")] == [0]
    finally:
        for fd in held:
            os.close(fd)
        if bob is not None:
            bob.kill()
            bob.wait()
        ctx.term()


def test_an_ipc_socket_file_is_never_open_to_more_than_its_owner_before_its_mode_is_set(running, monkeypatch):
    """The socket file was made with the umask's mode and given ingest.ipc_mode (and ipc_group) only after the bind:
    under a permissive umask anyone could connect in between, and a connection made then stays, trusted
    (ingest.ipc_trusted), after the chmod."""
    from flashtalk_live.ingest.auth import Security

    seen: dict[str, int] = {}
    after = Security.after_bind

    def recording(self, endpoint):
        if endpoint.startswith("ipc://"):
            seen[endpoint] = stat.S_IMODE(os.stat(endpoint[len("ipc://"):]).st_mode)
        return after(self, endpoint)

    monkeypatch.setattr(Security, "after_bind", recording)
    umask = os.umask(0)
    try:
        r = running("ingest.ipc_mode=0o600")
    finally:
        os.umask(umask)
    assert seen and all(mode & 0o077 == 0 for mode in seen.values()), {k: oct(v) for k, v in seen.items()}
    for ep in (r.ipc, r.events):
        assert stat.S_IMODE(os.stat(ep[len("ipc://"):]).st_mode) == 0o600


def test_keys_revoke_says_so_when_the_config_still_allows_the_key(state_dir, tmp_path, capsys):
    """`keys revoke alice` removed alice.key and reported the key revoked ("new handshakes are refused at once")
    while ingest.client_keys (or trusted_client_keys) still listed it: the daemon kept accepting it."""
    from flashtalk_live.ingest.auth import KeyRing

    keys_cli(state_dir, "server", capsys=capsys)
    alice = keys_cli(state_dir, "client", "alice", "--out", str(tmp_path), capsys=capsys)
    listed = f'ingest.trusted_client_keys=["{alice["public_key"]}"]'
    code = cli_main(["keys", "revoke", "alice", "--set", f'state_dir="{state_dir}"', "--set", listed])
    err = capsys.readouterr().err
    assert code != 0 and "trusted_client_keys" in err, err
    ring = KeyRing(str(state_dir / "keys" / "clients"), [], [alice["public_key"]])
    assert alice["public_key"].encode() in ring.allowed  # what the daemon still does: the CLI must not say revoked
