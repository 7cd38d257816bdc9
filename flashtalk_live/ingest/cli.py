"""CLI verbs that talk to a running daemon: push, status, clear, cancel, events (added by `register(subparsers)`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from flashtalk_live.client import Client, ClientError, ClientTimeout, EventStream, Rejected

TERMINAL_EVENTS = ("finished", "interrupted", "dropped")


def default_endpoints(settings: Any) -> tuple[str, str]:
    """(control, events) endpoints a client should use: the first configured of each, {state_dir} expanded.

    A tcp endpoint bound to a wildcard address (0.0.0.0, *) is dialled on 127.0.0.1.
    """
    def dialable(ep: str) -> str:
        ep = settings.path(ep)
        for wild in ("tcp://0.0.0.0:", "tcp://*:"):
            if ep.startswith(wild):
                return "tcp://127.0.0.1:" + ep[len(wild):]
        return ep

    return dialable(settings.ingest.control[0]), dialable(settings.ingest.events[0])


def _endpoints(args: argparse.Namespace) -> tuple[str, str]:
    """(control, events) from --endpoint/--events-endpoint, the rest from the config (only if needed)."""
    control = getattr(args, "endpoint", None)
    events = getattr(args, "events_endpoint", None)
    need_control = args.verb != "events"
    need_events = args.verb == "events" or (args.verb == "push" and args.wait)
    if (control or not need_control) and (events or not need_events):
        return control or "", events or ""
    from flashtalk_live.cli import settings_from_args

    c, e = default_endpoints(settings_from_args(args))
    return control or c, events or e


def _add_common(p: argparse.ArgumentParser) -> None:
    try:
        from flashtalk_live.cli import add_config_args
        add_config_args(p)
    except ImportError:  # pragma: no cover - the top-level CLI is absent only in partial installs
        p.add_argument("--config", "-c", default=None)
        p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--state-dir", help="the daemon's state directory (where its ipc sockets live)")
    p.add_argument("--endpoint", help="control endpoint, e.g. ipc:///var/lib/flashtalk-live/control.sock or "
                                      "tcp://127.0.0.1:5555 (default: the config's ingest.control[0])")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply (default 5)")


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _fail(e: ClientError) -> int:
    if isinstance(e, Rejected):
        print(f"flashtalk-live: rejected: {e.code}: {e.reason}", file=sys.stderr)
        return 1
    print(f"flashtalk-live: {e}", file=sys.stderr)
    return 3 if isinstance(e, ClientTimeout) else 1


def _cmd_push(args: argparse.Namespace) -> int:
    control, events = _endpoints(args)
    mode = "play_now" if args.play_now else "insert" if args.insert else "enqueue"
    stream = None
    rc = 0
    with Client(control, timeout_s=args.timeout) as client:
        try:
            if args.wait:
                stream = EventStream(events)
                stream.sync(client, timeout_s=args.timeout)
            waiting: dict[str, str] = {}
            for path in args.files:
                try:
                    ack = client.call(mode, _read(path), id=None if args.no_id else _request_id(),
                                      format=args.format or _fmt(path), sample_rate=args.sample_rate,
                                      channels=args.channels)
                except Rejected as e:
                    print(f"{path}: rejected: {e.code}: {e.reason}", file=sys.stderr)
                    rc = 1
                    continue
                _print({"file": path, "segment_id": ack["segment_id"], "position": ack["position"],
                        "duration_s": ack["duration_s"], "mode": mode, "duplicate": ack.get("duplicate", False)})
                waiting[ack["segment_id"]] = path
            if stream is not None and waiting:
                for ev in stream:
                    sid = ev.get("segment_id")
                    if sid in waiting:
                        _print(ev)
                        if ev.get("type") in TERMINAL_EVENTS:
                            waiting.pop(sid)
                            if ev["type"] != "finished":
                                rc = rc or 4
                            if not waiting:
                                break
        except ClientError as e:
            return _fail(e)
        except OSError as e:
            print(f"flashtalk-live: {e}", file=sys.stderr)
            return 1
        finally:
            if stream is not None:
                stream.close()
    return rc


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _fmt(path: str) -> str | None:
    from flashtalk_live.client import format_for_path

    return None if path == "-" else format_for_path(path)


def _request_id() -> str:
    import uuid

    return uuid.uuid4().hex


def _simple(fn_name: str):
    def run(args: argparse.Namespace) -> int:
        control, _ = _endpoints(args)
        with Client(control, timeout_s=args.timeout) as client:
            try:
                if fn_name == "cancel":
                    reply = client.cancel(args.segment_id)
                else:
                    reply = getattr(client, fn_name)()
            except ClientError as e:
                return _fail(e)
        if fn_name == "status" and not args.json:
            q = reply.get("queue", {})
            print(f"queue: {q.get('pending', 0)} pending, {q.get('playing', 0)} playing, "
                  f"{q.get('queued_seconds', 0)} s queued, spool {q.get('spool_bytes', 0)} bytes")
            for k in ("playing", "pending"):
                for e in reply.get(k, []):
                    print(f"  {k:8s} {e['segment_id']}  {e['duration_s']:.2f} s  {e['mode']}")
            rest = {k: v for k, v in reply.items() if k not in ("queue", "playing", "pending", "v", "ok", "cmd", "ms")}
            if rest:
                print(json.dumps(rest, indent=2, default=str))
        else:
            _print(reply)
        return 0

    return run


def _cmd_events(args: argparse.Namespace) -> int:
    _, events = _endpoints(args)
    types = args.type or None
    try:
        with EventStream(events, types=types, timeout_s=args.idle_timeout) as stream:
            t_end = time.monotonic() + args.duration if args.duration else None
            last = time.monotonic()
            while t_end is None or time.monotonic() < t_end:
                wait = None if t_end is None else max(0.0, t_end - time.monotonic())
                if args.idle_timeout is not None:
                    wait = args.idle_timeout if wait is None else min(wait, args.idle_timeout)
                ev = stream.get(wait)
                if ev is None:
                    # a poll may wake a hair early: only a full idle_timeout without events is an error
                    if args.idle_timeout is not None and time.monotonic() - last >= args.idle_timeout:
                        raise ClientTimeout(f"no event from {events} within {args.idle_timeout:g} s")
                    continue
                last = time.monotonic()
                if ev.get("type") != "pong":
                    _print(ev)
    except ClientError as e:
        return _fail(e)
    return 0


def register(subparsers: Any) -> None:
    """Add push, status, clear, cancel and events to the top-level `flashtalk-live` parser."""
    p = subparsers.add_parser("push", help="send audio clips to a running daemon")
    _add_common(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio file(s): wav, mp3, m4a, aac, flac, ogg/opus, or - for stdin")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--insert", action="store_true", help="play next, after the current clip and earlier inserts")
    g.add_argument("--play-now", action="store_true", help="cut the current clip at the next chunk boundary")
    p.add_argument("--wait", action="store_true", help="follow the events until every pushed clip has finished")
    p.add_argument("--events-endpoint", help="PUB endpoint for --wait (default: the config's ingest.events[0])")
    p.add_argument("--format", help="format hint (wav, mp3, m4a, aac, flac, ogg, opus, pcm_s16le)")
    p.add_argument("--sample-rate", type=int, help="raw pcm_s16le: samples per second")
    p.add_argument("--channels", type=int, help="raw pcm_s16le: channel count")
    p.add_argument("--no-id", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_push, verb="push")

    p = subparsers.add_parser("status", help="queue and daemon status")
    _add_common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_simple("status"), verb="status")

    p = subparsers.add_parser("clear", help="drop every pending clip (the playing one finishes)")
    _add_common(p)
    p.set_defaults(func=_simple("clear"), verb="clear")

    p = subparsers.add_parser("cancel", help="drop one clip by segment id (the playing one is cut)")
    _add_common(p)
    p.add_argument("segment_id")
    p.set_defaults(func=_simple("cancel"), verb="cancel")

    p = subparsers.add_parser("events", help="print the daemon's event feed as JSON lines")
    _add_common(p)
    p.add_argument("--events-endpoint", help="PUB endpoint (default: the config's ingest.events[0])")
    p.add_argument("--type", action="append", help="only these event types (repeatable)")
    p.add_argument("--duration", type=float, help="stop after N seconds")
    p.add_argument("--idle-timeout", type=float, help="fail (exit 3) if no event arrives for N seconds")
    p.set_defaults(func=_cmd_events, verb="events")
