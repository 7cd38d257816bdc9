"""benchmarks/dit_profile_gpu.py: its kernel kinds on names of the families a GPU trace holds (cuBLAS, FlashAttention,
cuDNN, Triton, copies), and the script end to end on tiny blocks."""

from __future__ import annotations

import pytest

from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from benchmarks.dit_profile_gpu import kernel_totals, kind_of, main, summarise


@pytest.mark.parametrize("name, kind", [
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "GEMM"),
    ("sm90_xmma_gemm_e4m3e4m3_e4m3f32_f32_tn_n_tilesize128x128x128", "GEMM"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("triton_per_fused__to_copy_abs_amax_clamp_div_mul_0", "Triton (compiled elementwise, norms, quantisation)"),
    # Inductor names a fused kernel after the operators around it: still generated elementwise work, not a GEMM
    ("triton_red_fused__scaled_mm__to_copy_abs_amax_clamp_div_gelu_t_view_14",
     "Triton (compiled elementwise, norms, quantisation)"),
    ("triton_red_fused__scaled_dot_product_cudnn_attention__to_copy_add_mean_mul_pow_rsqrt_5",
     "Triton (compiled elementwise, norms, quantisation)"),
    ("Memcpy DtoD (Device -> Device)", "copies and casts"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "copies and casts"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy", "copies and casts"),
    ("void at::native::reduce_kernel<512, 1>", "other"),
])
def test_kernel_kinds(name, kind):
    assert kind_of(name) == kind


def test_summary_is_per_block_and_shares_add_up():
    # 2 profiled calls of 4 blocks: 8 blocks; 8 ms of GEMM and 2 ms of attention in all
    s = summarise([("nvjet_a", 6000.0, 16), ("nvjet_b", 2000.0, 8), ("flash_fwd", 2000.0, 8)], calls=2, layers=4)
    kinds = {k: (ms, n, share) for k, ms, n, share in s["kinds"]}
    assert kinds["GEMM"] == pytest.approx((1.0, 3.0, 0.8))
    assert kinds["attention"] == pytest.approx((0.25, 1.0, 0.2))
    assert s["device_ms_per_block"] == pytest.approx(1.25)
    assert [t[0] for t in s["top"]] == ["nvjet_a", "nvjet_b", "flash_fwd"]


def test_kernel_totals_count_each_kernel_once():
    # the profiler's own event type: a generated kernel's CPU-side launch event carries its name (and device time)
    def ev(name, start, end, device_type):
        return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, device_type=device_type)

    events = [ev("triton_red_fused__scaled_mm_amax_0", 0, 50, DeviceType.CPU),
              ev("triton_red_fused__scaled_mm_amax_0", 10, 40, DeviceType.CUDA),
              ev("triton_red_fused__scaled_mm_amax_0", 60, 90, DeviceType.CUDA),
              ev("nvjet_sm90_qqtst", 100, 300, DeviceType.CUDA), ev("aten::_scaled_mm", 95, 310, DeviceType.CPU)]
    assert sorted(kernel_totals(events)) == [("nvjet_sm90_qqtst", 200.0, 1),
                                             ("triton_red_fused__scaled_mm_amax_0", 60.0, 2)]


def test_tiny_run_prints_the_table(capsys):
    assert main(["--tiny", "--layers", "1", "--warmup", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| GEMM |" in out and "| attention |" in out and "per block" in out
