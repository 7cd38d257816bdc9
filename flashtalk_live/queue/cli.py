"""`flashtalk-live spool salvage FILE`: copy the clips still readable in a quarantined spool into the live one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashtalk_live.cliargs import add_config_args, settings_from_args
from flashtalk_live.queue.salvage import salvage, spool_validator
from flashtalk_live.queue.spool import Spool, SpoolError


def _cmd_salvage(args: argparse.Namespace) -> int:
    src = Path(args.file)
    if not src.is_file():
        print(f"flashtalk-live: no spool file at {src}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    try:
        spool = Spool.from_settings(settings.expanded(settings.queue), settings.encoder, settings.storage,
                                    recover=False)
    except SpoolError as e:
        print(f"flashtalk-live: cannot open the spool of {settings.path(settings.state_dir)}: {e.reason} "
              "(stop the daemon first: salvage writes into its queue)", file=sys.stderr)
        return 3
    ing = settings.ingest
    with spool:
        report = salvage(src, spool, spool_validator(spool, ing.max_clip_seconds, ing.min_clip_seconds),
                         max_meta_depth=ing.max_meta_depth,
                         log=lambda line: print(f"flashtalk-live: {line}", file=sys.stderr))
    print(f"salvaged {len(report.added)} clip(s) from {src} into {spool.db_path} (queued at the tail); "
          f"{report.duplicates} already salvaged; {len(report.skipped)} row(s) refused; "
          f"{report.unreadable} row(s) unreadable")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    spool = sub.add_parser("spool", help="spool maintenance")
    spool_sub = spool.add_subparsers(dest="spool_command", metavar="ACTION")
    salv = spool_sub.add_parser("salvage", help="re-queue the readable clips of a quarantined spool file")
    salv.add_argument("file", help="the spool.sqlite3.corrupt-* file the daemon moved aside")
    add_config_args(salv)
    salv.add_argument("--state-dir")
    salv.set_defaults(func=_cmd_salvage)
