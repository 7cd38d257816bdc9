"""A room that answers: each line on stdin is a viewer's comment; the avatar says a reply while it is still spoken.

The reply comes from a trivial rule (no LLM); espeak-ng (Debian: apt-get install espeak-ng) speaks it into a pipe,
and the audio is streamed into the running daemon as it comes out (clip_open / clip_append / clip_close through
`Client.stream`), with the reply as the clip's caption. The avatar starts talking before espeak-ng has finished.

    flashtalk-live run &                                     # a daemon (its default state directory)
    python examples/answer_comments.py                       # type comments, one per line
    printf 'hello\\nhow much is it?\\n' | python examples/answer_comments.py --endpoint ipc:///path/control.sock

Each reply prints one JSON line: the comment, the reply, its segment_id and what the daemon received.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
from typing import Iterator

from flashtalk_live.cliargs import add_config_args, settings_from_args
from flashtalk_live.client import Client
from flashtalk_live.ingest.cli import default_endpoints

RULES = (  # (words in the comment, reply); the first match wins
    (("price", "cost", "how much", "多少钱"), "Great question! Today's price is on the card below, and it comes "
                                             "with free shipping."),
    (("ship", "deliver"), "We ship within two days, and tracking comes by message."),
    (("size", "fit"), "It runs true to size. If in doubt, pick the larger one."),
    (("hello", "hi", "hey", "你好"), "Hello and welcome to the room! Ask me anything about today's products."),
)


def reply_to(comment: str) -> str:
    """The trivial rule: a keyword's canned answer, else a thank-you that repeats the comment."""
    low = comment.lower()
    for words, answer in RULES:
        if any(w in low for w in words):
            return answer
    return f"Thanks for your comment: {comment.strip()[:120]}. Keep them coming!"


def speech(text: str, voice: str, wpm: int) -> tuple[Iterator[bytes], int, int]:
    """espeak-ng's raw PCM as it is synthesised: (pieces, sample rate, channels) read from its WAV header."""
    proc = subprocess.Popen(["espeak-ng", "--stdout", "-v", voice, "-s", str(wpm), text], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    head = b""
    while len(head) < 44:  # the canonical 44-byte header espeak-ng writes before the samples
        more = os.read(proc.stdout.fileno(), 44 - len(head))
        if not more:
            raise RuntimeError(f"espeak-ng wrote no audio (exit {proc.wait()})")
        head += more
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE" or head[36:40] != b"data":
        raise RuntimeError("espeak-ng's output is not the expected WAV stream")
    channels, rate = struct.unpack("<HI", head[22:28])

    def pieces() -> Iterator[bytes]:
        try:
            while piece := os.read(proc.stdout.fileno(), 8192):  # type: ignore[union-attr]
                yield piece
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            proc.wait()

    return pieces(), rate, channels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(ap)  # -c CONFIG / --set: the daemon's config, as the flashtalk-live verbs find it
    ap.add_argument("--state-dir", help="the daemon's state directory")
    ap.add_argument("--endpoint", help="its control endpoint (default: the config's ingest.control[0])")
    ap.add_argument("--voice", default="en-us", help="espeak-ng voice (e.g. en-us, cmn for Mandarin)")
    ap.add_argument("--wpm", type=int, default=165, help="speaking rate, words per minute")
    ap.add_argument("--mode", choices=("enqueue", "insert", "play_now"), default="insert",
                    help="where a reply goes: insert (default) answers right after the clip on air")
    a = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        print("answer_comments: espeak-ng is missing (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    if a.endpoint:
        control = a.endpoint
    else:
        settings = settings_from_args(a)
        control = default_endpoints(settings.expanded(settings.ingest))[0]
    with Client(control, timeout_s=10) as client:
        for line in sys.stdin:
            comment = line.strip()
            if not comment:
                continue
            answer = reply_to(comment)
            pieces, rate, channels = speech(answer, a.voice, a.wpm)
            with client.stream(pieces, format="pcm_s16le", sample_rate=rate, channels=channels, mode=a.mode,
                               text=answer) as s:
                s.send_all()  # each piece as espeak-ng writes it
                done = s.close()
            print(json.dumps({"comment": comment, "reply": answer, "segment_id": done["segment_id"],
                              "duration_s": done["duration_s"], "pieces": done["parts"]}, ensure_ascii=False),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
