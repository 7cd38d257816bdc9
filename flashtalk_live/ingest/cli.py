"""CLI verbs that talk to a running daemon (added by `register(subparsers)`): `push` for the audio commands, `events`
for the feed, and one verb per other command of the table (ingest/commands.py), its arguments from the command's
fields: required ones positional, the rest `--flags`.

The daemon is found from the config (`-c`, $FLASHTALK_LIVE_CONFIG, else the built-in default state directory), never
from the current directory. Exit codes: EXIT_* below.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import types
import typing
import uuid
from typing import Any, Callable, Iterator

from flashtalk_live.client import Client, ClientError, ClientTimeout, EventStream, NoDaemon, Rejected, \
    format_for_path, probe
from flashtalk_live.ingest.commands import AUDIO_COMMANDS, COMMANDS, Command
from flashtalk_live.cliargs import add_config_args, settings_from_args
from flashtalk_live.secrets import carries_secret, mask_text
from flashtalk_live.settings import OUTPUT_URL_ENV, IngestSettings

TERMINAL_EVENTS = ("finished", "interrupted", "dropped")
EXIT_OK, EXIT_ERROR, EXIT_NO_DAEMON, EXIT_CLIP_NOT_FINISHED, EXIT_NO_REPLY, EXIT_DAEMON_STOPPED = 0, 1, 3, 4, 5, 6
EXIT_USAGE = 2  # a stream key on argv: refused before anything is sent
WAIT_PROBE_S = 2.0  # push --wait: how often to check the daemon is still there while no event comes


def default_endpoints(ingest: IngestSettings) -> tuple[str, str]:
    """(control, events) endpoints a client should use: the first configured of each (`ingest` with its {state_dir}
    expanded: Settings.expanded).

    A tcp endpoint bound to a wildcard address (0.0.0.0, *) is dialled on 127.0.0.1.
    """
    def dialable(ep: str) -> str:
        for wild in ("tcp://0.0.0.0:", "tcp://*:"):
            if ep.startswith(wild):
                return "tcp://127.0.0.1:" + ep[len(wild):]
        return ep

    return dialable(ingest.control[0]), dialable(ingest.events[0])


def _endpoints(args: argparse.Namespace) -> tuple[str, str]:
    """(control, events) from --endpoint/--events-endpoint, the rest from the config (only if needed)."""
    control = getattr(args, "endpoint", None)
    events = getattr(args, "events_endpoint", None)
    need_control = args.verb != "events"
    need_events = args.verb == "events" or (args.verb == "push" and args.wait)
    if (control or not need_control) and (events or not need_events):
        return control or "", events or ""
    settings = settings_from_args(args)
    c, e = default_endpoints(settings.expanded(settings.ingest))
    return control or c, events or e


def _add_common(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--state-dir", help="the daemon's state directory (where its ipc sockets live)")
    p.add_argument("--endpoint", help="control endpoint, e.g. ipc:///var/lib/flashtalk-live/control.sock or "
                                      "tcp://127.0.0.1:5555 (default: the config's ingest.control[0])")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply (default 5)")


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


# The request fields `push` fills from its flags: a refusal that names one names the flag to the CLI's user.
PUSH_FLAGS = {"sample_rate": "--sample-rate", "channels": "--channels", "format": "--format", "text": "--text"}


def _in_flags(text: str, flags: dict[str, str]) -> str:
    """A daemon's refusal reason with the request fields it names ('sample_rate') as this verb's flags."""
    if not flags:
        return text
    return re.sub(r"'?\b(" + "|".join(map(re.escape, flags)) + r")\b'?", lambda m: flags[m.group(1)], text)


def _fail(e: ClientError, flags: dict[str, str] | None = None) -> int:
    if isinstance(e, Rejected):
        flags = flags or {}
        reason = _in_flags(e.reason, flags)
        flag = flags.get(e.field or "")
        where = "" if not e.field or (flag and flag in reason) else f" ({flag})" if flag else f" (field {e.field})"
        print(f"flashtalk-live: rejected: {e.code}: {reason}{where}", file=sys.stderr)
        return EXIT_ERROR
    print(f"flashtalk-live: {e}", file=sys.stderr)
    if isinstance(e, NoDaemon):
        return EXIT_NO_DAEMON
    return EXIT_NO_REPLY if isinstance(e, ClientTimeout) else EXIT_ERROR


# -- push: the audio commands --------------------------------------------------------------------------

def _push_mode(args: argparse.Namespace) -> str:
    return next((m for m in sorted(AUDIO_COMMANDS) if getattr(args, m, False)), "enqueue")


def _cmd_push(args: argparse.Namespace) -> int:
    control, events = _endpoints(args)
    mode = _push_mode(args)
    stream = None
    rc = EXIT_OK
    with Client(control, timeout_s=args.timeout) as client:
        try:
            if args.wait:
                if (why := probe(control)) is not None:
                    raise NoDaemon(control, why)
                stream = EventStream(events)
                stream.sync(client, timeout_s=args.timeout)
            waiting: dict[str, str] = {}
            if args.stream:
                rc = _push_stream(client, args, mode, waiting)
            for path in [] if args.stream else args.files:
                try:
                    ack = client.call(mode, _read(path), id=None if args.no_id else uuid.uuid4().hex,
                                      format=args.format or _fmt(path), sample_rate=args.sample_rate,
                                      channels=args.channels, text=args.text, name=args.name)
                except Rejected as e:
                    reason = _in_flags(e.reason, PUSH_FLAGS)
                    flag = PUSH_FLAGS.get(e.field or "")
                    where = f" ({flag})" if flag and flag not in reason else ""
                    print(f"{path}: rejected: {e.code}: {reason}{where}", file=sys.stderr)
                    rc = EXIT_ERROR
                    continue
                _print({"file": path, "segment_id": ack["segment_id"], "position": ack["position"],
                        "duration_s": ack["duration_s"], "mode": mode, "duplicate": ack.get("duplicate", False)})
                waiting[ack["segment_id"]] = path
            if stream is not None and waiting:
                rc = _wait_for(stream, control, waiting) or rc
        except ClientError as e:
            return _fail(e)
        except OSError as e:
            print(f"flashtalk-live: {e}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            if stream is not None:
                stream.close()
    return rc


def _wait_for(stream: EventStream, control: str, waiting: dict[str, str]) -> int:
    """Follow the feed until every clip in `waiting` ended; EXIT_DAEMON_STOPPED when the daemon goes away first."""
    rc = EXIT_OK
    while waiting:
        ev = stream.get(WAIT_PROBE_S)
        if ev is None:
            why = probe(control)
            if why is None:
                continue
            return _daemon_gone(control, waiting, why)
        if ev.get("type") == "stopping":
            return _daemon_gone(control, waiting, "it is stopping")
        sid = ev.get("segment_id")
        if sid in waiting:
            _print(ev)
            if ev.get("type") in TERMINAL_EVENTS and not ev.get("requeued"):  # requeued: it replays after play_now
                waiting.pop(sid)
                if ev["type"] != "finished":
                    rc = EXIT_CLIP_NOT_FINISHED
    return rc


def _daemon_gone(control: str, waiting: dict[str, str], why: str) -> int:
    print(f"flashtalk-live: the daemon at {control} went away ({why}) before {len(waiting)} clip(s) finished: "
          f"{', '.join(waiting.values())}. They stay queued and air when it runs again.", file=sys.stderr)
    return EXIT_DAEMON_STOPPED


def _pieces(path: str, size: int = 65536) -> Iterator[bytes]:
    """The file's bytes as they arrive (a pipe from a TTS process: each read returns what is there)."""
    fd = sys.stdin.buffer.fileno() if path == "-" else os.open(path, os.O_RDONLY)
    try:
        while piece := os.read(fd, size):
            yield piece
    finally:
        if path != "-":
            os.close(fd)


def _push_stream(client: Client, args: argparse.Namespace, mode: str, waiting: dict[str, str]) -> int:
    """push --stream: one streamed clip from one file or stdin, sent as it is read (clip_open/append/close)."""
    if len(args.files) != 1:
        print("flashtalk-live: push --stream takes one FILE (or - for stdin)", file=sys.stderr)
        return EXIT_ERROR
    path = args.files[0]
    fmt = args.format or _fmt(path) or "pcm_s16le"
    try:
        with client.stream(_pieces(path), format=fmt, sample_rate=args.sample_rate, channels=args.channels,
                           mode=mode, text=args.text, name=args.name, duration_s=args.duration) as s:
            _print({"file": path, "segment_id": s.segment_id, "mode": mode, "stream": True})
            waiting[str(s.segment_id)] = path
            s.send_all()
            done = s.close()
    except Rejected as e:
        print(f"{path}: rejected: {e.code}: {e.reason}", file=sys.stderr)
        return EXIT_ERROR
    _print({"file": path, "segment_id": done["segment_id"], "duration_s": done["duration_s"],
            "bytes": done["received_bytes"], "parts": done["parts"], "closed": True})
    return EXIT_OK


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _fmt(path: str) -> str | None:
    return None if path == "-" else format_for_path(path)


# -- one verb per other command ------------------------------------------------------------------------

def _scalar(annotation: Any) -> Any:
    """int/float/str/bool/dict/Literal behind Optional[...]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _is_secret(f: Any) -> bool:
    return bool(isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("secret"))


class ArgvSecret(ValueError):
    """A value that carries a stream key was given on the command line."""


def _secret_value(args: argparse.Namespace, name: str) -> str | None:
    """A field that may carry a stream key: from --NAME-file (one line; - for stdin), else $FLASHTALK_LIVE_OUTPUT_URL,
    else argv only when it carries no key (a file path): ps shows argv to every user."""
    value, path = getattr(args, name, None), getattr(args, f"{name}_file", None)
    if value is not None and carries_secret(value):
        raise ArgvSecret(f"{name} {mask_text(value)!r}: a stream key on the command line is readable by every user "
                         f"of this machine (ps, /proc/PID/cmdline); expected --{name.replace('_', '-')}-file FILE "
                         f"(- for stdin) or ${OUTPUT_URL_ENV}")
    if path is not None:
        text = sys.stdin.read() if path == "-" else open(path).read()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if len(lines) != 1:
            raise ArgvSecret(f"--{name.replace('_', '-')}-file {path}: expected exactly one line, got {len(lines)}")
        return lines[0]
    return value if value is not None else os.environ.get(OUTPUT_URL_ENV) or None


def _add_fields(p: argparse.ArgumentParser, command: Command) -> None:
    for name, f in command.args.model_fields.items():
        kind = _scalar(f.annotation)
        kw: dict[str, Any] = {"help": f.description}
        if _is_secret(f):
            flag = f"--{name.replace('_', '-')}-file"
            p.add_argument(name, metavar=name.upper(), nargs="?", default=None,
                           help=f"{f.description}; a file path here, a stream URL (it carries its key) through "
                                f"{flag} or ${OUTPUT_URL_ENV}, never on the command line")
            p.add_argument(flag, dest=f"{name}_file", metavar="FILE", help=f"read {name.upper()} from FILE (- for stdin)")
            continue
        if kind is bool:
            p.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_true", **kw)
            continue
        if typing.get_origin(kind) is typing.Literal:
            kw["choices"] = typing.get_args(kind)
        elif kind in (int, float):
            kw["type"] = kind
        elif typing.get_origin(kind) in (dict, tuple) or kind is dict:
            kw["type"] = json.loads
        if f.is_required():
            p.add_argument(name, metavar=name.upper(), **kw)
        else:
            p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, **kw)
    if command.data == "image":
        p.add_argument("--file", dest="data_file", help="send this picture's bytes (PNG/JPEG) as the data frame")


STATUS_ROWS = 5  # queue rows the summary lists per state; `status --json` has them all


def _bytes(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


def status_summary(reply: dict[str, Any]) -> list[str]:
    """The status reply as a short summary a person reads (`status`; the whole reply with `status --json`)."""
    lines = []
    if "state" in reply:
        lines.append(f"state: {reply['state']}, up {reply.get('uptime_s', 0):.0f} s; on air: "
                     f"{reply.get('on_air') or 'programme/idle'}")
    q = reply.get("queue", {})
    played = q.get("on_air_played_s")
    lines.append(f"queue: {q.get('pending', 0)} pending, {q.get('playing', 0)} playing, "
                 f"{q.get('queued_seconds', 0)} s queued" + (f" ({played} s of the clip on air aired)" if played else "")
                 + f", spool {_bytes(q.get('spool_bytes', 0))}")
    for k in ("playing", "pending"):
        rows = reply.get(k, [])
        for e in rows[:STATUS_ROWS]:
            lines.append(f"  {k:8s} {e['segment_id']}  {e['duration_s']:.2f} s  {e['mode']}"
                         + (f"  {e['name']}" if e.get("name") else ""))
        if len(rows) > STATUS_ROWS:
            more = (q.get(k) or len(rows)) - STATUS_ROWS
            lines.append(f"  ... {more} more {k}")
    r = reply.get("renderer")
    if isinstance(r, dict):
        err = f", last error: {r['last_error']}" if r.get("last_error") else ""
        # whose frames are on air; the renderer on duty renders the look-ahead and airs seconds later
        on_air = r.get("on_air") or r.get("active")
        nxt = f", {r['active']} next" if r.get("active") and r["active"] != on_air else ""
        lines.append(f"renderer: {on_air}{nxt} (preferred: {r.get('preferred') or 'none'}), "
                     f"failures {r.get('failures', 0)}{err}")
    b = reply.get("broadcast")
    if isinstance(b, dict):
        ra = reply.get("render_ahead") or {}
        lines.append(f"broadcast: {b.get('media_time_s', 0)} s aired, buffered {ra.get('buffered_s', 0)} s, "
                     f"underruns {b.get('underrun_episodes', 0)} ({b.get('underrun_frames', 0)} frames), "
                     f"A/V skew {b.get('av_skew_s', 0)} s, render rtf {_num(b.get('render_rtf'))}")
    outs = reply.get("outputs")
    if isinstance(outs, list):
        up = sum(1 for o in outs if o.get("state") == "up")
        lines.append(f"outputs: {up} of {len(outs)} up")
        for o in outs:
            err = f"  error: {o['last_error']}" if o.get("last_error") else ""
            lines.append(f"  {o.get('name')}  {o.get('kind')}  {o.get('state')}  {o.get('bitrate_bps', 0) / 1000:.0f} "
                         f"kb/s  reconnects {o.get('reconnects', 0)}  dropped {o.get('dropped_packets', 0)}{err}")
    st = reply.get("storage")
    if isinstance(st, dict):
        lines.append(f"storage: {_bytes(st.get('free_bytes'))} free ({st.get('free_percent')} %)"
                     + (", DEGRADED: new clips refused" if st.get("degraded") else ""))
    ov = reply.get("overlays")
    if isinstance(ov, dict):
        lines.append(f"overlays on air: {', '.join(ov.get('on_air') or []) or 'none'}")
    if reply.get("metrics_port"):
        lines.append(f"metrics/console port: {reply['metrics_port']}")
    lines.append("(everything: flashtalk-live status --json)")
    return lines


def _print_status(reply: dict[str, Any]) -> None:
    print("\n".join(status_summary(reply)))


# Human-readable output for some verbs (without --json); the others print the reply as one JSON line.
PRINTERS: dict[str, Callable[[dict[str, Any]], None]] = {"status": _print_status}


def _command_verb(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        control, _ = _endpoints(args)
        try:
            # argparse's values are untyped: the daemon validates them against the command's args model
            fields: dict[str, Any] = {n: _secret_value(args, n) if _is_secret(f) else getattr(args, n)
                                      for n, f in command.args.model_fields.items()}
            fields = {n: v for n, v in fields.items() if v is not None}
            data = _read(args.data_file) if getattr(args, "data_file", None) else None
        except ArgvSecret as e:
            print(f"flashtalk-live: {e}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as e:
            print(f"flashtalk-live: {e}", file=sys.stderr)
            return EXIT_ERROR
        with Client(control, timeout_s=args.timeout) as client:
            try:
                reply = client.call(command.name, data, **fields)
            except ClientError as e:
                return _fail(e)
        printer = PRINTERS.get(command.name)
        if printer is not None and not args.json:
            printer(reply)
        else:
            _print(reply)
        return EXIT_OK

    return run


def _cmd_events(args: argparse.Namespace) -> int:
    _, events = _endpoints(args)
    types_ = args.type or None
    try:
        if (why := probe(events)) is not None:
            raise NoDaemon(events, why)
        with EventStream(events, types=types_, timeout_s=args.idle_timeout) as stream:
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
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add push, events and a verb per non-audio command of the table to the top-level `flashtalk-live` parser."""
    p = subparsers.add_parser("push", help="send audio clips to a running daemon")
    _add_common(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio file(s): wav, mp3, m4a, aac, flac, ogg/opus, or - for stdin")
    g = p.add_mutually_exclusive_group()
    for name in sorted(AUDIO_COMMANDS - {"enqueue"}):
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_true", help=COMMANDS[name].description)
    p.add_argument("--wait", action="store_true", help="follow the events until every pushed clip has finished "
                   f"(exit {EXIT_CLIP_NOT_FINISHED} if one was not, {EXIT_DAEMON_STOPPED} if the daemon stops first)")
    p.add_argument("--events-endpoint", help="PUB endpoint for --wait (default: the config's ingest.events[0])")
    p.add_argument("--format", help="format hint (wav, mp3, m4a, aac, flac, ogg, opus, pcm_s16le)")
    p.add_argument("--sample-rate", type=int, help="raw pcm_s16le: samples per second")
    p.add_argument("--channels", type=int, help="raw pcm_s16le: channel count")
    p.add_argument("--text", help="the clip's transcript, captioned on air while it plays")
    p.add_argument("--name", help="a name for people: shown in status, the clip's events and the console")
    p.add_argument("--stream", action="store_true", help="stream one clip as its audio arrives (a TTS pipe on "
                   "stdin: push --stream - --sample-rate 22050 --channels 1); pcm_s16le (default), mp3 or ogg (Opus)")
    p.add_argument("--duration", type=float, help="--stream: the clip's expected length in seconds (admission "
                   "plans with it)")
    p.add_argument("--no-id", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_push, verb="push")

    for command in COMMANDS.values():
        if command.data in ("audio", "stream"):  # push, push --stream
            continue
        verb = command.name.replace("_", "-")
        aliases = [command.name] if verb != command.name else []
        p = subparsers.add_parser(verb, aliases=aliases, help=command.description)
        _add_common(p)
        _add_fields(p, command)
        if command.name in PRINTERS:
            p.add_argument("--json", action="store_true", help="print the reply as JSON")
        else:
            p.set_defaults(json=True)
        p.set_defaults(func=_command_verb(command), verb=command.name)

    p = subparsers.add_parser("events", help="print the daemon's event feed as JSON lines")
    _add_common(p)
    p.add_argument("--events-endpoint", help="PUB endpoint (default: the config's ingest.events[0])")
    p.add_argument("--type", action="append", help="only these event types (repeatable)")
    p.add_argument("--duration", type=float, help="stop after N seconds")
    p.add_argument("--idle-timeout", type=float, help=f"fail (exit {EXIT_NO_REPLY}) if no event arrives for N seconds")
    p.set_defaults(func=_cmd_events, verb="events")
