"""The checkout's folders, and the environment of a process a test starts (`python -m flashtalk_live`, a script).

pytest finds `flashtalk_live` and `support` through pyproject's `pythonpath`; a child process does not inherit
sys.path, so `child_env` hands it the same two folders in PYTHONPATH (this checkout first, whatever is installed)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (default: os.environ) less FLASHTALK_LIVE_* (a child reads only the settings its test gives it), with
    the repo root and tests/ first on PYTHONPATH, plus `extra`."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("FLASHTALK_LIVE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env
