"""fp8 e4m3 quantisation against a float64 reference written here; Fp8Linear, its kernels, compile and plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from flashtalk_live.quant.fp8 import (
    E4M3,
    Fp8Linear,
    Fp8Plan,
    capability_reason,
    cast_e4m3,
    fp8_matmul,
    quantize_rowwise,
    resolve_plan,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ reference (float64)


def _e4m3_grid() -> np.ndarray:
    """Every finite non-negative e4m3fn value, by code 0..126 (code 127 is NaN): bias 7, 3 mantissa bits."""
    vals = []
    for code in range(127):
        e, m = code >> 3, code & 7
        vals.append(m / 8 * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return np.array(vals, dtype=np.float64)


GRID = _e4m3_grid()


def ref_e4m3(v: np.ndarray) -> np.ndarray:
    """Round float64 values to e4m3fn: nearest, ties to the even code, saturating at +-448."""
    a = np.minimum(np.abs(v), GRID[-1])
    hi = np.clip(np.searchsorted(GRID, a), 1, len(GRID) - 1)
    lo = hi - 1
    d_lo, d_hi = a - GRID[lo], GRID[hi] - a
    pick = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.sign(v) * GRID[pick]


def ref_quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spec: scale = float32(max(amax, 1e-12) / 448); q = e4m3(float32(x / scale)). Returns (q, scale) float64."""
    amax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-12).astype(np.float64))
    scale = (amax / 448.0).astype(np.float32).astype(np.float64)
    return ref_e4m3((x / scale).astype(np.float32).astype(np.float64)), scale


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


# ------------------------------------------------------------------------------------------ numerics


def test_grid_is_the_e4m3fn_format():
    codes = torch.arange(127, dtype=torch.uint8).view(E4M3)
    assert np.array_equal(_f64(codes.float()), GRID)
    assert GRID[-1] == 448.0 and GRID[1] == 2.0**-9


def test_cast_rounds_to_nearest_even_and_saturates():
    mids = (GRID[:-1] + GRID[1:]) / 2  # exact ties (representable in float32)
    v = np.concatenate([
        GRID, mids, mids * (1 + 1e-6), mids * (1 - 1e-6),  # ties both ways, and just off them
        [448.0, 449.0, 463.9, 464.0, 480.0, 1e4, 3e38],  # at and beyond the largest finite value
        np.random.default_rng(0).standard_normal(4000) * 10.0 ** np.random.default_rng(1).uniform(-4, 3, 4000),
    ])
    v = np.concatenate([v, -v]).astype(np.float32)
    got = _f64(cast_e4m3(torch.from_numpy(v)).float())
    want = ref_e4m3(v.astype(np.float64))
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(float(v[i]), got[i], want[i]) for i in bad[:10]]
    assert np.all(np.abs(got[np.abs(v) >= 448]) == 448)  # saturation, never NaN
    ties = torch.from_numpy(mids.astype(np.float32))
    even = (cast_e4m3(ties).view(torch.uint8) & 1) == 0
    assert bool(even.all())


def test_quantize_rowwise_matches_the_reference_per_row_with_zero_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g) * torch.logspace(-6, 4, 64).unsqueeze(1)  # rows of very different size
    x[5] = 0.0  # zero row
    x[9, 3] = 1e6  # one outlier dominates its row
    for dtype in (torch.float32, torch.bfloat16):
        xt = x.to(dtype)
        q, scale = quantize_rowwise(xt)
        assert q.dtype == E4M3 and scale.dtype == torch.float32 and scale.shape == (64, 1)
        want_q, want_s = ref_quantize_rows(_f64(xt))
        assert np.array_equal(_f64(scale), want_s)
        assert np.array_equal(_f64(q.float()), want_q)
        assert not torch.isnan(q.float()).any()
        assert torch.equal(q[5].float(), torch.zeros(96)) and float(scale[5]) > 0
        assert np.abs(want_q).max(axis=1).min() >= 0 and float(q.float().abs().amax()) == 448.0
        # dequantised error within half an e4m3 step (2^-4 relative) of each row's largest value
        deq = q.float() * scale
        err = (deq - xt.float()).abs().amax(dim=1) / xt.float().abs().amax(dim=1).clamp_min(1e-30)
        assert float(err.max()) <= 2.0**-4


def test_quantize_leading_dims_are_rows():
    x = torch.randn(2, 3, 32)
    q, s = quantize_rowwise(x)
    q2, s2 = quantize_rowwise(x.reshape(6, 32))
    assert torch.equal(q.view(6, 32).view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s.view(6, 1), s2)


# ------------------------------------------------------------------------------------------ Fp8Linear


def _linear(k: int, n: int, seed: int = 0, dtype=torch.float32) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin.to(dtype).requires_grad_(False)


def test_fp8_linear_equals_a_float64_matmul_of_the_dequantised_operands():
    lin = _linear(128, 48)
    fp8 = Fp8Linear.from_linear(lin, kernel="emulated")
    assert fp8.weight.dtype == E4M3 and fp8.weight_scale.shape == (48,)
    assert fp8.bias.data_ptr() == lin.bias.data_ptr()  # kept, not copied
    x = torch.randn(2, 37, 128, generator=torch.Generator().manual_seed(1)) * 3
    x[0, 4] = 0.0
    y = fp8(x)
    assert y.shape == (2, 37, 48) and y.dtype == torch.float32
    wq, ws = ref_quantize_rows(_f64(lin.weight))
    xq, xs = ref_quantize_rows(_f64(x).reshape(-1, 128))
    want = (xq * xs) @ (wq * ws).T + _f64(lin.bias)
    got = _f64(y).reshape(-1, 48)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 1e-6, rel
    assert np.allclose(got[4], _f64(lin.bias), atol=1e-7)  # zero token: bias only
    # and the deviation from the unquantised layer is what e4m3 costs: a few percent, not more
    dev = ((y - lin(x)).norm() / lin(x).norm()).item()
    print(f"\nFp8Linear vs float32 Linear: rel L2 {dev:.3e}")
    assert 1e-3 < dev < 0.08


def test_scaled_mm_kernel_agrees_with_the_emulation():
    """The exact torch._scaled_mm call the GPU makes (rowwise scales, fused bias, bf16 out), run where the CPU
    build supports it (torch >= 2.13)."""
    lin = _linear(64, 32, seed=2, dtype=torch.bfloat16)
    x = torch.randn(17, 64, generator=torch.Generator().manual_seed(3)).bfloat16()
    emu = Fp8Linear.from_linear(lin, kernel="emulated")(x)
    try:
        smm = Fp8Linear.from_linear(lin, kernel="scaled_mm")(x)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"this torch build has no CPU _scaled_mm with rowwise scales: {e}")
    assert smm.dtype == torch.bfloat16 and smm.shape == emu.shape
    rel = ((smm.float() - emu.float()).norm() / emu.float().norm()).item()
    assert rel < 1e-2, rel  # bf16 rounding of the output only


@pytest.mark.timeout(200)
@pytest.mark.parametrize("kernel", ["emulated", "scaled_mm"])
def test_fp8_linear_compiles_without_graph_breaks(kernel):
    lin = Fp8Linear.from_linear(_linear(64, 32, dtype=torch.bfloat16), kernel=kernel)
    x = torch.randn(2, 9, 64).bfloat16()
    try:
        want = lin(x)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"no CPU _scaled_mm here: {e}")
    torch._dynamo.reset()
    compiled = torch.compile(lin, fullgraph=True, backend="aot_eager", dynamic=False)  # raises on a graph break
    assert torch.equal(compiled(x), want)


def test_fp8_matmul_rejects_an_unknown_kernel():
    q, s = quantize_rowwise(torch.randn(2, 16))
    with pytest.raises(ValueError, match="unknown fp8 kernel"):
        fp8_matmul(q, s, q, s.view(-1), None, torch.float32, kernel="int8")


# ------------------------------------------------------------------------------------------ plans


def test_plan_blocks_and_validation():
    assert Fp8Plan().blocks(40) == list(range(2, 37))
    assert Fp8Plan((0, 0)).blocks(2) == [0, 1]
    assert Fp8Plan((1, 1)).blocks(2) == [] and Fp8Plan((5, 5)).blocks(4) == []
    assert Fp8Plan([1, 0]).keep_bf16_blocks == (1, 0)  # from JSON / TOML lists
    with pytest.raises(ValueError, match="keep_bf16_blocks"):
        Fp8Plan((-1, 0))
    with pytest.raises(ValueError, match="unknown fp8 backend"):
        Fp8Plan(backend="int8")


def test_gpu_capability_gate_names_the_gpu():
    old = capability_reason("NVIDIA A100-SXM4-80GB", (8, 0))
    assert "NVIDIA A100-SXM4-80GB" in old and "8.0" in old and "8.9" in old
    assert capability_reason("NVIDIA GeForce RTX 3090", (8, 6)) is not None
    for name, cap in (("NVIDIA L40S", (8, 9)), ("NVIDIA H200", (9, 0)), ("NVIDIA B200", (10, 0))):
        assert capability_reason(name, cap) is None


def test_fp8_on_the_cpu_is_refused_with_a_warning_and_runs_bf16():
    assert resolve_plan("none", (2, 3), "scaled_mm", "cpu") is None
    with capture_logs() as logs:
        assert resolve_plan("fp8", (2, 3), "scaled_mm", "cpu") is None
    warn = [e for e in logs if e["event"] == "fp8_unavailable_running_bf16"]
    assert warn and warn[0]["log_level"] == "warning" and "cpu" in warn[0]["reason"]
    with pytest.raises(ValueError, match="unknown quantize"):
        resolve_plan("int4", (2, 3), "scaled_mm", "cpu")


def test_settings_fields_and_the_14b_config(tmp_path):
    from pathlib import Path

    from pydantic import ValidationError

    from flashtalk_live.settings import ModelSettings
    from flashtalk_live.config import load_settings

    m = ModelSettings()
    assert (m.quantize, m.fp8_keep_bf16_blocks, m.fp8_backend) == ("none", (2, 3), "scaled_mm")
    with pytest.raises(ValidationError):
        ModelSettings(fp8_keep_bf16_blocks=(-1, 3))
    with pytest.raises(ValidationError):
        ModelSettings(quantize="int8")
    cfg = Path(__file__).resolve().parents[2] / "configs" / "flashtalk-14b.toml"
    s = load_settings(cfg)
    assert (s.model.quantize, s.model.fp8_keep_bf16_blocks, s.model.fp8_backend) == ("fp8", (2, 3), "scaled_mm")
    from flashtalk_live.quant.fp8 import plan_from_settings

    with capture_logs() as logs:
        assert plan_from_settings(s.model, "cpu") is None  # the 14B config on a CPU: bf16, said at start-up
    assert [e["event"] for e in logs] == ["fp8_unavailable_running_bf16"]


def test_start_up_on_gpus_with_and_without_fp8(monkeypatch):
    """resolve_plan on a CUDA device as the driver reports it (no GPU here: the two device queries are replaced)."""
    import importlib.util

    gpu = {"name": "NVIDIA A100-SXM4-80GB", "cap": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: gpu["name"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: gpu["cap"])
    with capture_logs() as logs:
        assert resolve_plan("fp8", (2, 3), "scaled_mm", "cuda:0") is None
    (warn,) = [e for e in logs if e["event"] == "fp8_unavailable_running_bf16"]
    assert "NVIDIA A100-SXM4-80GB" in warn["reason"] and "8.0" in warn["reason"] and warn["device"] == "cuda:0"
    gpu.update(name="NVIDIA H200", cap=(9, 0))
    with capture_logs() as logs:
        assert resolve_plan("fp8", [1, 2], "scaled_mm", "cuda:0") == Fp8Plan((1, 2), "scaled_mm")
    assert not logs
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torchao" else real_find_spec(n, *a))
    with capture_logs() as logs:
        assert resolve_plan("fp8", (2, 3), "torchao", "cuda:0") == Fp8Plan((2, 3), "scaled_mm")
    assert [e["event"] for e in logs] == ["fp8_backend_unavailable"]
