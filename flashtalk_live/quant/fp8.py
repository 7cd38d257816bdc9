"""fp8 (e4m3) linears for the DiT blocks: per-output-channel weight scales, per-token dynamic activation scales.

    plan = Fp8Plan(keep_bf16_blocks=(2, 3), backend="scaled_mm")
    quantize_dit_(dit, plan)                 # after loading; or load_dit(..., fp8=plan) to quantise while loading

Scheme (both backends): w [N, K] is stored as e4m3 with one float32 scale per output row, s_w = amax(|w_n|) / 448;
at run time each token row of the activation gets s_x = amax(|x_m|) / 448 and y = (q_x @ q_w^T) * s_x * s_w + b.
Backends:
- "scaled_mm": our `Fp8Linear`, one `torch._scaled_mm` (rowwise scales, bias fused, bf16 out) on CUDA; off CUDA
  the same arithmetic emulated exactly in float32 (tests, CI). `fast_accum` (model.fp8_fast_accum) passes
  use_fast_accum=True to _scaled_mm: Hopper's fp8 tensor cores then skip the periodic promotion of the partial
  sums to full float32 (faster, less exact; docs/performance.md has the measured cost). The emulation is exact
  either way.
- "torchao": torchao's Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()) on the same linears
  (CUDA with compute capability >= 8.9 only; the optional extra `flashtalk-live[fp8]`).

Only the Linear layers inside the transformer blocks are replaced (self-attention q/k/v/o, text/image
cross-attention, audio cross-attention, FFN); embeddings, the head and the float32 `_linear32` layers stay as
they are, and the first/last blocks named by `keep_bf16_blocks` too. This is not model code: it rewrites modules
of a loaded model and queries the GPU, so it lives apart from flashtalk_live.model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from flashtalk_live.log import get_logger
from flashtalk_live.settings import ModelSettings

__all__ = [
    "BACKENDS",
    "E4M3",
    "E4M3_MAX",
    "Fp8Linear",
    "Fp8Plan",
    "block_quantizers",
    "capability_reason",
    "cast_e4m3",
    "dequantize_rowwise",
    "fp8_matmul",
    "fp8_unavailable_reason",
    "plan_from_settings",
    "quantize_block_",
    "quantize_dit_",
    "quantize_rowwise",
    "quantized_linears",
    "resolve_plan",
]

log = get_logger("quant")

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite e4m3fn value
AMAX_FLOOR = 1e-12  # an all-zero row gets this amax: its scale stays finite and its values quantise to 0
MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell (10.x, 12.x)
BACKENDS = ("scaled_mm", "torchao")
TORCHAO_MISSING = "torchao is not installed (pip install 'flashtalk-live[fp8]')"
KERNELS = ("auto", "scaled_mm", "emulated")


# ------------------------------------------------------------------------------------------ numerics


def cast_e4m3(v: torch.Tensor) -> torch.Tensor:
    """float32 -> e4m3fn, round to nearest even, saturating at +-448 (a plain cast would give NaN beyond it)."""
    return v.clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (e4m3 [..., K], float32 scale [..., 1]) with scale = max(amax of the row, 1e-12) / 448.

    q = cast_e4m3(float32(x) / scale); a zero row gives zeros. No host synchronisation (compile-friendly).
    """
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_FLOOR) / E4M3_MAX
    return cast_e4m3(xf / scale), scale


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 q * scale (scale [..., 1] or broadcastable)."""
    return q.float() * scale


def fp8_matmul(
    xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
    bias: torch.Tensor | None, out_dtype: torch.dtype, kernel: str = "auto", fast_accum: bool = False,
) -> torch.Tensor:
    """(xq [M, K] * x_scale [M, 1]) @ (wq [N, K] * w_scale [N])^T + bias -> out_dtype [M, N].

    kernel "scaled_mm" (the default on CUDA): torch._scaled_mm, rowwise scales, bias fused, bf16 out (its only
    rowwise output type), then cast. "emulated" (the default elsewhere): the e4m3 values exactly in float32, one
    float32 matmul, scales applied to the product as _scaled_mm does. fast_accum: _scaled_mm's use_fast_accum
    (the emulation has no such shortcut and ignores it).
    """
    if kernel == "auto":
        kernel = "scaled_mm" if xq.is_cuda else "emulated"
    if kernel == "scaled_mm":
        b = None if bias is None else bias.to(torch.bfloat16)
        y = torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), bias=b,
                             out_dtype=torch.bfloat16, use_fast_accum=fast_accum)
        return y.to(out_dtype)
    if kernel != "emulated":
        raise ValueError(f"unknown fp8 kernel {kernel!r}; known: {', '.join(KERNELS)}")
    y = (xq.float() @ wq.float().t()) * x_scale * w_scale.view(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


class Fp8Linear(nn.Module):
    """A Linear holding its weight in e4m3 with per-output-channel float32 scales; activations quantised per token.

    Buffers: weight e4m3 [out, in], weight_scale float32 [out], bias [out] (the source Linear's dtype) or None.
    The output has the input's dtype. `kernel`: "auto" | "scaled_mm" | "emulated"; `fast_accum`: _scaled_mm's
    use_fast_accum (see `fp8_matmul`).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 bias_dtype: torch.dtype = torch.bfloat16, device: Any = None, kernel: str = "auto",
                 fast_accum: bool = False) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown fp8 kernel {kernel!r}; known: {', '.join(KERNELS)}")
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.fast_accum = bool(fast_accum)
        self.register_buffer("weight", torch.zeros(out_features, in_features, device=device, dtype=E4M3))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, device=device, dtype=bias_dtype) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "auto", fast_accum: bool = False) -> "Fp8Linear":
        """Quantise a loaded Linear (its bias tensor is kept, not copied)."""
        w = linear.weight.detach()
        with torch.device("meta"):
            out = cls(linear.in_features, linear.out_features, linear.bias is not None, kernel=kernel,
                      fast_accum=fast_accum)
        q, scale = quantize_rowwise(w)
        out.weight, out.weight_scale = q, scale.view(-1)
        out.bias = None if linear.bias is None else linear.bias.detach()
        return out

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_rowwise(self.weight, self.weight_scale.view(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xq, xs = quantize_rowwise(x.reshape(-1, self.in_features))
        y = fp8_matmul(xq, xs, self.weight, self.weight_scale, self.bias, x.dtype, self.kernel, self.fast_accum)
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}, fast_accum={self.fast_accum}")


# ------------------------------------------------------------------------------------------ which layers


def quantized_linears(block: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers of one DiT block that fp8 replaces: all of them whose sizes suit the fp8 GEMM
    (in and out features multiples of 16, as _scaled_mm requires). A DiT block runs no Linear in float32 on
    purpose (those are `_linear32` outside the blocks: time embedding, head)."""
    return [(n, m) for n, m in block.named_modules()
            if type(m) is nn.Linear and m.in_features % 16 == 0 and m.out_features % 16 == 0]


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def quantize_block_(block: nn.Module, backend: str = "scaled_mm", kernel: str = "auto",
                    fast_accum: bool = False) -> int:
    """Quantise one loaded block's linears in place; returns how many were replaced."""
    layers = quantized_linears(block)
    if backend == "scaled_mm":
        for name, lin in layers:
            _set_submodule(block, name, Fp8Linear.from_linear(lin, kernel=kernel, fast_accum=fast_accum))
        return len(layers)
    if backend != "torchao":
        raise ValueError(f"unknown fp8 backend {backend!r}; known: {', '.join(BACKENDS)}")
    if fast_accum:
        raise ValueError("fp8 fast_accum is an option of the scaled_mm backend; torchao chooses its own")
    device = next(block.parameters()).device
    reason = fp8_unavailable_reason(device, "torchao")
    if reason:
        raise RuntimeError(f"fp8 backend torchao cannot run here: {reason}")
    # torchao is optional: only for fp8_backend = "torchao"
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    chosen = {id(m) for _, m in layers}
    quantize_(block, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda m, _fqn: id(m) in chosen)
    return len(layers)


@dataclass(frozen=True)
class Fp8Plan:
    """Which blocks get fp8 and through which backend. keep_bf16_blocks = (first n, last n) blocks left as loaded."""

    keep_bf16_blocks: tuple[int, int] = (2, 3)
    backend: str = "scaled_mm"
    kernel: str = "auto"  # Fp8Linear kernel (scaled_mm backend); tests force "emulated" / "scaled_mm"
    fast_accum: bool = False  # _scaled_mm's use_fast_accum (scaled_mm backend only)

    def __post_init__(self) -> None:
        keep = tuple(int(k) for k in self.keep_bf16_blocks)
        if len(keep) != 2 or min(keep) < 0:
            raise ValueError(f"keep_bf16_blocks must be (first, last) >= 0, got {self.keep_bf16_blocks!r}")
        object.__setattr__(self, "keep_bf16_blocks", keep)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown fp8 backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown fp8 kernel {self.kernel!r}; known: {', '.join(KERNELS)}")
        if self.fast_accum and self.backend != "scaled_mm":
            raise ValueError(f"fp8 fast_accum needs the scaled_mm backend, got {self.backend!r}")

    def blocks(self, num_layers: int) -> list[int]:
        first, last = self.keep_bf16_blocks
        return [i for i in range(num_layers) if first <= i < num_layers - last]

    def quantize_block_(self, block: nn.Module) -> int:
        return quantize_block_(block, self.backend, self.kernel, self.fast_accum)


def block_quantizers(plan: Fp8Plan, num_layers: int) -> dict[str, Callable[[nn.Module], Any]]:
    """Submodule name -> quantiser, for `checkpoints.loader.load_into(finish=...)`: each block is quantised as
    soon as its last tensor has arrived, so the bf16 copy of the whole DiT is never held."""
    return {f"blocks.{i}": plan.quantize_block_ for i in plan.blocks(num_layers)}


def quantize_dit_(dit: nn.Module, plan: Fp8Plan | None = None) -> dict[str, int]:
    """Quantise a loaded FlashTalkDiT's block linears in place; returns counts for the log."""
    plan = plan or Fp8Plan()
    blocks = cast(nn.ModuleList, dit.blocks)
    chosen = plan.blocks(len(blocks))
    layers = sum(plan.quantize_block_(blocks[i]) for i in chosen)
    return {"blocks": len(chosen), "kept_blocks": len(blocks) - len(chosen), "linears": layers}


# ------------------------------------------------------------------------------------------ can this GPU?


def capability_reason(name: str, capability: tuple[int, int]) -> str | None:
    """Why a CUDA device cannot run fp8 matmuls, or None when it can."""
    if tuple(capability) < MIN_CAPABILITY:
        return (f"{name} has compute capability {capability[0]}.{capability[1]}; fp8 matmuls need "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or later (Ada, Hopper, Blackwell)")
    return None


def fp8_unavailable_reason(device: torch.device | str, backend: str = "scaled_mm") -> str | None:
    """None when `device` runs fp8 matmuls through `backend`; else a sentence naming the device and why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"device {device} has no fp8 matmul (only emulated, slower than bf16); fp8 needs a CUDA GPU"
    reason = capability_reason(torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
    if reason is None and backend == "torchao" and importlib.util.find_spec("torchao") is None:
        reason = TORCHAO_MISSING
    return reason


def resolve_plan(quantize: str, keep_bf16_blocks: Any, backend: str, device: torch.device | str,
                 fast_accum: bool = False) -> Fp8Plan | None:
    """The Fp8Plan for `device`, or None for bf16 (quantize "none", or fp8 asked for where it cannot run: then a
    warning names the device and why)."""
    if quantize == "none":
        return None
    if quantize != "fp8":
        raise ValueError(f"unknown quantize {quantize!r}; known: none, fp8")
    plan = Fp8Plan(tuple(keep_bf16_blocks), backend, fast_accum=fast_accum)
    reason = fp8_unavailable_reason(device, plan.backend)
    if reason == TORCHAO_MISSING:  # fp8 runs here, only not through torchao: keep fp8, say so
        log.warning("fp8_backend_unavailable", backend=backend, reason=reason, using="scaled_mm")
        plan = Fp8Plan(plan.keep_bf16_blocks, "scaled_mm", fast_accum=fast_accum)
        reason = None
    if reason is not None:
        log.warning("fp8_unavailable_running_bf16", device=str(device), reason=reason, backend=plan.backend)
        return None
    return plan


def plan_from_settings(model: ModelSettings, device: torch.device | str) -> Fp8Plan | None:
    """`resolve_plan` of settings.model (quantize, fp8_keep_bf16_blocks, fp8_backend, fp8_fast_accum)."""
    return resolve_plan(model.quantize, model.fp8_keep_bf16_blocks, model.fp8_backend, device,
                        model.fp8_fast_accum)
