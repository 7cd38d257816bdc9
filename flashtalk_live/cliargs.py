"""The config flags every `flashtalk-live` verb shares (-c/--config, --set, --state-dir, --debug; run's output flags)
and Settings built from them. Stream keys are refused on argv (ps shows argv to every user).

Apart from cli.py so that verb modules (ingest/cli.py, ...) can use them without importing the top-level CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from flashtalk_live.secrets import carries_secret, mask_text
from flashtalk_live.settings import ConfigError, Settings, secret_field
from flashtalk_live.config import load_settings


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
                   help="replace the configured outputs (the default recording too: said on stderr) with the URLs "
                        "in FILE, one per line (# comments); keeps stream keys out of ps")


def _refuse_argv_secrets(args: argparse.Namespace) -> None:
    """Keys on argv are already visible; refuse them loudly rather than run with them (commit message argues why)."""
    for url in getattr(args, "output_urls", None) or []:
        if carries_secret(url):
            raise ConfigError(f"--output {mask_text(url)!r}: {ARGV_SECRET}")
    for item in getattr(args, "overrides", None) or []:
        key = item.split("=", 1)[0].strip()
        if "=" in item and secret_field(tuple(key.split("."))):  # console.token: a secret whatever it looks like
            raise ConfigError(f"--set {key}=****: a secret on the command line is readable by every user of this "
                              f"machine (ps, /proc/PID/cmdline); expected {key}_file or the environment "
                              f"(FLASHTALK_LIVE_{key.upper().replace('.', '__')})")
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
        except UnicodeDecodeError as e:
            raise ConfigError(f"--output-file {path!r}: not UTF-8 text (byte {e.start}); expected one output URL "
                              "per line") from None
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


def replaced_outputs_notice(args: argparse.Namespace) -> str | None:
    """With --output/--output-file, the configured outputs do not run: one line that says so, naming them (masked),
    or None when nothing configured is left out. The flags replace rather than add, so a stream URL file can stand
    for the whole set; this line keeps the replacement from being silent (issue 21)."""
    if not (getattr(args, "output_urls", None) or getattr(args, "output_file", None)):
        return None
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "state_dir", None):
        overrides.append(f"state_dir={json.dumps(args.state_dir)}")
    base = load_settings(args.config, overrides)
    if not base.outputs:
        return None
    flag = "--output-file" if getattr(args, "output_file", None) else "--output"
    names = ", ".join(f"{o.name} ({mask_text(base.path(o.url))})" for o in base.outputs)
    return (f"flashtalk-live: note: {flag} replaces the configured outputs; not running: {names}. "
            f"List them with {flag} too to keep them")


def checked_settings(args: argparse.Namespace) -> Settings:
    """What `run` needs before it starts anything, and what `config show` checks: the same errors, one line each
    (preflight.py: free locks and ports, the files the config names)."""
    # PyAV, Pillow and the playlist parser: only `run` and `config show` pay for them, not every `push` or `status`
    from flashtalk_live import preflight

    settings = settings_from_args(args)
    preflight.check(settings)
    notice = replaced_outputs_notice(args)
    if notice:
        print(notice, file=sys.stderr)
    return settings
