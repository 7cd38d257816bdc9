"""quantize_dit_ on the parity fixture's tiny DiT: which layers change, and the output deviation fp8 causes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.quant.fp8 import Fp8Linear, Fp8Plan, quantize_dit_

from support.tensors import rel_err as _rel

DIT = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "dit"
LINEARS_PER_BLOCK = 4 + 6 + 2 + 3  # self-attn q/k/v/o, cross-attn q/k/v/o/k_img/v_img, FFN 2, audio q/proj/kv

torch.set_num_threads(1)


def _model(dtype: torch.dtype = torch.float32) -> FlashTalkDiT:
    model = FlashTalkDiT(DiTConfig.from_dict(json.loads((DIT / "config.json").read_text())))
    model.load_state_dict(load_file(DIT / "weights.safetensors"), strict=True)
    return model.to(dtype).eval().requires_grad_(False)


def _run(model: FlashTalkDiT, case: str) -> torch.Tensor:
    inp, c = load_file(DIT / "inputs.safetensors"), load_file(DIT / f"{case}.safetensors")
    with torch.no_grad():
        return model(c["x"][None], c["t"], inp["context"][None], inp["clip_fea"], inp["y"][None], inp["audio"])[0]


def test_only_block_linears_of_the_chosen_blocks_change():
    model = _model()
    before = {n: type(m) for n, m in model.named_modules()}
    kept_block = {k: v.clone() for k, v in model.blocks[0].state_dict().items()}
    outside = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    counts = quantize_dit_(model, Fp8Plan((1, 0)))
    assert counts == {"blocks": 1, "kept_blocks": 1, "linears": LINEARS_PER_BLOCK}
    changed = {n for n, m in model.named_modules() if type(m) is not before[n]}
    assert changed and all(n.startswith("blocks.1.") for n in changed) and len(changed) == LINEARS_PER_BLOCK
    assert all(isinstance(model.get_submodule(n), Fp8Linear) for n in changed)
    assert {"blocks.1.self_attn.q", "blocks.1.cross_attn.v_img", "blocks.1.ffn.2",
            "blocks.1.audio_cross_attn.kv_linear"} <= changed
    sd = model.state_dict()
    assert all(torch.equal(sd[f"blocks.0.{k}"], v) for k, v in kept_block.items())  # kept block untouched
    assert all(torch.equal(sd[k], v) for k, v in outside.items())  # embeddings, head (_linear32) untouched
    assert sd["blocks.1.ffn.0.weight"].dtype == torch.float8_e4m3fn and "blocks.1.ffn.0.weight_scale" in sd


@pytest.mark.timeout(120)
def test_fp8_deviation_of_the_dit_output_against_float32_and_bf16():
    """Report (docs/performance.md) and loose bounds: fp8 costs a few percent, like one e4m3 rounding step."""
    rows = []
    for case in ("case_a", "case_b"):
        golden = load_file(DIT / f"{case}.safetensors")["out"]
        f32 = _run(_model(), case)
        bf16 = _run(_model(torch.bfloat16), case)
        fp8_f32 = _model()
        quantize_dit_(fp8_f32, Fp8Plan((0, 0)))
        fp8_bf16 = _model(torch.bfloat16)
        quantize_dit_(fp8_bf16, Fp8Plan((0, 0)))
        fp8_keep1 = _model(torch.bfloat16)
        quantize_dit_(fp8_keep1, Fp8Plan((1, 0)))
        r = {
            "float32 vs golden": _rel(f32, golden),
            "bf16 vs float32": _rel(bf16, f32),
            "fp8 (float32 model) vs float32": _rel(_run(fp8_f32, case), f32),
            "fp8 (bf16 model) vs float32": _rel(_run(fp8_bf16, case), f32),
            "fp8 (bf16 model) vs bf16": _rel(_run(fp8_bf16, case), bf16),
            "fp8 block 1 only (bf16) vs bf16": _rel(_run(fp8_keep1, case), bf16),
        }
        rows.append((case, r))
        print(f"\n{case}: " + ", ".join(f"{k} {v:.2e}" for k, v in r.items()))
        assert r["float32 vs golden"] < 1e-5
        assert 1e-4 < r["fp8 (float32 model) vs float32"] < 0.1  # it does change something, and not much
        assert r["fp8 (bf16 model) vs bf16"] < 0.1
        assert r["fp8 block 1 only (bf16) vs bf16"] < r["fp8 (bf16 model) vs bf16"] * 1.5


@pytest.mark.timeout(120)
def test_quantised_blocks_compile_to_the_same_output():
    """Dynamo + AOT tracing of every quantised block (as compile_dit_blocks does, without inductor's C++ build):
    the same float32 output bit for bit, the same state-dict keys."""
    model = _model()
    quantize_dit_(model, Fp8Plan((0, 0)))
    keys, want = list(model.state_dict()), _run(model, "case_a")
    torch._dynamo.reset()
    for block in model.blocks:
        block.compile(backend="aot_eager", dynamic=False)
    assert list(model.state_dict()) == keys
    assert torch.equal(_run(model, "case_a"), want)


@pytest.mark.timeout(120)
def test_fp8_gpu_benchmark_runs_tiny_on_cpu(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fp8_gpu.py"
    spec = importlib.util.spec_from_file_location("fp8_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    assert mod.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    print(out)
    for row in ("| bf16 |", "| fp8 scaled_mm |", "| fp8 torchao | unavailable", "| fp8, every block | 30 linears |"):
        assert row in out
