"""load_dit(fp8=...): blocks quantised as their tensors arrive, equal to quantising after the load, and the
bf16 copy of the whole DiT is never alive at once (measured on the storages the loader reads)."""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch

from flashtalk_live.checkpoints import loader, release
from flashtalk_live.checkpoints.fake import tiny_configs, write_fake_release
from flashtalk_live.quant.fp8 import Fp8Linear, Fp8Plan, quantize_dit_

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def four_blocks(tmp_path_factory):
    dit = dataclasses.replace(tiny_configs()[0], num_layers=4)
    return write_fake_release(tmp_path_factory.mktemp("fp8rel"), dit=dit, wav2vec=False, shards=3, seed=3)


def _bits(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v for k, v in sd.items()}


def test_quantising_while_loading_equals_quantising_after(four_blocks):
    plan = Fp8Plan((1, 1))
    streamed = release.load_dit(four_blocks.weights_dir, "cpu", torch.bfloat16, fp8=plan)
    after = release.load_dit(four_blocks.weights_dir, "cpu", torch.bfloat16)
    quantize_dit_(after, plan)
    assert isinstance(streamed.blocks[1].self_attn.q, Fp8Linear) and isinstance(streamed.blocks[2].ffn[0], Fp8Linear)
    assert type(streamed.blocks[0].self_attn.q) is torch.nn.Linear and type(streamed.blocks[3].ffn[0]) is torch.nn.Linear
    a, b = _bits(streamed.state_dict()), _bits(after.state_dict())
    assert list(a) == list(b)
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert not any(p.is_meta for p in streamed.parameters()) and not any(t.is_meta for t in streamed.buffers())
    assert not streamed.training and not any(p.requires_grad for p in streamed.parameters())


def _tracked_load(monkeypatch, weights_dir, fp8):
    """load_dit with the real shard reader, watching every storage it yields: (peak live bytes, total bytes)."""
    seen: list[tuple[weakref.ref, int]] = []
    peak = [0]

    def live() -> int:
        return sum(n for ref, n in seen if ref() is not None)

    real = loader.iter_safetensors

    def watching(files, device="cpu", keys=None):
        for k, t in real(files, device=device, keys=keys):
            assert t.dtype == torch.bfloat16  # loaded as stored: the loader adopts these very storages
            seen.append((weakref.ref(t.untyped_storage()), t.untyped_storage().nbytes()))
            peak[0] = max(peak[0], live())
            yield k, t
            del t

    monkeypatch.setattr(loader, "iter_safetensors", watching)  # where load_plan streams the shards
    dit = release.load_dit(weights_dir, "cpu", torch.bfloat16, fp8=fp8)
    peak[0] = max(peak[0], live())
    return dit, peak[0], sum(n for _, n in seen)


def test_peak_bf16_bytes_stay_below_the_whole_dit(four_blocks, monkeypatch):
    dit, peak_bf16, total = _tracked_load(monkeypatch, four_blocks.weights_dir, None)
    assert peak_bf16 == total  # the measurement sees the plain load hold everything (as it must)
    dit, peak, total2 = _tracked_load(monkeypatch, four_blocks.weights_dir, Fp8Plan((0, 0)))
    assert total2 == total
    block_w = [sum(m.weight.numel() * 2 for m in b.modules() if isinstance(m, Fp8Linear)) for b in dit.blocks]
    # never more than: everything but the quantised weights, plus one block's bf16 weights in flight
    bound = total - sum(block_w) + max(block_w)
    print(f"\nbf16 bytes alive at once: plain load {peak_bf16}, fp8 load {peak} (bound {bound}, DiT {total})")
    assert peak <= bound < total


def test_fp8_load_runs_the_dit(four_blocks):
    dit = release.load_dit(four_blocks.weights_dir, "cpu", torch.bfloat16, fp8=Fp8Plan((0, 0)))
    ref = release.load_dit(four_blocks.weights_dir, "cpu", torch.bfloat16)
    cfg = four_blocks.dit
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 16, 2, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 7, cfg.text_dim, generator=g),
            torch.randn(1, 257, cfg.clip_dim, generator=g), torch.randn(1, cfg.in_dim - 16, 2, 8, 8, generator=g),
            torch.randn(1, 5, cfg.audio_window, cfg.audio_layers, cfg.audio_channels, generator=g))
    with torch.no_grad():
        out, want = dit(*args), ref(*args)
    rel = ((out - want).norm() / want.norm()).item()
    print(f"\nfake release, fp8 (4 blocks) vs bf16: rel L2 {rel:.2e}")
    assert torch.isfinite(out).all() and 1e-4 < rel < 0.15
