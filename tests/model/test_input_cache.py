"""The DiT's step-constant cache (context K/V per session, audio tokens per chunk, RoPE per geometry) changes
no number, follows every change of its inputs or weights, and the sampling steps make no host synchronisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from flashtalk_live.engine.sampler import NoiseSource, make_timesteps, sample
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.parallel.group import ParallelGroup
from flashtalk_live.parallel.runtime import DiTClient
from flashtalk_live.parallel.ulysses import UlyssesSplit

from support.parity import parity_dit, parity_dit_inputs

DIT = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "dit"
CFG = DiTConfig.from_dict(json.loads((DIT / "config.json").read_text()))

torch.set_num_threads(1)


_model = parity_dit


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return parity_dit_inputs()


def _call(model: FlashTalkDiT, inp: dict, case: dict, context: torch.Tensor | None = None,
          clip_fea: torch.Tensor | None = None) -> torch.Tensor:
    ctx = inp["context"] if context is None else context
    clip = inp["clip_fea"] if clip_fea is None else clip_fea
    with torch.no_grad():  # the engine's call: views of the session's tensors every step
        return model(case["x"][None], case["t"], ctx[None], clip, inp["y"][None], inp["audio"])[0]


def _uncached(model: FlashTalkDiT, *args, **kw) -> torch.Tensor:
    model.set_input_cache(False)
    try:
        return _call(model, *args, **kw)
    finally:
        model.set_input_cache(True)


def test_cached_steps_are_bitwise_the_uncached_ones_and_the_golden_output(inputs) -> None:
    model = _model()
    cases = [load_file(DIT / f"case_{c}.safetensors") for c in "ab"]  # two steps: other x and t, same session
    want = [_uncached(model, inputs, c) for c in cases]
    assert model.input_cache.session is None  # off means off: nothing kept
    got = [_call(model, inputs, c) for c in cases + cases]
    c = model.input_cache
    assert c.misses["session"] == 1 and c.hits["session"] == 3  # K/V computed once for the four steps
    assert c.misses["audio"] == 1 and c.hits["audio"] == 3
    assert c.session is not None and len(c.session[2].kv) == CFG.num_layers
    for i, out in enumerate(got):
        assert torch.equal(out, want[i % 2]), f"step {i}"
        gold = cases[i % 2]["out"]
        assert ((out - gold).norm() / gold.norm()).item() < 1e-5  # still the reference's numbers


def test_new_context_in_place_edit_and_new_weights_all_miss_the_cache(inputs) -> None:
    model = _model()
    case = load_file(DIT / "case_a.safetensors")
    out_a = _call(model, inputs, case)
    # A new session: another context tensor and other CLIP features.
    ctx_b = inputs["context"] + 0.5 * torch.randn(inputs["context"].shape, generator=torch.Generator().manual_seed(1))
    clip_b = inputs["clip_fea"].flip(1)
    out_b = _call(model, inputs, case, ctx_b, clip_b)
    assert not torch.allclose(out_b, out_a, atol=1e-4)
    assert torch.equal(out_b, _uncached(model, inputs, case, ctx_b, clip_b))
    # The same tensor written in place (its version counter moves): recomputed.
    _call(model, inputs, case, ctx_b, clip_b)
    ctx_b.mul_(-1.0)
    out_neg = _call(model, inputs, case, ctx_b, clip_b)
    assert not torch.allclose(out_neg, out_b, atol=1e-4)
    assert torch.equal(out_neg, _uncached(model, inputs, case, ctx_b, clip_b))
    # New weights through load_state_dict (the cache would otherwise hold the old K/V).
    _call(model, inputs, case)
    state = {k: v * 1.5 if ".cross_attn.k" in k or ".cross_attn.v" in k else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    out_w = _call(model, inputs, case)
    assert not torch.allclose(out_w, out_a, atol=1e-4)
    assert torch.equal(out_w, _uncached(model, inputs, case))


# ------------------------------------------------------------------------------------------ no host sync


class HostSync(AssertionError):
    pass


class NoHostSync(TorchDispatchMode):
    """Fails on what would stall a CUDA queue, with `meta` standing in for the device: reading a device
    value on the host (item, bool, tolist, float) or copying between host and device either way."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if name in ("_local_scalar_dense", "is_nonzero", "equal") and any(a.device.type == "meta" for a in tensors):
            raise HostSync(f"{func}: a device value read on the host")
        if name == "_to_copy":
            src, dst = args[0], torch.device(kwargs.get("device") or args[0].device)
        elif name in ("copy_", "_copy_from"):
            src, dst = (args[1], args[0].device) if name == "copy_" else (args[0], args[1].device)
        else:
            src = dst = None
        if src is not None and {src.device.type, dst.type} == {"cpu", "meta"}:
            raise HostSync(f"{func}: a copy between host and device ({src.device} -> {dst})")
        return func(*args, **kwargs)


def _meta_inputs(steps: int) -> dict:
    m = torch.device("meta")
    t_lat, h, w = 2, 4, 4
    return dict(
        motion=torch.zeros(16, 1, h, w, device=m),
        context=torch.zeros(7, CFG.text_dim, device=m),
        clip_fea=torch.zeros(1, 257, CFG.clip_dim, device=m),
        y=torch.zeros(20, t_lat, h, w, device=m),
        audio=torch.zeros(1, 1 + CFG.vae_scale * (t_lat - 1), CFG.audio_window, CFG.audio_layers, CFG.audio_channels,
                          device=m),
        noise=[torch.zeros(16, t_lat, h, w, device=m) for _ in range(steps + 1)],
        shape=(16, t_lat, h, w),
    )


def test_the_guard_catches_host_reads_and_copies() -> None:
    x = torch.zeros(3, device="meta")
    for bad in (lambda: x.sum().item(), lambda: bool(x[0] > 0), lambda: x.cpu(), lambda: torch.ones(3).to("meta"),
                lambda: x.tolist()):
        with pytest.raises(HostSync), NoHostSync():
            bad()
    with NoHostSync():
        (x * torch.tensor(2.0)).exp()  # device work with a host scalar: allowed


@pytest.mark.parametrize("via_client", [False, True], ids=["dit", "parallel-client"])
def test_sampling_steps_make_no_host_sync(via_client: bool) -> None:
    """A chunk's sampler loop and DiT forwards (after the session's first chunk) on the stand-in device."""
    with torch.device("meta"):
        model = FlashTalkDiT(CFG).eval()
    dit = model
    if via_client:  # rank 0's sequence-parallel client, one rank: its command path runs, the forward is local
        dit = DiTClient(model, UlyssesSplit(ParallelGroup(0, 1, 0, torch.device("meta"), "gloo", 1, 1), CFG.num_heads))
    steps = 4
    inp = _meta_inputs(steps)
    timesteps = make_timesteps(steps, 5.0).to("meta")  # the engine keeps them on its device

    def velocity(latent: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:  # as FlashTalkEngine.generate
        return dit(latent[None], t, inp["context"][None], inp["clip_fea"], inp["y"][None], inp["audio"])[0]

    noise = NoiseSource(0, torch.device("cpu"))  # no generator on meta; the injected noises are used instead
    noise.device = torch.device("meta")

    def chunk() -> torch.Tensor:
        with torch.no_grad():
            return sample(velocity, inp["motion"], inp["shape"], timesteps, noise, noise_dtype=torch.float32,
                          injected=inp["noise"])

    chunk()  # the session's first chunk fills the geometry's tables (RoPE, audio window index)
    with NoHostSync():
        out = chunk()
    assert out.shape == inp["shape"] and out.device.type == "meta"
