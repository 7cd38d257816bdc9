"""Which lead-in ramp (video.lead_in_frames) gives a clip the shortest head start, from measured render times.

    python benchmarks/lead_in_ramps.py --json daemon.json            # a daemon_gpu.py run's render rate and times
    python benchmarks/lead_in_ramps.py --rate 0.69 --short 12=0.435,16=0.518,20=0.568,24=0.696

A clip cut into a ramp of shorter chunks airs once the ramp's first chunk is rendered, but each later chunk must be
rendered within the air of those before it: the head start is the admission's own chunk-by-chunk schedule
(`Admission.first_chunks_s`, playout/admission.py: the planning margin and its slack included), computed here for
every non-falling ramp of the measured lengths (a length may repeat) up to --max-chunks long. A length without a
measured time is not a candidate (the admission would plan it as a whole chunk). Each distinct length is one more
compiled shape in the warm-up. The daemon makes the same choice itself (`Admission.ramp`: the lead-in's lengths
ordered into the ramp with the shortest planned head start, up to 6 chunks); its line is marked. This computes from
measurements; it measures nothing itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from flashtalk_live.playout.admission import Admission, ramps  # noqa: E402


def short_times(text: str) -> dict[int, float]:
    """'12=0.435,16=0.518' -> {12: 0.435, 16: 0.518}"""
    return {int(k): float(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="a daemon_gpu.py --json file (its render rate and times)")
    ap.add_argument("--rate", type=float, default=None, help="whole-chunk render seconds per air second")
    ap.add_argument("--short", type=short_times, default=None, metavar="N=S,...",
                    help="render seconds of the shorter chunks by frames")
    ap.add_argument("--margin", type=float, default=0.2, help="renderer.admission_margin")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--chunk-frames", type=int, default=28)
    ap.add_argument("--max-chunks", type=int, default=6)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args(argv)
    rate, short, source = args.rate, args.short or {}, "the command line"
    if args.json is not None:
        run = json.loads(args.json.read_text())
        res = run["result"]
        rate = rate if rate is not None else res["render_rate"]
        short = short or {int(k): float(v) for k, v in res["short_chunk_render_s"].items()}
        source = f"{args.json.name}: {run.get('device')}, commit {run.get('commit')}, profile {res.get('profile')}"
    if rate is None or not short:
        ap.error("give --json, or --rate and --short")
    adm = Admission(chunk_s=args.chunk_frames / args.fps, fps=args.fps, base_chunks=2, capacity_s=8.0,
                    margin=args.margin, buffered_s=lambda: 0.0, lead_in=tuple(sorted(short)))
    adm.rate.value = rate
    adm.rate.short = dict(short)
    whole = adm.first_chunks_s(())
    assert whole is not None
    rows = sorted((adm.first_chunks_s(r) or 0.0, len(set(r)), r) for r in ramps(tuple(short), args.max_chunks))
    chosen = adm.ramp()
    print(f"lead-in ramps by head start: rate {rate:.3f}, short chunks {short} s ({source}), margin {args.margin}, "
          f"{args.chunk_frames}-frame chunks at {args.fps} fps")
    print("| ramp | head start s | gain over whole chunks s | compiled lengths |")
    print("|---|---|---|---|")
    print(f"| none (whole chunks) | {whole:.3f} | 0.000 | 0 |")
    for need, shapes, r in rows[:args.top]:
        mark = " (the daemon's choice)" if r == chosen else ""
        print(f"| {list(r)}{mark} | {need:.3f} | {whole - need:.3f} | {shapes} |")
    once = tuple(sorted(short))  # the lengths as one rising ramp, for comparison
    need = adm.first_chunks_s(once) or 0.0
    print(f"| {list(once)} (each length once) | {need:.3f} | {whole - need:.3f} | {len(once)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
