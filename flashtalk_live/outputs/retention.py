"""Retention of a file output's recordings: by age and by total size, only files the output itself names.

A recording's files are found by its name template: strftime codes and {n} match anything in their place, and the
"-1", "-2", ... that FileOutput adds instead of overwriting is allowed before the suffix. Only the template's
folder is looked at (codes in folder names are not expanded). Oldest files (by mtime) go first; the open segment
is never touched; a 0-byte file (a crash right after an open) always goes.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable


def template_pattern(template: Path) -> re.Pattern[str]:
    """A regex for the file names a template can produce."""
    name, suffix = template.stem, template.suffix
    parts = re.split(r"(%[a-zA-Z%]|\{n\})", name)
    rx = "".join(".+?" if p.startswith("%") and p != "%%" else r"\d+" if p == "{n}" else re.escape("%" if p == "%%" else p)
                 for p in parts if p)
    return re.compile(f"^{rx}(?:-\\d+)?{re.escape(suffix)}$")


def recordings_of(template: Path) -> list[tuple[Path, os.stat_result]]:
    """The files in the template's folder whose names the template can produce, oldest first."""
    folder, rx = template.parent, template_pattern(template)
    out = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for n in names:
        if rx.match(n):
            p = folder / n
            try:
                st = p.stat()
            except OSError:
                continue
            if os.path.isfile(p):
                out.append((p, st))
    out.sort(key=lambda x: x[1].st_mtime)
    return out


def apply_retention(template: Path, max_age_s: float, max_bytes: int, keep: Iterable[Path] = (),
                    now: float | None = None, ignore: Iterable[Path] = ()) -> list[Path]:
    """Delete what is over the age or the total-size limit (0: no limit); returns the removed files. `keep`: this
    output's open files (counted, never deleted); `ignore`: files other outputs are writing, which the template may
    also name (strftime codes match anything): neither counted nor deleted."""
    now = time.time() if now is None else now
    keep = {Path(k) for k in keep}
    skip = {os.path.abspath(k) for k in ignore} - {os.path.abspath(k) for k in keep}
    files = [(p, st) for p, st in recordings_of(template) if os.path.abspath(p) not in skip]
    total = sum(st.st_size for _, st in files)
    removed = []
    for p, st in files:
        if p in keep:
            continue
        old = max_age_s > 0 and now - st.st_mtime > max_age_s
        over = max_bytes > 0 and total > max_bytes
        if old or over or st.st_size == 0:
            try:
                p.unlink()
            except OSError:
                continue
            total -= st.st_size
            removed.append(p)
    return removed
