"""Spool tests: the clip encoders of the ingest tests are importable here too."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))  # ingest_audiogen
