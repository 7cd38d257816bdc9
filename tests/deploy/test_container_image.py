"""The container image really builds and really runs (issue 20): deploy/container/build-debian.sh makes a Debian
bookworm base with mmdebstrap, imports it and builds deploy/container/Containerfile with `buildah bud --isolation
chroot`; then the image's own entrypoint and command start the daemon on its /etc/flashtalk-live/room.toml (the
embedded default) under `buildah run --isolation chroot`, with a host folder as the state volume.

Checked: the image's config (non-root user, volumes, SIGTERM, entrypoint), no weights inside, /livez, /readyz and
/startupz answer 200 with one line of JSON, a clip pushed with the image's own CLI airs (its tone is found in the
recording the daemon wrote to the state volume, decoded with PyAV, at the times its events announced), and SIGTERM to
the container's first process (tini) stops the daemon cleanly.

chroot isolation shares the host's network and process table: the daemon's ports are moved to free ones through
FLASHTALK_LIVE_* variables (the command stays the image's), and tini is not PID 1 (it says so on stderr).
The build takes minutes (measured in deploy/container/README.md); base tarball and layers are cached under
$FLASHTALK_LIVE_IMAGE_CACHE (default /var/tmp/flashtalk-live-image), so a second run rebuilds only what changed. It
runs as a background job from the start of the session and these tests run last (tests/support/background.py).
Needs root, buildah and mmdebstrap (.ci/run installs them): skipped without them, failed in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import pytest

from support.audio import wav_bytes
from support.background import Job, register
from support.ports import free_port

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]  # the first test also waits for the build

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "container" / "build-debian.sh"
CACHE = Path(os.environ.get("FLASHTALK_LIVE_IMAGE_CACHE", "/var/tmp/flashtalk-live-image"))
TAG = "localhost/flashtalk-live:test"
STATE = "/var/lib/flashtalk-live"
EXTRAS = "fp8"  # the extras that install here (flash-attn needs CUDA to build)
TONE_HZ, TONE_S = 1000.0, 3.0


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (mmdebstrap, buildah)"
    for tool in ("buildah", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install buildah mmdebstrap)"
    return None


def buildah(*args: str) -> list[str]:
    return ["buildah", "--root", str(CACHE / "storage" / "root"), "--runroot", str(CACHE / "storage" / "run"), *args]


BUILD_JOB = register(Job("image-build", lambda scratch: [str(BUILD), TAG],
                         env={"CACHE_DIR": str(CACHE), "STORAGE_ROOT": str(CACHE / "storage"), "EXTRAS": EXTRAS}),
                     __file__) if missing_tools() is None else None


@pytest.fixture(scope="module")
def image() -> Iterator[dict]:
    """The image, built (cached layers reused) by the background job; yields its OCI config."""
    missing = missing_tools()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the image test is required in CI: {missing}")
        pytest.skip(missing)
    assert BUILD_JOB is not None
    build = BUILD_JOB.result(1500)
    print(build.output[-4000:])  # the step times, shown with -s or on failure
    assert build.returncode == 0, f"image build failed:\n{build.output[-6000:]}"
    inspect = subprocess.run(buildah("inspect", "--type", "image", TAG), capture_output=True, text=True, check=True)
    yield json.loads(inspect.stdout)["OCIv1"]["config"]


@pytest.fixture
def container(image: dict) -> Iterator[str]:
    """A working container of the image, removed afterwards."""
    name = subprocess.run(buildah("from", "--pull-never", TAG), capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(buildah("rm", name), capture_output=True)


def run_in(container: str, *cmd: str, volume: Path | None = None, env: dict[str, str] | None = None,
           user: str | None = None, **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    args = ["run", "--isolation", "chroot"] + (["--user", user] if user else [])
    if volume is not None:
        args += ["--volume", f"{volume}:{STATE}"]
    for k, v in (env or {}).items():
        args += ["--env", f"{k}={v}"]
    argv = buildah(*args, container, "--", *cmd)
    if kw.pop("background", False):
        return subprocess.Popen(argv, **kw)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def test_image_config_runs_as_a_user_with_the_state_and_weights_volumes_and_stops_on_sigterm(image, container):
    assert image["User"] == "flashtalk"
    assert set(image["Volumes"]) == {STATE, "/weights"}
    assert image["StopSignal"] == "SIGTERM"
    assert image["Entrypoint"] + image["Cmd"] == ["/usr/bin/tini", "--", "flashtalk-live", "run", "-c",
                                                  "/etc/flashtalk-live/room.toml"]
    ids = run_in(container, "id", "-u")
    assert ids.returncode == 0 and int(ids.stdout) != 0, ids.stderr
    # no weights: no model-sized file anywhere in the image (the biggest files are torch's shared libraries)
    found = run_in(container, "find", "/", "-xdev", "-size", "+20M", "(", "-name", "*.safetensors", "-o", "-name",
                   "*.pth", "-o", "-name", "*.pt", "-o", "-name", "*.bin", "-o", "-name", "*.ckpt", ")", user="0:0")
    assert found.returncode == 0 and found.stdout == "", found.stdout + found.stderr
    extras = run_in(container, "python3", "-c", "import torch, torchao; print(torch.__version__)")
    assert extras.returncode == 0, extras.stderr
    # the fonts are in the image itself: the package's own label font (package data through a non-editable install)
    # and the CJK font captions need for any text
    font = run_in(container, "python3", "-c", "from flashtalk_live.compose.text import BUNDLED_FONT, find_font, covers,"
                  " load_font; p, i = find_font(); print(covers(load_font(*BUNDLED_FONT, 24), 'AI生成'),"
                  " covers(load_font(p, i, 24), '欢迎来到直播间'))")
    assert font.returncode == 0 and font.stdout.split() == ["True", "True"], font.stdout + font.stderr
    # the embedded default's demo programme is package data too (a link out of flashtalk_live/assets)
    demo = run_in(container, "python3", "-c", "from flashtalk_live.settings import default_playlist;"
                  "import pathlib; p = default_playlist(); print(p and len(list(pathlib.Path(p).parent.glob('clips/*'))))")
    assert demo.returncode == 0 and int(demo.stdout) >= 3, demo.stdout + demo.stderr


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def tone_windows(path: Path, freq: float, fps: int = 25) -> tuple[np.ndarray, float]:
    """Power of `freq` per 1/fps window of the recording's audio (1.0: a full-scale sine), and the time of its
    first sample."""
    with av.open(str(path)) as f:
        stream = f.streams.audio[0]
        rate, chunks, first = stream.rate, [], None
        for frame in f.decode(stream):
            if first is None:
                first = float(frame.pts * frame.time_base)
            chunks.append(frame.to_ndarray().mean(axis=0))  # AAC decodes to planar float: (channels, samples)
    x = np.concatenate(chunks)
    win = rate // fps
    t = np.arange(win) / rate
    frames = x[: len(x) // win * win].reshape(-1, win)
    power = (frames @ np.cos(2 * np.pi * freq * t)) ** 2 + (frames @ np.sin(2 * np.pi * freq * t)) ** 2
    return power / (win / 2) ** 2, first or 0.0


def test_the_daemon_in_the_image_answers_its_probes_and_airs_a_pushed_clip(image, container, tmp_path):
    ids = run_in(container, "id", "-u")
    assert ids.returncode == 0, ids.stderr
    uid = int(ids.stdout)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, uid, uid)
    metrics = free_port()
    env = {  # ports only: chroot isolation shares the host's network with the other tests
        "FLASHTALK_LIVE_METRICS__PORT": str(metrics),
        "FLASHTALK_LIVE_INGEST__CONTROL": json.dumps([f"ipc://{{state_dir}}/control.sock",
                                                      f"tcp://127.0.0.1:{free_port()}"]),
        "FLASHTALK_LIVE_INGEST__EVENTS": json.dumps([f"ipc://{{state_dir}}/events.sock",
                                                     f"tcp://127.0.0.1:{free_port()}"]),
    }
    log = open(tmp_path / "daemon.log", "wb")
    proc = run_in(container, *image["Entrypoint"], *image["Cmd"], volume=state, env=env, background=True,
                  stdout=log, stderr=subprocess.STDOUT)

    def log_tail() -> str:
        return "\n".join((tmp_path / "daemon.log").read_text(errors="replace").splitlines()[-30:])

    try:
        base = f"http://127.0.0.1:{metrics}"
        deadline = time.monotonic() + 120
        answers: dict[str, tuple[int, str]] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the daemon exited with {proc.returncode}:\n{log_tail()}"
            try:
                answers = {p: get(base + p) for p in ("/startupz", "/livez", "/readyz")}
            except OSError:
                answers = {}
            if answers and all(code == 200 for code, _ in answers.values()):
                break
            time.sleep(0.5)
        assert answers and all(code == 200 for code, _ in answers.values()), f"{answers}\n{log_tail()}"
        for path, (_, body) in answers.items():
            reply = json.loads(body)
            assert reply["ok"] is True and reply["probe"] == path.strip("/"), body
        status, body = get(base + "/metrics")
        assert status == 200 and 'flashtalk_state{state="on_air"} 1.0' in body, body[:2000]

        (state / "clip.wav").write_bytes(wav_bytes(TONE_S, TONE_HZ))
        push = run_in(container, "flashtalk-live", "push", f"{STATE}/clip.wav", "--wait", "--timeout", "30",
                      volume=state, env=env)
        assert push.returncode == 0, push.stdout + push.stderr
        events = {e["type"]: e for e in map(json.loads, push.stdout.splitlines()) if "type" in e}
        started, finished = events["started"]["media_time_s"], events["finished"]["media_time_s"]
        assert finished - started == pytest.approx(TONE_S, abs=0.1)
    finally:
        # SIGTERM to the container's first process, as a container runtime stops it; tini passes it on
        pid_file = state / "daemon.lock"
        if proc.poll() is None and pid_file.exists():
            daemon_pid = int(pid_file.read_text().split()[0])
            tini_pid = int(Path(f"/proc/{daemon_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            os.kill(tini_pid, signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"the daemon ignored SIGTERM:\n{log_tail()}")
        log.close()
    assert rc == 0, log_tail()
    assert '"event": "stopped"' in log_tail()

    recordings = sorted((state / "recordings").glob("*.flv"))
    assert recordings, "no recording in the state volume"
    power, first = tone_windows(recordings[-1], TONE_HZ)
    # Around the clip's announced air time only (the demo programme may air speech-like clips elsewhere).
    a, b = int((started - 2.0 - first) * 25), int((finished + 2.0 - first) * 25)
    around = power[max(a, 0):b]
    on = np.flatnonzero(around > 0.25 * around.max())
    assert len(on) and np.median(around[on]) > 0.01, "the tone is not in the recording (or 20 dB under the clip's)"
    onset = first + (max(a, 0) + on[0]) / 25
    offset = first + (max(a, 0) + on[-1] + 1) / 25
    assert onset == pytest.approx(started, abs=0.3) and offset == pytest.approx(finished, abs=0.3), (onset, offset)
    assert len(on) >= (TONE_S - 0.3) * 25, f"the tone aired {len(on) / 25:.2f} s of {TONE_S} s"
