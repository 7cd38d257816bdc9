"""umT5-XXL on the CPU (issue 22: the text encoder never needs the GPU): what a text-cache miss costs with the
default `model.text_device = "cpu"`.

    python benchmarks/text_encoder_cpu.py                    # full size, prompts of 24 and 64 tokens
    python benchmarks/text_encoder_cpu.py --tokens 24 --padded   # also the 512-token padded forward, for scale

Builds the full-size encoder (models.t5.UMT5_XXL, 5.7 B parameters) with random bf16 weights in host memory (the
time to read the real 11 GB file is not in it: that is the disk's), then times `T5Encoder.encode` on prompts of the
given token counts, padded to 512 with a mask as the tokenizer gives them (encode runs only up to the longest true
length). Prints the machine, the commit, the threads, the resident set size and the seconds per prompt.
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.model.t5 import UMT5_XXL, T5Encoder  # noqa: E402


def padded_prompt(tokens: int, text_len: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(1, text_len, dtype=torch.int64)
    ids[0, :tokens] = torch.randint(3, UMT5_XXL.vocab_size, (tokens,))
    mask = torch.zeros(1, text_len, dtype=torch.int64)
    mask[0, :tokens] = 1
    return ids, mask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[24, 64])
    ap.add_argument("--padded", action="store_true", help="also the whole 512-token forward (what encode no longer runs)")
    a = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = T5Encoder(UMT5_XXL)
    model = model.to_empty(device="cpu").to(torch.bfloat16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.02, 0.02)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    rows = []
    with torch.no_grad():
        for n in a.tokens:
            ids, mask = padded_prompt(n)
            t = time.perf_counter()
            (ctx,) = model.encode(ids, mask)
            rows.append((f"encode, {n} tokens (padded to 512, run to {n})", time.perf_counter() - t, tuple(ctx.shape)))
        if a.padded:
            ids, mask = padded_prompt(a.tokens[0])
            t = time.perf_counter()
            model(ids, mask)
            rows.append((f"forward over all 512 positions ({a.tokens[0]} true)", time.perf_counter() - t, None))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads,"
          f" torch {torch.__version__}, commit {commit}; umT5-XXL {params / 1e9:.2f} B parameters, random bf16 weights")
    print(f"built in host memory in {build_s:.1f} s; peak resident set {rss_gib:.1f} GiB\n")
    print("| what | seconds | context |")
    print("|---|---|---|")
    for what, s, shape in rows:
        print(f"| {what} | {s:.2f} | {shape or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
