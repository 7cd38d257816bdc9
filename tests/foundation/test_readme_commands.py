"""The README's two set-up commands: the test command is what .ci/run runs; the run command works in a fresh clone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", setup, re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    run_cmd, test_cmd = readme_commands()
    assert "flashtalk-live run" in run_cmd and "pytest" in test_cmd
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


@pytest.mark.timeout(120)
def test_readme_run_command_in_a_fresh_clone(tmp_path):
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    run_cmd, _ = readme_commands()
    install, start = run_cmd.split(" && ")
    assert install.startswith("pip install") and start == "flashtalk-live run"
    # The install half already ran (CI runs the same pip command); start the daemon exactly as written,
    # for a few seconds, from the clone. The metrics port is moved off its default to avoid clashes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_") and k != "XDG_STATE_HOME"}
    env["FLASHTALK_LIVE_METRICS__PORT"] = "0"
    home = Path(tempfile.mkdtemp(prefix="ftl-home-", dir="/tmp"))  # ipc socket paths must stay under 107 bytes
    env["HOME"] = str(home)  # the default state dir is ~/.local/state/flashtalk-live
    exe = shutil.which("flashtalk-live")
    cmd = [exe] if exe else [sys.executable, "-m", "flashtalk_live"]
    r = subprocess.run(cmd + ["run", "--duration", "4"], cwd=clone, env=env,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    state = home / ".local" / "state" / "flashtalk-live"
    recs = list((state / "recordings").glob("live-*.flv"))
    assert len(recs) == 1, r.stderr[-3000:]
    import av
    import numpy as np

    with av.open(str(recs[0])) as c:
        assert c.streams.video and c.streams.audio
        frames = sum(1 for _ in c.decode(video=0))
    assert frames >= 50  # about 4 s at 25 fps
    with av.open(str(recs[0])) as c:
        audio = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    assert np.abs(audio).max() > 0.01, "the demo programme should be on air, not digital silence"
    assert not any(state.glob("*.sock")), "a clean stop removes the ipc socket files"
    shutil.rmtree(home, ignore_errors=True)
