"""Every command of the table, fed plausible and broken arguments and data frames over the real control socket of a
running daemon: each reply is `ok` or a rejection code of the table, never `internal`; the daemon lives, keeps its
air and still airs a good clip afterwards. The request stream is seeded, so a failure names the request to replay.

The generator mixes, per field, a value that passes (formats, modes, sample rates, the segment ids the daemon
returned, a layer that exists) with one from a pool of wrong types, extremes, paths, unicode and broken cue lists,
and sends a data frame (clean, truncated or random audio, random image bytes) where the command takes one.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import zmq

from flashtalk_live.errors import REJECT_CODES
from flashtalk_live.ingest.commands import COMMANDS

from support.audiogen import encode, pcm_s16le
from support.daemon_harness import wait_for

SEED = 20261208
REQUESTS = 3000
REPLY_TIMEOUT_MS = 20_000  # a loaded CI box: far more than any refusal takes

WRONG: list[Any] = [
    None, -1, 0, 1, 2**70, -(2**70), 1e308, -0.0, 0.5, 1e-300, 10_000_001, True, False, "", "x", "x" * 5000,
    "../../etc/passwd", "/proc/self/mem", "/dev/zero", "\x00", "\u00e9" * 300, "NaN", "%s%n", "A.b-c_1",
    "ipc:///tmp/x", "tcp://0.0.0.0:1", "rtmp://127.0.0.1:1/a", [], [1], [{}], {}, {"a": 1},
    [{"text": "hi", "start": 0, "end": 1e9}], [{"name": "nope", "start": -1, "end": 0.5}],
    [{"text": "", "start": 0.1, "end": 0.05}],
]
PASSING: dict[str, list[Any]] = {
    "format": ["wav", "mp3", "pcm_s16le", "ogg", "opus", "flac"], "sample_rate": [16000, 24000, 48000],
    "channels": [1, 2], "mode": ["enqueue", "insert", "play_now"], "seq": [0, 1, 2, 5], "text": ["hello"],
    "name": ["ai_label", "card", "rec", "x1"], "url": ["rtmp://127.0.0.1:1/live/a"], "seconds": [0.5, 3],
    "captions": [[{"text": "hi", "start": 0, "end": 0.3}]], "overlays": [[{"name": "ai_label", "start": 0, "end": 0.3}]],
    "duration_s": [0.5, 10.0], "to": [0, 1, 99], "id": ["r1", "r2"], "prompt": ["a host"],
}


def data_frames() -> list[bytes]:
    rnd = random.Random(SEED)
    wav, mp3 = encode("wav_s16", seconds=0.5), encode("mp3", seconds=0.5)
    noise = lambda n: bytes(rnd.getrandbits(8) for _ in range(n))  # noqa: E731
    return [b"", noise(100), wav[:40], wav[:-7], mp3[3:], mp3, wav, b"RIFF" + noise(60), b"OggS" + noise(200),
            pcm_s16le(0.3), b"\xff\xfb" + noise(500), b"\x89PNG\r\n\x1a\n" + noise(100), noise(3000)]


def test_no_request_of_any_command_answers_internal_or_disturbs_the_air(daemon_factory):
    rng = random.Random(SEED)
    datas = data_frames()
    segment_ids: list[str] = []
    d = daemon_factory(extra=["ingest.rate_per_s=0"]).start()  # no rate limit: every request reaches its handler
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.ipc)
    codes: dict[str, int] = {}
    try:
        with d.client() as c:
            frames_before = c.status()["broadcast"]["frames_out"]
        for n in range(REQUESTS):
            cmd = rng.choice(sorted(COMMANDS))
            entry = COMMANDS[cmd]
            header: dict[str, Any] = {"v": 1, "cmd": cmd}
            for field in entry.args.model_fields:
                r = rng.random()
                passing = segment_ids if field in ("segment_id", "before", "after") else PASSING.get(field)
                if r < 0.2:
                    header[field] = rng.choice(WRONG)
                elif r < 0.6 and passing:
                    header[field] = rng.choice(passing)
            if rng.random() < 0.05:
                header[rng.choice(["zz", "data", "v"])] = rng.choice(WRONG)
            frames = [b"", json.dumps(header).encode()]
            if (entry.data != "none" and rng.random() < 0.9) or rng.random() < 0.05:
                frames.append(rng.choice(datas))
            sock.send_multipart(frames)
            assert sock.poll(REPLY_TIMEOUT_MS), f"request {n} had no reply: {header}"
            reply = json.loads(sock.recv_multipart()[-1])
            code = reply.get("code", "ok") if not reply.get("ok") else "ok"
            codes[code] = codes.get(code, 0) + 1
            assert code == "ok" or code in REJECT_CODES, (n, header, reply)
            assert code != "internal", (n, header, reply)
            if reply.get("segment_id"):
                segment_ids[:] = (segment_ids + [reply["segment_id"]])[-20:]
            assert d.proc is not None and d.proc.poll() is None, f"the daemon died at request {n}: {header}"
        print(f"\n{REQUESTS} requests: " + ", ".join(f"{k} {v}" for k, v in sorted(codes.items())))
        assert codes.get("ok", 0) > REQUESTS // 20, codes  # the generator reaches the handlers, not only the parser
        with d.client() as c:
            assert c.call("clear")["ok"]
            st = c.status()
            assert st["state"] == "on_air" and st["broadcast"]["frames_out"] > frames_before
            with d.events() as ev:
                sid = c.enqueue(encode("wav_s16", seconds=1.0))["segment_id"]
                wait_for(ev, lambda e: e.get("type") == "started" and e.get("segment_id") == sid, timeout_s=30)
    finally:
        sock.close()
        ctx.term()
