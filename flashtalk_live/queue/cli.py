"""`flashtalk-live spool salvage FILE`: copy the clips still readable in a quarantined spool into the live one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashtalk_live.cliargs import add_config_args, settings_from_args
from flashtalk_live.queue.spool import Spool, SpoolError, salvage


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
    with spool:
        added, lost = salvage(src, spool)
    print(f"salvaged {len(added)} clip(s) from {src} into {spool.db_path} (queued at the tail); "
          f"{lost} row(s) unreadable")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    spool = sub.add_parser("spool", help="spool maintenance")
    spool_sub = spool.add_subparsers(dest="spool_command", metavar="ACTION")
    salv = spool_sub.add_parser("salvage", help="re-queue the readable clips of a quarantined spool file")
    salv.add_argument("file", help="the spool.sqlite3.corrupt-* file the daemon moved aside")
    add_config_args(salv)
    salv.add_argument("--state-dir")
    salv.set_defaults(func=_cmd_salvage)
