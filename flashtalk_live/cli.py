"""The `flashtalk-live` command line: run the daemon, show config, talk to a running daemon, manage models."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from flashtalk_live import __version__
from flashtalk_live.log import install_excepthooks, masked_traceback
from flashtalk_live.secrets import carries_secret, mask_text
from flashtalk_live.settings import ConfigError, Settings, load_settings, masked_dump
from flashtalk_live.statelock import check_free

# Modules that add their own verbs through `register(subparsers)`; each is optional so a partial install still runs.
VERB_MODULES = (
    "flashtalk_live.ingest.cli",
    "flashtalk_live.checkpoints.cli",
    "flashtalk_live.engine.cli",
)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=os.environ.get("FLASHTALK_LIVE_CONFIG"),
                   help="TOML config (default: $FLASHTALK_LIVE_CONFIG, else the embedded demo defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set encoder.preset=ultrafast (repeatable; beats file and env)")
    # SUPPRESS: without it this sub-command default would overwrite a `flashtalk-live --debug ...` given before it
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the (masked) traceback of an unexpected error")


ARGV_SECRET = ("a stream key on the command line is readable by every user of this machine (ps, /proc/PID/cmdline) "
               "and stays in shell history; expected --output-file FILE (one URL per line), "
               "FLASHTALK_LIVE_OUTPUTS='[{\"name\": ..., \"url\": ...}]' or [[outputs]] in the config file")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", dest="output_urls", action="append", default=[], metavar="PATH",
                   help="replace the configured outputs: a .flv/.mp4 recording path (stream URLs carry keys: use "
                        "--output-file)")
    p.add_argument("--output-file", metavar="FILE",
                   help="replace the configured outputs with the URLs in FILE, one per line (# comments); keeps "
                        "stream keys out of ps")


def _refuse_argv_secrets(args: argparse.Namespace) -> None:
    """Keys on argv are already visible; refuse them loudly rather than run with them (commit message argues why)."""
    for url in getattr(args, "output_urls", None) or []:
        if carries_secret(url):
            raise ConfigError(f"--output {mask_text(url)!r}: {ARGV_SECRET}")
    for item in getattr(args, "overrides", None) or []:
        if carries_secret(item):
            raise ConfigError(f"--set {mask_text(item)!r}: {ARGV_SECRET}")


def _outputs_from_args(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    urls = list(getattr(args, "output_urls", None) or [])
    path = getattr(args, "output_file", None)
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"--output-file {path!r}: cannot read it ({e.strerror}); expected a readable file "
                              "with one output URL per line") from None
        urls += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not urls:
            raise ConfigError(f"--output-file {path!r}: no URL in it; expected one output URL per line")
    if not urls:
        return None
    return [{"name": f"out{i}", "url": u} for i, u in enumerate(urls)]


def settings_from_args(args: argparse.Namespace) -> Settings:
    _refuse_argv_secrets(args)
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "state_dir", None):
        overrides.append(f"state_dir={json.dumps(args.state_dir)}")
    outputs = _outputs_from_args(args)
    return load_settings(args.config, overrides, replace=None if outputs is None else {"outputs": outputs})


def checked_settings(args: argparse.Namespace) -> Settings:
    """What `run` needs before it starts anything, and what `config show` checks: the same errors, one line each."""
    settings = settings_from_args(args)
    check_free(settings.path(settings.state_dir))
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    settings = checked_settings(args)  # before the heavy imports: a config error answers at once
    from flashtalk_live import log
    from flashtalk_live.daemon import run_daemon

    log.configure(settings.logging.format, settings.logging.level)
    return run_daemon(settings, duration_s=args.duration)


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


def build_parser() -> argparse.ArgumentParser:
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

    for name in VERB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    install_excepthooks()
    parser = build_parser()
    args = parser.parse_args(argv)
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
