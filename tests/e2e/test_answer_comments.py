"""examples/answer_comments.py against a real daemon: comments on stdin become streamed, captioned replies on air."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.daemon_harness import wait_for
from support.paths import child_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_comments_on_stdin_are_answered_on_air_with_captions(daemon_factory):
    if shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is required in CI (.ci/run installs it)")
        pytest.skip("espeak-ng is missing (apt-get install espeak-ng)")
    d = daemon_factory().start()
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        out = subprocess.run([sys.executable, str(ROOT / "examples" / "answer_comments.py"), "--endpoint", d.ipc],
                             input="hello there\nhow much is it?\n", capture_output=True, text=True, timeout=120,
                             env=child_env())
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [r["comment"] for r in rows] == ["hello there", "how much is it?"]
        assert "welcome" in rows[0]["reply"] and "price" in rows[1]["reply"]
        for r in rows:
            assert r["duration_s"] > 1.0 and r["pieces"] >= 1
            wait_for(ev, lambda e, r=r: e["type"] == "finished" and e.get("segment_id") == r["segment_id"], 90, seen)
    accepted = {e["segment_id"]: e for e in seen if e["type"] == "accepted"}
    for r in rows:  # streamed, with the reply as the caption
        a = accepted.get(r["segment_id"])
        assert a is not None and a["stream"] and a["meta"]["text"] == r["reply"]
    assert d.stop() == 0
