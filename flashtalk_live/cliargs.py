"""The config flags every `flashtalk-live` verb shares (-c/--config, --set, --state-dir) and Settings built from them.

Apart from cli.py so that verb modules (ingest/cli.py, ...) can use them without importing the top-level CLI.
"""

from __future__ import annotations

import argparse
import json
import os

from flashtalk_live.settings import Settings, load_settings


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=os.environ.get("FLASHTALK_LIVE_CONFIG"),
                   help="TOML config (default: $FLASHTALK_LIVE_CONFIG, else the embedded demo defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set encoder.preset=ultrafast (repeatable; beats file and env)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "state_dir", None):
        overrides.append(f"state_dir={json.dumps(args.state_dir)}")
    return load_settings(args.config, overrides)
