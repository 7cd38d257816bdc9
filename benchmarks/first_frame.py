"""The room's first frame after `systemctl start`: spawn `flashtalk-live run`, time its first frame out, N starts.

    python benchmarks/first_frame.py                       # the embedded default (still renderer), 5 starts
    python benchmarks/first_frame.py --config C --runs 9   # a config (a FlashTalk room's still renderer goes first)
    python benchmarks/first_frame.py --imports 12          # and the 12 slowest imports of one start (-X importtime)

Per start, from the spawn (a fresh interpreter, as systemd's): the daemon's `on_air` line (`process_s`, the
process's age from /proc, and its split: `first_frame_s` from the room's build) and the first status that reports a
frame out (the client polls every 20 ms: what an operator's probe sees). The daemon logs its first line once its
imports and settings are done, so the line's own time splits the start into the interpreter and imports, and the
room. Recordings go to a temporary folder; the engine of a FlashTalk config starts loading after the first frame
and is stopped with the daemon. Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from flashtalk_live.client import Client, ClientError  # noqa: E402
from support.stamp import commit  # noqa: E402


def first_log_wall(lines: list[dict[str, Any]]) -> float | None:
    """The wall time (as a Unix time) of the daemon's first log line."""
    for line in lines:
        ts = line.get("timestamp")
        if ts:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return None


def one_start(config: Path | None, work: Path, overrides: list[str], importtime: bool) -> dict[str, Any]:
    state = work / "state"
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["-m", "flashtalk_live", "run"]
    if config is not None:
        cmd += ["-c", str(config)]
    cmd += ["--state-dir", str(state), "--output", str(work / "out.flv"), "--set", "logging.format=json",
            "--set", "metrics.port=0"]
    for o in overrides:
        cmd += ["--set", o]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
    # the child runs in the work folder: this checkout's package first, installed or not (a device copy is not)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    log = work / "daemon.log"  # the log lines and -X importtime's both go to stderr
    t_wall, t0 = time.time(), time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=work)
    polled = None
    with Client(f"ipc://{state}/control.sock", timeout_s=1.0) as c:
        while time.monotonic() - t0 < 60 and proc.poll() is None:
            try:
                if c.status()["broadcast"]["frames_out"] > 0:
                    polled = time.monotonic() - t0
                    break
            except ClientError:
                pass
            time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)
    text = log.read_text(errors="replace")
    if polled is None and proc.returncode not in (0, -signal.SIGTERM):
        raise SystemExit(f"the daemon exited with {proc.returncode} before its first frame:\n{text[-2000:]}")
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass
    on_air = next((x for x in lines if x.get("event") == "on_air"), {})
    first = first_log_wall(lines)
    return {"polled_s": polled, "process_s": on_air.get("process_s"),
            "room_s": on_air.get("first_frame_s"), "chunk_s": on_air.get("first_chunk_s"),
            "first_line_s": None if first is None else first - t_wall,
            "log": text if importtime else ""}


def import_rows(text: str) -> list[tuple[int, int, str]]:
    """-X importtime's lines -> (cumulative us, self us, indented name)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, total, name = line[len("import time:"):].split("|")
            rows.append((int(total), int(own), name.rstrip()))
    return rows


def slowest_imports(text: str, n: int) -> list[tuple[int, int, str]]:
    """The n slowest of the first two levels (what the daemon asks for), by cumulative time."""
    top = [r for r in import_rows(text) if not r[2].startswith("    ")]
    return sorted(top, reverse=True)[:n]


def costliest_own(text: str, n: int) -> list[tuple[int, int, str]]:
    """The n modules of any depth whose own import took longest (where a slow first level's time goes)."""
    return sorted(import_rows(text), key=lambda r: -r[1])[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="a config (default: the embedded demo defaults)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--imports", type=int, default=0, help="one more start under -X importtime: its N slowest")
    args = ap.parse_args(argv)
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="ftl-first-frame-") as tmp:
            rows.append(one_start(args.config, Path(tmp), args.overrides, importtime=False))
    print(f"\nfirst frame after the spawn: {args.config or 'embedded defaults'}, commit {commit()}, "
          f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, {args.runs} starts")
    print("| measure | p50 s | max s |")
    print("|---|---|---|")
    for key, label in (("first_line_s", "spawn -> the daemon's first log line (interpreter, imports, settings)"),
                       ("chunk_s", "the room's build -> its first chunk rendered (`on_air` first_chunk_s)"),
                       ("room_s", "the room's build -> its first frame out (`on_air` first_frame_s)"),
                       ("process_s", "process start -> first frame out (`on_air` process_s)"),
                       ("polled_s", "spawn -> a status reporting a frame out (polled every 20 ms)")):
        vals = [r[key] for r in rows if r[key] is not None]
        print(f"| {label} | {statistics.median(vals):.3f} | {max(vals):.3f} |" if vals else f"| {label} | - | - |")
    if args.imports:
        with tempfile.TemporaryDirectory(prefix="ftl-first-frame-") as tmp:
            r = one_start(args.config, Path(tmp), args.overrides, importtime=True)
        print(f"\nslowest imports of one more start under -X importtime (first frame {r['polled_s']:.3f} s polled):")
        print("| module | cumulative ms | self ms |")
        print("|---|---|---|")
        for total, own, name in slowest_imports(r["log"], args.imports):
            print(f"| {name.strip()} {'(nested)' if name.startswith('  ') else ''} | {total / 1000:.1f} | "
                  f"{own / 1000:.1f} |")
        print("\nlongest own import times, any depth (where the slow ones' time goes):")
        print("| module | depth | self ms | cumulative ms |")
        print("|---|---|---|---|")
        for total, own, name in costliest_own(r["log"], args.imports):
            depth = (len(name) - len(name.lstrip()) - 1) // 2
            print(f"| {name.strip()} | {depth} | {own / 1000:.1f} | {total / 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
