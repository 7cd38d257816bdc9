"""The descriptor reserve: with the table full, an output's spawn/open still gets descriptors (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import errno, os, resource, subprocess, sys
from flashtalk_live import fdreserve
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
assert fdreserve.hold(16) == 16
flood = []
try:
    while True:
        flood.append(os.open(os.devnull, os.O_RDONLY))
except OSError as e:
    assert e.errno == errno.EMFILE
try:
    os.pipe()
    raise SystemExit("the table was not full")
except OSError as e:
    assert e.errno == errno.EMFILE
with fdreserve.released():  # what RtmpOutput does around its child's spawn
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-c", "pass"], stdin=r, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    os.close(r)
    os.close(w)
    p.communicate()
assert p.returncode == 0
assert fdreserve.held() == 16  # taken back
print("ok")
"""


def test_reserved_descriptors_let_a_child_spawn_on_a_full_table():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
