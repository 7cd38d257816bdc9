"""Random weights (benchmarks): the DiT is built block by block and fp8-quantised as it goes, like the real load.

The bytes are watched on the real storages: each block's bf16 linear weights are weakly referenced as the block is
filled (before it is quantised); the peak of those alive at once shows whether the bf16 DiT ever existed whole.
"""

from __future__ import annotations

import weakref

import torch

from flashtalk_live.checkpoints.fake import tiny_configs
from flashtalk_live.checkpoints.random_weights import materialise_dit, random_engine_models
from flashtalk_live.quant.fp8 import Fp8Linear, Fp8Plan, quantized_linears


def _watched_build(plan: Fp8Plan | None):
    cfg = tiny_configs()[0]
    refs: list[tuple[weakref.ref, int]] = []
    peak = [0]

    def live() -> int:
        return sum(n for r, n in refs if r() is not None)

    def on_block(i: int, block: torch.nn.Module) -> None:
        peak[0] = max(peak[0], live())  # the previous blocks, after their quantisation
        for m in block.modules():
            if type(m) is torch.nn.Linear:
                st = m.weight.untyped_storage()
                refs.append((weakref.ref(st), st.nbytes()))
        peak[0] = max(peak[0], live())

    dit = materialise_dit(cfg, torch.device("cpu"), torch.bfloat16, 1, plan, on_block)
    peak[0] = max(peak[0], live())
    per_block = sum(n for _, n in refs) // cfg.num_layers
    return dit, peak[0], per_block, cfg.num_layers, live()


def test_the_bf16_dit_never_exists_whole_when_fp8_builds_it() -> None:
    dit, peak_plain, per_block, n, alive = _watched_build(None)
    assert peak_plain == per_block * n == alive  # the measurement sees the plain build keep every block
    dit, peak, per_block, n, alive = _watched_build(Fp8Plan((0, 0), kernel="emulated"))
    print(f"\nbf16 linear bytes alive at once: plain {peak_plain}, fp8 {peak} (one block {per_block}, {n} blocks)")
    assert peak <= per_block < peak_plain  # one block in bf16 at a time
    assert alive == 0  # every block's bf16 weights are gone: only e4m3 remains
    assert all(quantized_linears(b) == [] for b in dit.blocks)  # no bf16 linear left to quantise
    assert sum(isinstance(m, Fp8Linear) for m in dit.modules()) == 15 * n


def test_kept_blocks_stay_bf16_and_the_engine_family_takes_the_plan() -> None:
    plan = Fp8Plan((0, 1), kernel="emulated")
    models = random_engine_models("tiny", "cpu", torch.float32, fp8=plan)
    blocks = models.dit.blocks
    assert isinstance(blocks[0].self_attn.q, Fp8Linear) and type(blocks[-1].self_attn.q) is torch.nn.Linear
    assert not any(p.is_meta for p in models.dit.parameters())
