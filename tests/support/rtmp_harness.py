"""Test RTMP infrastructure: an nginx-rtmp server on loopback (also used by benchmarks/soak.py) and readers of
recordings (codecs, timestamps, keyframes, gaps).

A plain module (not a conftest), so the `nginx_rtmp` fixture of tests/conftest.py and the benchmarks share it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.ports import free_port  # noqa: F401 - re-exported for the rtmp tests
from support.procs import kill_group


NGINX = "/usr/sbin/nginx"
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"

_CONF = """\
load_module {module};
{user}
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr info;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application live {{
            live on;
            record all;
            record_path {prefix}/rec;
            record_unique on;
            allow publish 127.0.0.1; deny publish all; allow play all;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{ listen 127.0.0.1:{http_port}; location /stat {{ rtmp_stat all; }} }}
}}
"""


def _nginx_available() -> str | None:
    if not os.path.exists(NGINX):
        return f"{NGINX} is missing (apt-get install nginx libnginx-mod-rtmp)"
    if not os.path.exists(RTMP_MODULE):
        return f"{RTMP_MODULE} is missing (apt-get install libnginx-mod-rtmp)"
    return None


@dataclass
class NginxRtmp:
    """One nginx-rtmp server owned by a test."""

    prefix: Path
    rtmp_port: int
    http_port: int
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    @property
    def rec_dir(self) -> Path:
        return self.prefix / "rec"

    def url(self, name: str = "test") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"

    @property
    def stat_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/stat"

    def stat(self) -> str:
        with urllib.request.urlopen(self.stat_url, timeout=2) as r:
            return r.read().decode()

    def recordings(self, name: str = "test") -> list[Path]:
        """This stream's recordings, oldest first (record_unique appends a timestamp; mtime breaks ties)."""
        files = [p for p in self.rec_dir.glob(f"{name}*.flv") if p.stat().st_size > 0]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def start(self) -> None:
        for d in ("rec", "tmp"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.rec_dir, 0o777)  # the worker runs as nobody when started as root
        conf = self.prefix / "nginx.conf"
        # As root the worker would run as nobody, which cannot enter pytest's 0700 tmp directories.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(_CONF.format(module=RTMP_MODULE, user=user, prefix=self.prefix, rtmp_port=self.rtmp_port,
                                     http_port=self.http_port))
        self.proc = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(conf), "-e", "stderr"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n" + "\n".join(self.log[-20:]))
            try:
                socket.create_connection(("127.0.0.1", self.rtmp_port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening within 10 s") from None
                time.sleep(0.005)
        time.sleep(0.02)
        if self.proc.poll() is not None:  # a stale server on the port answered the probe, ours died
            raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n" + "\n".join(self.log[-20:]))

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip())

    def kill(self) -> None:
        """SIGKILL master and worker together (a crash, not a shutdown)."""
        if self.proc is not None:
            kill_group(self.proc, 10)

    def restart(self) -> None:
        """Start again on the same ports (same record directory)."""
        self.kill()
        deadline = time.monotonic() + 10
        while True:  # the kernel may need a moment to release the listening port
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGSTOP: the server stops reading but keeps every socket open."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)


@dataclass
class MediaInfo:
    """What a recording holds, per stream type; times in seconds."""

    path: Path
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    video_pts: list[float] = field(default_factory=list)
    video_dts: list[float] = field(default_factory=list)
    audio_pts: list[float] = field(default_factory=list)
    keyframes: list[float] = field(default_factory=list)
    audio_end: float = 0.0  # pts + duration of the last audio packet
    video_end: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def video_packets(self) -> int:
        return len(self.video_pts)

    @property
    def audio_packets(self) -> int:
        return len(self.audio_pts)


def read_media(path: Path | str, decode: bool = False) -> MediaInfo:
    """Demux (and optionally decode) a recording with PyAV; a truncated tail (killed server) is tolerated."""
    import av

    info = MediaInfo(path=Path(path))
    with av.open(str(path)) as c:
        vs = c.streams.video[0] if c.streams.video else None
        as_ = c.streams.audio[0] if c.streams.audio else None
        if vs is not None:
            info.video_codec = vs.codec_context.name
            info.width, info.height = vs.codec_context.width, vs.codec_context.height
            info.fps = float(vs.average_rate or vs.guessed_rate or 0)
        if as_ is not None:
            info.audio_codec = as_.codec_context.name
            info.sample_rate = as_.codec_context.sample_rate
            info.channels = as_.codec_context.channels
        try:
            for p in c.demux():
                if p.pts is None or p.time_base is None:
                    continue
                t = float(p.pts * p.time_base)
                if vs is not None and p.stream.index == vs.index:
                    info.video_pts.append(t)
                    info.video_dts.append(float((p.dts if p.dts is not None else p.pts) * p.time_base))
                    if p.is_keyframe:
                        info.keyframes.append(t)
                    info.video_end = max(info.video_end, t + float((p.duration or 0) * p.time_base))
                elif as_ is not None and p.stream.index == as_.index:
                    info.audio_pts.append(t)
                    info.audio_end = max(info.audio_end, t + float((p.duration or 0) * p.time_base))
                if decode:
                    try:
                        p.decode()
                    except av.error.FFmpegError as e:
                        info.errors.append(str(e))
        except (av.error.FFmpegError, OSError) as e:  # truncated file
            info.errors.append(f"demux: {e}")
    return info


def max_gap(times: list[float]) -> float:
    """The largest step between consecutive timestamps (0 for fewer than two)."""
    s = sorted(times)
    return max((b - a for a, b in zip(s, s[1:])), default=0.0)
