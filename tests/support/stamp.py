"""The code's commit, stamped on every benchmark table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def commit() -> str:
    """FLASHTALK_COMMIT where the tree was copied without its history (a device run), else git's short hash."""
    if os.environ.get("FLASHTALK_COMMIT"):
        return os.environ["FLASHTALK_COMMIT"]
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"
