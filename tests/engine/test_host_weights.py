"""Context projections parked in host memory: the same frames, the tensors gone from the model, back per session."""

from __future__ import annotations

import gc

import numpy as np
import torch
from safetensors.torch import load_file

from flashtalk_live.engine.host_weights import (
    CONTEXT_PROJECTIONS, HostParked, HostSlab, park_context_projections, park_layers, parked_bytes,
)
from flashtalk_live.quant.fp8 import Fp8Linear
from support.chunk_fixture import CHUNK, fixture_engine

torch.set_num_threads(1)


def _frames(park: bool) -> tuple[list[np.ndarray], int, dict]:
    eng, inputs = fixture_engine()
    dit = eng.models.dit
    moved = park_context_projections(dit) if park else 0
    noises = [load_file(CHUNK / f"chunk{k}.safetensors") for k in range(2)]
    audio = [inputs["audio_all"][:, 8 * k : 8 * k + 13] for k in range(2)]
    frames = [eng.generate_chunk(audio[k], noise=[noises[k][f"noise_{i}"] for i in range(5)]) for k in range(2)]
    s = eng.session  # a session start (other prompt): its keys and values come from the parked layers
    eng.start_session(s.image_u8, "other prompt", context=s.context.flip(0) * -1.0, clip_fea=s.clip_fea)
    frames.append(eng.generate_chunk(audio[0], noise=[noises[0][f"noise_{i}"] for i in range(5)]))
    return frames, moved, dict(dit.input_cache.hits)


def test_parked_context_projections_give_the_same_frames_over_chunks_and_a_session_change() -> None:
    parked, moved, hits = _frames(True)
    resident, _, _ = _frames(False)
    assert moved > 0 and hits["session"] == 3  # the parked layers ran once per session, then the cache held
    for k, (a, b) in enumerate(zip(parked, resident)):
        assert np.array_equal(a, b), f"chunk {k}"
    assert not np.array_equal(parked[2], parked[0])  # the new prompt went through the parked layers


def test_parking_takes_the_four_linears_out_of_the_model_and_keeps_the_rest() -> None:
    eng, _ = fixture_engine()
    dit = eng.models.dit
    attn = dit.blocks[0].cross_attn
    want = sum(p.numel() * p.element_size() for blk in dit.blocks for n in CONTEXT_PROJECTIONS
               for p in getattr(blk.cross_attn, n).parameters())
    before = {n for n, _ in dit.named_parameters()}
    assert park_context_projections(dit) == want == parked_bytes(dit)
    after = {n for n, _ in dit.named_parameters()}
    gone = before - after
    assert gone == {f"blocks.{i}.cross_attn.{n}.{w}" for i in range(len(dit.blocks))
                    for n in CONTEXT_PROJECTIONS for w in ("weight", "bias")}
    assert all(isinstance(getattr(attn, n), HostParked) for n in CONTEXT_PROJECTIONS)
    assert attn.q.weight.device.type == "cpu" and attn.k.layer.weight.device.type == "meta"
    assert park_context_projections(dit) == 0 and parked_bytes(dit) == want  # idempotent


def test_a_parked_fp8_linear_computes_what_it_did_resident() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    q = Fp8Linear.from_linear(linear, kernel="emulated")
    x = torch.randn(3, 5, 64)
    want = q(x)
    (parked,) = park_layers([q], pin=False)
    assert parked.nbytes == 32 * 64 + 32 * 4 + 32 * 4  # e4m3 weight, float32 scales, float32 bias
    assert torch.equal(parked(x), want)


def test_every_parked_tensor_is_a_view_into_one_host_buffer_at_aligned_offsets() -> None:
    """One buffer for the whole DiT, not a pinned block per tensor (torch rounds each of those to a power of two)."""
    eng, _ = fixture_engine()
    dit = eng.models.dit
    want = {n: t.clone() for n, t in dit.named_parameters() if ".cross_attn.k" in n or ".cross_attn.v" in n}
    park_context_projections(dit)
    parked = [m for m in dit.modules() if isinstance(m, HostParked)]
    (slab,) = {id(m.slab): m.slab for m in parked}.values()
    tensors = [t for m in parked for t in m.host.values()]
    assert len(tensors) == len(want)
    base = slab.buffer.data_ptr()
    assert base % HostSlab.ALIGN == 0
    for t in tensors:
        assert t.untyped_storage().data_ptr() == base and (t.data_ptr() - base) % HostSlab.ALIGN == 0
    exact = sum(t.numel() * t.element_size() for t in tensors)
    assert exact == parked_bytes(dit) <= slab.nbytes < exact + len(tensors) * HostSlab.ALIGN
    got = {f"blocks.{i}.cross_attn.{n}.{w}": getattr(dit.blocks[i].cross_attn, n).host[w]
           for i in range(len(dit.blocks)) for n in CONTEXT_PROJECTIONS for w in ("weight", "bias")}
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_slab_keeps_each_dtype_and_shape_next_to_others() -> None:
    tensors = [torch.arange(7, dtype=torch.uint8), torch.randn(3, 5, dtype=torch.float32),
               torch.randn(2, 3).to(torch.bfloat16), torch.randn(4, 4).to(torch.float8_e4m3fn)]
    slab = HostSlab(tensors, pin=False)
    assert slab.nbytes == 4 * HostSlab.ALIGN and not slab.pinned
    for t, v in zip(tensors, slab.views):
        assert v.dtype == t.dtype and v.shape == t.shape and torch.equal(v.view(torch.uint8), t.view(torch.uint8))


def test_a_layer_holding_a_tensor_subclass_stays_resident() -> None:
    """torchao's fp8 weights are tensor subclasses, whose pinned host copy is not known to work: left as they are."""

    class Tagged(torch.Tensor):
        pass

    eng, _ = fixture_engine()
    dit = eng.models.dit
    k = dit.blocks[0].cross_attn.k
    k.weight = torch.nn.Parameter(k.weight.detach().as_subclass(Tagged), requires_grad=False)
    park_context_projections(dit)
    assert dit.blocks[0].cross_attn.k is k and isinstance(dit.blocks[0].cross_attn.v, HostParked)


class _FakeCudart:
    """CUDA's runtime as the slab calls it (no CUDA on this machine): records the calls, answers `error`."""

    def __init__(self, error: int) -> None:
        self.error, self.calls = error, []

    def cudaHostRegister(self, ptr: int, size: int, flags: int) -> int:  # noqa: N802 - CUDA's name
        self.calls.append(("register", ptr, size))
        return self.error

    def cudaHostUnregister(self, ptr: int) -> int:  # noqa: N802
        self.calls.append(("unregister", ptr))
        return 0


def test_a_pinned_slab_registers_its_whole_buffer_once_and_unregisters_it_when_dropped(monkeypatch) -> None:
    fake = _FakeCudart(0)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    slab = HostSlab([torch.ones(1000), torch.zeros(3, dtype=torch.bfloat16)], pin=True)
    ptr = slab.buffer.data_ptr()
    assert slab.pinned and fake.calls == [("register", ptr, 4096 + HostSlab.ALIGN)]  # 4000 B aligned up, then 6
    del slab
    gc.collect()
    assert fake.calls[-1] == ("unregister", ptr)


def test_a_slab_cuda_refuses_to_page_lock_stays_pageable_with_a_warning(monkeypatch) -> None:
    from structlog.testing import capture_logs

    fake = _FakeCudart(2)  # cudaErrorMemoryAllocation
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    with capture_logs() as logs:
        slab = HostSlab([torch.arange(10.0)], pin=True)
    assert not slab.pinned and torch.equal(slab.views[0], torch.arange(10.0))
    assert [e["event"] for e in logs] == ["host_slab_not_page_locked"] and logs[0]["cuda_error"] == 2
    del slab
    assert [c[0] for c in fake.calls] == ["register"]  # nothing to unregister


def test_a_view_kept_after_its_slab_is_dropped_stays_page_locked_until_it_goes(monkeypatch) -> None:
    fake = _FakeCudart(0)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    slab = HostSlab([torch.arange(100.0), torch.ones(7)], pin=True)
    ptr, view = slab.buffer.data_ptr(), slab.views[1]
    del slab
    gc.collect()
    assert [c[0] for c in fake.calls] == ["register"] and torch.equal(view, torch.ones(7))
    moved = view.to(torch.float64)  # a copy elsewhere does not hold the buffer
    del view
    gc.collect()
    assert fake.calls[-1] == ("unregister", ptr) and torch.equal(moved, torch.ones(7, dtype=torch.float64))
