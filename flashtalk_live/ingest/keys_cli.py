"""`flashtalk-live keys`: make the CURVE key pairs of the daemon (server) and of its tcp clients."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import zmq.auth

from flashtalk_live.cliargs import add_config_args, settings_from_args
from flashtalk_live.ingest.auth import create_keypair, parse_key
from flashtalk_live.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from_args(args)


def _cmd_server(args: argparse.Namespace) -> int:
    s = _settings(args)
    secret = Path(s.path(s.ingest.server_key)).expanduser()
    if not secret.name.endswith(".key_secret"):
        print(f"flashtalk-live keys: ingest.server_key {secret} must end in .key_secret", file=sys.stderr)
        return 2
    if secret.exists() and not args.force:
        print(f"flashtalk-live keys: {secret} exists (--force makes a new one; every client then needs the new "
              "public certificate)", file=sys.stderr)
        return 1
    public, secret = create_keypair(secret.parent, secret.name[: -len(".key_secret")])
    key, _ = zmq.auth.load_certificate(str(public))
    print(json.dumps({"public_certificate": str(public), "secret_certificate": str(secret),
                      "public_key": key.decode(), "next": "give the public certificate to every tcp client"}))
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    s = _settings(args)
    out = Path(args.out)
    if (out / f"{args.name}.key_secret").exists() and not args.force:
        print(f"flashtalk-live keys: {out / (args.name + '.key_secret')} exists (--force overwrites)", file=sys.stderr)
        return 1
    public, secret = create_keypair(out, args.name)
    key, _ = zmq.auth.load_certificate(str(public))
    allowed = None
    if not args.no_allow and s.ingest.client_keys_dir:
        d = Path(s.path(s.ingest.client_keys_dir)).expanduser()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        allowed = d / public.name
        shutil.copyfile(public, allowed)
    print(json.dumps({"public_certificate": str(public), "secret_certificate": str(secret), "public_key": key.decode(),
                      "allowed_in": str(allowed) if allowed else None,
                      "next": "to let this client change outputs or name server files, add public_key to "
                              "ingest.trusted_client_keys"}))
    return 0


def _public(item: str) -> bytes | None:
    try:
        return parse_key(item)
    except (ValueError, OSError):
        return None


REVOKE_WITHIN_S = 1.0  # the ingest thread looks at the folder at least this often (IngestServer._revoke_keys)


def _cmd_revoke(args: argparse.Namespace) -> int:
    s = _settings(args)
    if not s.ingest.client_keys_dir:
        print("flashtalk-live keys: ingest.client_keys_dir is not set: keys listed in ingest.client_keys are revoked "
              "by removing them from the config and sending SIGHUP", file=sys.stderr)
        return 2
    name = args.name
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        print(f"flashtalk-live keys: {name[:80]!r} is not a certificate name", file=sys.stderr)
        return 2
    d = Path(s.path(s.ingest.client_keys_dir)).expanduser()
    cert = d / f"{name}.key"
    if not cert.is_file():
        known = sorted(p.stem for p in d.glob("*.key")) if d.is_dir() else []
        print(f"flashtalk-live keys: no certificate {name!r} in {d}; there: {', '.join(known) or 'none'}",
              file=sys.stderr)
        return 1
    key, _ = zmq.auth.load_certificate(str(cert))
    cert.unlink()
    still = [field for field, items in (("ingest.client_keys", s.ingest.client_keys),
                                        ("ingest.trusted_client_keys", s.ingest.trusted_client_keys))
             if key in {_public(k) for k in items}]
    if still:  # the daemon keeps allowing a key its config lists: saying "revoked" would be a lie
        print(f"flashtalk-live keys: removed {cert}, but {' and '.join(still)} still list(s) this key "
              f"({key.decode()[:8]}...): it stays allowed until it is removed there and the daemon gets SIGHUP",
              file=sys.stderr)
        return 1
    print(json.dumps({"revoked": name, "public_key": key.decode()[:8], "removed": str(cert),
                      "takes_effect_within_s": REVOKE_WITHIN_S,
                      "note": "new handshakes are refused at once; its open connections are closed within that time"}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="make CURVE key pairs for tcp endpoints")
    ks = keys.add_subparsers(dest="keys_command", metavar="WHAT")
    srv = ks.add_parser("server", help="the daemon's key pair, at ingest.server_key")
    add_config_args(srv)
    srv.add_argument("--state-dir")
    srv.add_argument("--force", action="store_true", help="replace an existing key pair")
    srv.set_defaults(func=_cmd_server)
    cli = ks.add_parser("client", help="a client key pair; its public certificate goes into ingest.client_keys_dir")
    cli.add_argument("name", help="file name of the pair: NAME.key and NAME.key_secret")
    add_config_args(cli)
    cli.add_argument("--state-dir")
    cli.add_argument("--out", default=".", help="folder for the pair (default: here)")
    cli.add_argument("--no-allow", action="store_true", help="do not copy the public certificate into client_keys_dir")
    cli.add_argument("--force", action="store_true", help="overwrite an existing pair")
    cli.set_defaults(func=_cmd_client)
    rev = ks.add_parser("revoke", help="remove a client's public certificate from client_keys_dir: the running "
                                       "daemon refuses it and closes its connections")
    rev.add_argument("name", help="the certificate's name: NAME.key in ingest.client_keys_dir")
    add_config_args(rev)
    rev.add_argument("--state-dir")
    rev.set_defaults(func=_cmd_revoke)
