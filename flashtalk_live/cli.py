"""The `flashtalk-live` command line: run the daemon, show config, talk to a running daemon, manage models."""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib
import json
import os
import sys
from typing import Any

from flashtalk_live import __version__
from flashtalk_live.cliargs import add_config_args, add_output_args, checked_settings, settings_from_args
from flashtalk_live.log import install_excepthooks, masked_traceback
from flashtalk_live.secrets import mask_text
from flashtalk_live.settings import ConfigError, masked_dump

# Modules that add their own verbs through `register(subparsers)`; each is optional so a partial install still runs.
VERB_MODULES = (
    "flashtalk_live.ingest.cli",
    "flashtalk_live.ingest.keys_cli",
    "flashtalk_live.checkpoints.cli",
    "flashtalk_live.engine.cli",
    "flashtalk_live.queue.cli",
)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = checked_settings(args)  # before the heavy imports: a config error answers at once
    # the daemon's modules load only for `run`, after the config is checked (other verbs stay fast)
    from flashtalk_live import log
    from flashtalk_live.daemon import run_daemon

    log.configure(settings.logging.format, settings.logging.level)
    # SIGHUP reads the same file and overrides again (docs/operations.md: what a reload changes)
    rc = run_daemon(settings, duration_s=args.duration, reload=lambda: settings_from_args(args))
    # Everything is closed and flushed: keep the interpreter's final garbage collection off the daemon's objects.
    # It walked them all for 0.3-1.3 s on a loaded 2-core box (py-spy: gc_collect_main after `stopped`), most of
    # SIGTERM to exit (issue 21); frozen objects are still freed, only not searched for cycles.
    gc.freeze()
    return rc


def _cmd_config_show(args: argparse.Namespace) -> int:
    settings = checked_settings(args)
    data = masked_dump(settings)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_toml(data)
    return 0


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _print_toml(data: dict[str, Any]) -> None:
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
    for k, v in data.items():
        if k in tables or k in arrays or v is None:
            continue
        print(f"{k} = {_toml_value(v)}")
    for name, table in tables.items():
        print(f"\n[{name}]")
        for k, v in table.items():
            if v is not None:
                print(f"{k} = {_toml_value(v)}")
    for name, items in arrays.items():
        for item in items:
            print(f"\n[[{name}]]")
            for k, v in item.items():
                if v is not None:
                    print(f"{k} = {_toml_value(v)}")


def build_parser(verbs: bool = True) -> argparse.ArgumentParser:
    """The command line; `verbs` False leaves out VERB_MODULES' verbs (`run` needs none of their imports)."""
    parser = argparse.ArgumentParser(prog="flashtalk-live", description=__doc__)
    parser.add_argument("--version", action="version", version=f"flashtalk-live {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the (masked) traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (embedded demo defaults without --config)")
    add_config_args(run)
    run.add_argument("--state-dir", help="where the spool, sockets and recordings live")
    add_output_args(run)
    run.add_argument("--duration", type=float, default=None, help="stop cleanly after N seconds (demos, soak runs)")
    run.set_defaults(func=_cmd_run)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the effective config, secrets masked")
    add_config_args(show)
    show.add_argument("--state-dir")
    add_output_args(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_cmd_config_show)

    for name in VERB_MODULES if verbs else ():
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(sub)
    return parser


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest sub-command parser the arguments chose (`run`, `config show`, ...)."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None and sub.dest else None
        if sub is None or name not in sub.choices:
            return parser
        parser = sub.choices[name]


def _unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> None:
    """Refuse unknown arguments with the sub-command's usage (not the top level's) and the option meant."""
    options = [o for a in parser._actions for o in a.option_strings]
    hints = []
    for arg in extra:
        close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.6) if arg.startswith("-") else []
        if close:
            hints.append(f"{close[0]} for {arg.split('=', 1)[0]}")
    parser.error("unrecognized arguments: " + " ".join(extra) + (f" (did you mean {', '.join(hints)}?)" if hints else ""))


def _command(argv: list[str]) -> str | None:
    """The sub-command named (the first argument that is not an option: the top level's take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    install_excepthooks()
    # `run` builds its parser without the other verbs' modules (the client, the spool's salvage, the checkpoint
    # tools): their imports came before the room's first frame (docs/performance.md: the still renderer's first frame)
    parser = build_parser(verbs=_command(sys.argv[1:] if argv is None else argv) != "run")
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unrecognized(_chosen_parser(parser, args), extra)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:  # field, (masked) value, what is expected; a traceback would add nothing
        print(f"flashtalk-live: {mask_text(str(e))}", file=sys.stderr)
        if args.debug:
            print(masked_traceback(e), file=sys.stderr, end="")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `flashtalk-live status | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - one masked line; the traceback only when asked for
        if args.debug:
            print(masked_traceback(e), file=sys.stderr, end="")
        print(f"flashtalk-live: {mask_text(f'{type(e).__name__}: {e}')} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
