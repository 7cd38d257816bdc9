"""Queue operations against depth (issue 12 item 7): ack, insert, status and clear through the real ingest server.

An IngestServer on a real spool in a temporary state dir, driven over ipc by the real client. At each depth the
queue is filled directly through the spool (the same commit path, without the client round trip), then 50 enqueues
and 10 inserts are timed (client round trip: decode, spool commit with fsync, ack), 20 `status` calls, and one
`clear` that empties the queue.

    python benchmarks/queue_depth.py                        # depths 0, 1000, 10000
    python benchmarks/queue_depth.py --depths 0 2000 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.client import Client  # noqa: E402
from flashtalk_live.events import EventBus  # noqa: E402
from flashtalk_live.ingest.server import IngestServer  # noqa: E402
from flashtalk_live.queue.spool import Spool  # noqa: E402
from flashtalk_live.config import load_settings  # noqa: E402

from support.audiogen import encode  # noqa: E402


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.95 * len(xs))) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[0, 1000, 10000])
    ap.add_argument("--dir", default="/tmp", help="where the temporary state dir goes (ipc paths must stay short)")
    a = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="ftl-qd-", dir=a.dir))
    try:
        s = load_settings(None, [f'state_dir="{state}"', 'ingest.control=["ipc://{state_dir}/control.sock"]',
                                 'ingest.events=["ipc://{state_dir}/events.sock"]', "ingest.rate_per_s=0",
                                 f"queue.max_clips={max(a.depths) + 1000}", "queue.max_queued_seconds=1e9"],
                          environ={})
        spool = Spool.from_settings(s.expanded(s.queue), s.encoder, s.storage)
        srv = IngestServer(s.expanded(s.ingest), s.encoder, spool, EventBus(), lambda: {})
        srv.start()
        clip = encode("wav_s16", 0.5)
        filler = clip  # the same bytes the clients send
        rows = []
        with Client(srv.control_endpoints[0], timeout_s=30) as c:
            c.ping()
            for depth in a.depths:
                t0 = time.perf_counter()
                while spool.stats()["clips"] < depth:
                    spool.add(filler, {}, "enqueue", duration_s=0.5)
                fill_s = time.perf_counter() - t0
                ack = timed(lambda: c.enqueue(clip, format="wav"), 50)
                ins = timed(lambda: c.insert(clip, format="wav"), 10)
                st = timed(c.status, 20)
                n = spool.stats()["clips"]
                t0 = time.perf_counter()
                cleared = c.clear()["count"]
                clear_ms = (time.perf_counter() - t0) * 1000
                assert cleared == n, (cleared, n)
                rows.append((depth, statistics.median(ack), p95(ack), statistics.median(ins), statistics.median(st),
                             p95(st), clear_ms, n, fill_s))
        srv.stop()
        spool.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(f"{'depth':>6} {'ack med ms':>10} {'ack p95':>8} {'insert med':>10} {'status med':>10} {'status p95':>10} "
          f"{'clear ms':>9} {'cleared':>8} {'fill s':>7}")
    for r in rows:
        print(f"{r[0]:>6} {r[1]:>10.2f} {r[2]:>8.2f} {r[3]:>10.2f} {r[4]:>10.2f} {r[5]:>10.2f} {r[6]:>9.1f} "
              f"{r[7]:>8} {r[8]:>7.1f}")
    base = rows[0][1]
    for r in rows[1:]:
        print(f"ack at {r[0]} clips: {r[1] / base:.2f}x the ack at {rows[0][0]} (issue 12: within 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
