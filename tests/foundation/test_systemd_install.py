"""The README's "Running under systemd" steps, followed in a temporary root, reach on air; a missing portrait or
playlist then fails `config show` and the unit's ExecStart with exit 2 and one line.

Followed as far as this machine allows: every path under / moves under the temp root; the venv gets this
interpreter's packages (no download) and a real, non-editable `pip install .` of a copy of the checkout, so the
package data (demo playlist, fonts) is what an installed package has; the service user is a throw-away system user
when the test runs as root (it must read the installed files through the group), else the current user;
`systemctl enable --now` becomes the unit's ExecStart run by hand with the unit's environment, READY awaited on a
NOTIFY_SOCKET as systemd would. The unit file itself passes `systemd-analyze verify` in
tests/foundation/test_logging_and_systemd.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import av
import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "flashtalk-live.service"


def readme_systemd_steps() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running under systemd", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    return [ln for ln in block.strip().splitlines() if ln.strip()]


def unit_settings() -> tuple[list[str], dict[str, str], str]:
    """ExecStart's argv, the Environment= lines and the EnvironmentFile of the shipped unit."""
    exec_start, env, env_file = None, {}, ""
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            exec_start = shlex.split(value)
        elif key == "Environment":
            k, _, v = value.partition("=")
            env[k] = v
        elif key == "EnvironmentFile":
            env_file = value.lstrip("-")
    assert exec_start and env_file
    return exec_start, env, env_file


class Machine:
    """The temp root and the service user standing in for the box."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ftl-sd-", dir="/tmp"))
        self.root.chmod(0o755)
        self.user: str | None = None
        if os.geteuid() == 0 and shutil.which("useradd"):
            self.user = "ftl" + secrets.token_hex(4)
            subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell",
                            "/usr/sbin/nologin", self.user], check=True)
        self.group = self.user or grp.getgrgid(os.getegid()).gr_name

    def path(self, p: str) -> str:
        return str(self.root) + p

    def as_service(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def close(self) -> None:
        if self.user:
            subprocess.run(["userdel", self.user], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine()
    yield m
    m.close()


def _copy_checkout(dest: Path) -> None:
    """The checkout's tracked files (links kept as links), as a clone would have them."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in files.decode().split("\0") if n]
    else:
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    for name in names:
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)


def _translate(step: str, m: Machine, venv_python: str) -> str | None:
    """One README line as it runs here; None for the one that only systemd can do. An unknown shape fails the test:
    a new README step needs a line here."""
    for p in ("/etc/systemd/system/", "/etc/flashtalk-live", "/opt/flashtalk-live", "/var/lib/flashtalk-live"):
        step = step.replace(" " + p, " " + m.path(p))
    step = step.replace("-g flashtalk-live", f"-g {m.group}")
    if step.startswith("useradd "):
        return None  # the Machine made its own service user (or runs as the current one)
    if step.startswith("python3 -m venv "):
        venv = step.split()[3]
        assert step.endswith("/bin/pip install ."), step
        # this interpreter's packages (torch & co.: no download), then a real non-editable install of the copy: the
        # wheel `pip install .` would build (built by this interpreter's pip and setuptools: the venv's own
        # setuptools may be too old to build one offline)
        py, wheels = shlex.quote(venv_python), m.path("/wheels")
        return (f"{py} -m venv --system-site-packages {venv} && {py} -m pip wheel -q --no-deps --no-build-isolation "
                f"-w {wheels} . && {venv}/bin/pip install -q --no-deps {wheels}/*.whl")
    if step.startswith("runuser -u flashtalk-live -- "):
        argv = shlex.split(step.split(" -- ", 1)[1])
        return shlex.join(m.as_service(argv))
    if step.startswith("cp systemd/") and "systemctl enable --now" in step:
        cp = step.split(" && ")[0]
        return f"mkdir -p {m.path('/etc/systemd/system')} && {cp}"
    assert step.startswith("install "), f"README step without a translation in this test: {step}"
    return step


def _run_unit(m: Machine, exec_start: list[str], env: dict[str, str], notify: str,
              as_service: bool) -> subprocess.Popen[bytes]:
    argv = [m.path(a) if a.startswith(("/opt/", "/etc/")) else a for a in exec_start]
    log = open(m.root / "unit.log", "ab")
    return subprocess.Popen(m.as_service(argv) if as_service else argv, env={**env, "NOTIFY_SOCKET": notify}, cwd="/", stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _unit_env(m: Machine, unit_env: dict[str, str], env_file: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_") and k != "PYTHONPATH"}
    env.update(unit_env)
    for line in Path(m.path(env_file)).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    return env


@pytest.mark.timeout(420)
def test_readme_systemd_steps_reach_on_air(machine):
    m = machine
    src = m.root / "src"
    _copy_checkout(src)
    # this interpreter runs the venv: where it is private (a user's pyenv) the service user cannot run it at all
    probe = subprocess.run(m.as_service([sys.executable, "-c", "pass"]), capture_output=True)
    if probe.returncode != 0:
        print(f"{sys.executable} is not usable by {m.user}: the daemon runs as {os.geteuid()}, the files are "
              f"still checked for {m.user}")
    runs_as_service = probe.returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_") and k != "PYTHONPATH"}
    for step in readme_systemd_steps():
        cmd = _translate(step, m, sys.executable)
        if cmd is None:
            continue
        if cmd.startswith("runuser ") and not runs_as_service:
            cmd = cmd.split(" -- ", 1)[1]
        # the config check comes before the operator edits the config for this box: it must name what is missing
        r = subprocess.run(["bash", "-c", cmd], cwd=src, env=env, capture_output=True, text=True, timeout=300)
        if " config show " in cmd:
            assert r.returncode == 2 and "model.weights_dir" in r.stderr, (cmd, r.returncode, r.stderr[-2000:])
            continue
        assert r.returncode == 0, (cmd, r.stderr[-3000:])
        cfg = Path(m.path("/etc/flashtalk-live/flashtalk-live.toml"))
        if cfg.is_file() and str(m.root) not in cfg.read_text():  # the temp root stands for / inside it too
            text = cfg.read_text()
            for p in ('"/etc/', '"/var/lib/'):
                text = text.replace(p, '"' + m.path(p[1:]))
            cfg.write_text(text)
    etc = Path(m.path("/etc/flashtalk-live"))
    venv = Path(m.path("/opt/flashtalk-live/venv"))
    # the installed files: the config private to the service's group, and every one readable by the service user
    for name in ("flashtalk-live.toml", "portrait.png", "playlist.m3u", "clips/pitch-a.m4a"):
        st = (etc / name).stat()
        assert st.st_mode & 0o777 == 0o640 and grp.getgrgid(st.st_gid).gr_name == m.group, name
        if m.user:
            r = subprocess.run(m.as_service(["test", "-r", str(etc / name)]))
            assert r.returncode == 0, f"{m.user} cannot read {name}"
    assert (Path(m.path("/etc/systemd/system")) / UNIT.name).is_file()
    # a non-editable install carries the demo programme, its clips and the label font as package data
    r = subprocess.run([str(venv / "bin/python"), "-c", "import flashtalk_live.settings as s, flashtalk_live.compose."
                        "text as t; print(s.__file__); print(s.default_playlist()); print(t.BUNDLED_FONT[0])"],
                       env=env, capture_output=True, text=True, cwd="/")
    mod, playlist, font = r.stdout.split()
    assert mod.startswith(str(venv)) and playlist.startswith(str(venv)), r.stdout
    assert font.startswith(str(venv)) and Path(font).is_file() and (Path(font).parent / "OFL.txt").is_file()
    assert all((Path(playlist).parent / "clips" / c).is_file() for c in ("pitch-a.m4a", "pitch-b.ogg", "pitch-c.wav"))

    # The operator's edit for this box (no GPU, no weights, no RTMP here): the unit's EnvironmentFile.
    exec_start, unit_env, env_file = unit_settings()
    Path(m.path(env_file)).write_text("\n".join([
        f"FLASHTALK_LIVE_STATE_DIR={m.path('/var/lib/flashtalk-live')}/{{room}}",  # the unit's StateDirectory
        "FLASHTALK_LIVE_RENDERER__KIND=still",
        'FLASHTALK_LIVE_OUTPUTS=[{"name": "archive", "url": "{state_dir}/recordings/room.flv"}]',
        "FLASHTALK_LIVE_ENCODER__VIDEO_CODEC=libx264", "FLASHTALK_LIVE_ENCODER__PRESET=ultrafast",
        "FLASHTALK_LIVE_VIDEO__WIDTH=128", "FLASHTALK_LIVE_VIDEO__HEIGHT=224"]) + "\n")
    state_parent = Path(m.path("/var/lib/flashtalk-live"))
    state_parent.mkdir(parents=True)
    if m.user and runs_as_service:  # systemd makes the StateDirectory the service user's
        shutil.chown(state_parent, m.user, m.user)
    unit_env = _unit_env(m, unit_env, env_file)

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(m.root / "notify")
    notify.bind(notify_path)
    os.chmod(notify_path, 0o777)
    notify.settimeout(1.0)
    proc = _run_unit(m, exec_start, unit_env, notify_path, runs_as_service)
    try:
        deadline, ready = time.monotonic() + 120, False
        while time.monotonic() < deadline and not ready:
            assert proc.poll() is None, (m.root / "unit.log").read_text()[-3000:]
            try:
                ready = b"READY=1" in notify.recv(4096)
            except socket.timeout:
                pass
        assert ready, (m.root / "unit.log").read_text()[-3000:]
        time.sleep(3)  # a little programme on air
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (m.root / "unit.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        notify.close()
    state = state_parent / "flashtalk-live"  # the room is the config file's name
    rec = state / "recordings" / "room.flv"
    with av.open(str(rec)) as c:
        assert c.streams.video and c.streams.audio
        frames = sum(1 for _ in c.decode(video=0))
    assert frames >= 25, frames
    if m.user and runs_as_service:
        assert pwd.getpwuid(rec.stat().st_uid).pw_name == m.user

    # Without the portrait, then without the playlist: config show and the unit's ExecStart both exit 2, one line.
    for name, field in (("portrait.png", "video.reference_image"), ("playlist.m3u", "programme.playlist")):
        (etc / name).rename(etc / (name + ".aside"))
        argv = [m.path(a) if a.startswith(("/opt/", "/etc/")) else a for a in exec_start]
        show = argv[:1] + ["config", "show"] + argv[2:]
        for cmd in (show, argv):
            r = subprocess.run(m.as_service(cmd) if runs_as_service else cmd, env=unit_env, capture_output=True,
                               text=True, timeout=120)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and field in lines[0], (cmd, r.returncode, r.stderr[-2000:])
        (etc / (name + ".aside")).rename(etc / name)
