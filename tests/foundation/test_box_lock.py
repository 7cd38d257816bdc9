"""The lock that keeps a test marked `alone` alone on the box under `pytest -n N` (tests/support/box.py): shared
holders run together; an alone one waits for them and no new shared holder starts while it waits or runs.
(Each BoxLock opens its own files: their flocks exclude one another as separate worker processes' do.)"""

from __future__ import annotations

import threading
from pathlib import Path

from support.box import BoxLock


def acquiring(lock: BoxLock, alone: bool) -> threading.Event:
    got = threading.Event()
    threading.Thread(target=lambda: (lock.acquire(alone), got.set()), daemon=True).start()
    return got


def test_shared_holders_run_together_and_one_alone_runs_by_itself(tmp_path: Path) -> None:
    first, second, alone, late = (BoxLock(tmp_path) for _ in range(4))
    try:
        assert acquiring(first, alone=False).wait(10) and acquiring(second, alone=False).wait(10)
        alone_got = acquiring(alone, alone=True)
        assert not alone_got.wait(0.5)  # waits for both shared holders
        late_got = acquiring(late, alone=False)
        assert not late_got.wait(0.5)  # a shared one asking after it waits behind it (no starvation)
        first.release()
        assert not alone_got.wait(0.3)
        second.release()
        assert alone_got.wait(10)
        assert not late_got.wait(0.5)  # nothing beside the alone one
        alone.release()
        assert late_got.wait(10)
        late.release()
    finally:
        for lock in (first, second, alone, late):
            lock.close()
