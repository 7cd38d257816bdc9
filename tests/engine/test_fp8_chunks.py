"""The deviation fp8 DiT linears cause over the engine's two-chunk run (chunk/ fixture, recorded noise, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.quant.fp8 import Fp8Plan, quantize_dit_

from support.chunk_fixture import CHUNK, fixture_engine
from support.tensors import rel_err as _rel

torch.set_num_threads(1)


def _two_chunks(variant: str) -> list[tuple[dict, np.ndarray]]:
    """variant: "float32" (the fixture's own), "bf16" (DiT in bf16) or "fp8" (every block's linears in fp8)."""
    eng, inputs = fixture_engine()
    if variant == "bf16":
        eng.models.dit.to(torch.bfloat16)
    elif variant == "fp8":
        quantize_dit_(eng.models.dit, Fp8Plan((0, 0)))
    out = []
    for k in range(2):
        fx = load_file(CHUNK / f"chunk{k}.safetensors")
        trace: dict = {}
        audio = inputs["audio_all"][:, 8 * k : 8 * k + 13]
        frames = eng.generate_chunk(audio, noise=[fx[f"noise_{i}"] for i in range(5)], trace=trace)
        out.append((trace, frames))
    return out


@pytest.mark.timeout(240)
def test_two_chunk_run_deviation_with_fp8_dit():
    """Against the float32 run, with the bf16 DiT as the yardstick. The fixture's tiny random VAE amplifies a
    latent difference about 4x into chunk 1's pixels (it does so for bf16 too), so the bounds are loose."""
    ref = _two_chunks("float32")
    dev = {v: [] for v in ("bf16", "fp8")}
    for variant in dev:
        for k, (t, f) in enumerate(_two_chunks(variant)):
            tr, fr = ref[k]
            row = (_rel(t["latent_final"], tr["latent_final"]), _rel(t["colour_corrected"], tr["colour_corrected"]),
                   _rel(f.astype(np.float64), fr.astype(np.float64)))
            dev[variant].append(row)
            print(f"\nchunk{k} {variant} DiT vs float32: latent rel L2 {row[0]:.2e}, video {row[1]:.2e}, "
                  f"uint8 frames {row[2]:.2e}")
            assert np.isfinite(t["latent_final"].numpy()).all()
    for k in range(2):
        lat, vid, frames = dev["fp8"][k]
        assert 1e-4 < lat < 0.1 and vid < 0.5 and frames < 0.3
        assert frames < 20 * dev["bf16"][k][2]  # the same amplification as bf16's own rounding, not a blow-up
