"""Height-split VAE decode over real gloo processes (CPU) equals the single-process decode; the decode protocol.

Run by pytest; the same file is the rank script: `python test_vae_split.py rank --rank R --world N ...` (its test
hands it PYTHONPATH=.:tests, support.paths.child_env).
Rank 0 spawns ranks 1..N-1, every rank joins with `init_parallel` (gloo), runs the same cases, and rank 0
saves the split results next to the single-process decodes it computes with the same weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
from flashtalk_live.model.vae import VAEConfig, WanVAE
from flashtalk_live.parallel.group import init_parallel, single
from flashtalk_live.parallel.runtime import send_shutdown
from flashtalk_live.parallel.vae_split import (
    SplitDecodeVAE, SplitVAEInputError, _halo_targets, _Split, band_rows, halo_decoder, split_decode,
    vae_worker_loop,
)
from support.paths import child_env
from support.ports import free_port

VAE_FIX = ROOT / "tests" / "fixtures" / "parity" / "vae"

torch.set_num_threads(1)


def tiny_vae() -> WanVAE:
    kw = json.loads((VAE_FIX / "config.json").read_text())["constructor_kwargs"]
    vae = WanVAE(VAEConfig.from_reference_kwargs(kw))
    vae.load_state_dict(load_file(VAE_FIX / "weights.safetensors"), strict=True)
    return vae.eval().requires_grad_(False)


def cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {
        "fixture": load_file(VAE_FIX / "io.safetensors")["latents"][None],  # [1, 16, 3, 4, 4]
        "odd": torch.randn(1, 16, 3, 5, 6, generator=g),  # 5 rows: divides by none of 2, 3, 4
        "tall": torch.randn(1, 16, 2, 7, 3, generator=g),  # 7 rows, narrow
    }


# ------------------------------------------------------------------------------------------ rank script


def rank_main(a: argparse.Namespace) -> int:
    procs = []
    if a.rank == 0:
        for r in range(1, a.world):
            procs.append(subprocess.Popen([sys.executable, __file__, "rank", "--rank", str(r), "--world", str(a.world),
                                           "--port", str(a.port), "--out", a.out]))
    pg = init_parallel(rank=a.rank, world_size=a.world, num_heads=a.world, device="cpu", master_port=a.port,
                       heartbeat_timeout_s=60.0, connect_timeout_s=60.0)
    vae = tiny_vae()
    out: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    # Phase 1: every rank calls split_decode directly.
    for name, lat in cases().items():
        out[f"{name}.split"] = split_decode(vae, lat, pg, clamp=False)
    # A stream continued over two calls with this rank's own band cache.
    lat = cases()["odd"]
    cache = vae.new_decoder_cache()
    out["stream.split"] = torch.cat([split_decode(vae, lat[:, :, :2], pg, cache=cache),
                                     split_decode(vae, lat[:, :, 2:], pg, cache=cache)], dim=2)
    # Too few rows for the ranks: every rank refuses before any collective, and the group stays usable.
    try:
        split_decode(vae, torch.zeros(1, 16, 1, a.world - 1, 4), pg)
        out["thin_rejected"] = torch.tensor([0])
    except SplitVAEInputError:
        out["thin_rejected"] = torch.tensor([1])
    out["after_reject.split"] = split_decode(vae, cases()["fixture"], pg)
    # float64: the split is exact, so only float64 rounding may differ (float32 differences are summation order).
    vae64 = tiny_vae().double()
    out["odd64.split"] = split_decode(vae64, cases()["odd"].double(), pg, clamp=False)
    out["forwards_restored"] = torch.tensor([int(not any("forward" in m.__dict__ for m in vae.decoder.modules()))])
    split_s = time.perf_counter() - t0

    # Phase 2: the protocol. Rank 0 drives with SplitDecodeVAE; the others serve until shutdown.
    if a.rank != 0:
        n = vae_worker_loop(vae, pg)
        Path(a.out).with_suffix(f".rank{a.rank}.json").write_text(json.dumps({"decodes": n}))
        pg.destroy()
        return 0
    client = SplitDecodeVAE(vae, pg)
    out["client.split"] = client.decode(cases()["fixture"])
    try:
        client.decode(torch.zeros(1, 16, 2, 4))  # 4-D: refused before the command
        out["client_rejected"] = torch.tensor([0])
    except SplitVAEInputError:
        out["client_rejected"] = torch.tensor([1])
    out["client_odd.split"] = client.decode(cases()["odd"])
    out["client_calls"] = torch.tensor([client.calls])
    send_shutdown(pg)
    codes = [p.wait(60) for p in procs]
    out["worker_codes"] = torch.tensor(codes)

    t1 = time.perf_counter()
    for name, lat in cases().items():
        out[f"{name}.single"] = vae.decode(lat, clamp=False)
    lat = cases()["odd"]
    cache = vae.new_decoder_cache()
    out["stream.single"] = torch.cat([vae.decode(lat[:, :, :2], cache=cache), vae.decode(lat[:, :, 2:], cache=cache)], 2)
    out["after_reject.single"] = vae.decode(cases()["fixture"])
    out["client.single"] = out["after_reject.single"].clone()
    out["client_odd.single"] = vae.decode(cases()["odd"])
    out["odd64.single"] = vae64.decode(cases()["odd"].double(), clamp=False)
    print(f"world {a.world}: split phase {split_s:.2f}s, single decodes {time.perf_counter() - t1:.2f}s", flush=True)
    save_file(out, a.out)
    pg.destroy()
    return 0


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [2, 3, 4])
def test_split_decode_equals_single_process(tmp_path, world):
    out = tmp_path / "out.safetensors"
    proc = subprocess.run([sys.executable, __file__, "rank", "--rank", "0", "--world", str(world),
                           "--port", str(free_port()), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=110, env=child_env())
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = load_file(out)
    assert r["worker_codes"].tolist() == [0] * (world - 1)
    for rank in range(1, world):
        assert json.loads(out.with_suffix(f".rank{rank}.json").read_text()) == {"decodes": 2}
    assert r["thin_rejected"].item() == 1 and r["client_rejected"].item() == 1
    assert r["client_calls"].item() == 2 and r["forwards_restored"].item() == 1
    names = ["fixture", "odd", "tall", "stream", "after_reject", "client", "client_odd", "odd64"]
    for name in names:
        got, want = r[f"{name}.split"], r[f"{name}.single"]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        d = got.double() - want.double()
        err, rel = d.abs().max().item(), (d.norm() / want.double().norm()).item()
        print(f"world {world} {name:13s} {tuple(got.shape)} {str(got.dtype):13s} max|split - single| = {err:.3g}"
              f"  rel L2 {rel:.3g}  max|single| {want.abs().max().item():.3g}")
        assert err <= (1e-12 if got.dtype == torch.float64 else 1e-5), (name, err)
    # Frames: 1 + 4 (T - 1) for a fresh clip; the continued stream gives 1 + 4 then 4.
    assert r["fixture.split"].shape == (1, 3, 9, 32, 32) and r["odd.split"].shape == (1, 3, 9, 40, 48)
    assert r["tall.split"].shape == (1, 3, 5, 56, 24) and r["stream.split"].shape == (1, 3, 9, 40, 48)
    # The fixture latents through the split also match the reference decode of the fixture.
    golden = load_file(VAE_FIX / "io.safetensors")
    assert (r["fixture.split"] - golden["decoded_unclamped"]).abs().max().item() < 2e-3


def test_band_rows_are_even_and_cover_the_latent():
    assert band_rows(4, 2) == [(0, 2), (2, 4)]
    assert band_rows(5, 3) == [(0, 2), (2, 4), (4, 5)]
    assert band_rows(7, 4) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert band_rows(56, 8) == [(7 * i, 7 * i + 7) for i in range(8)]  # 448 px quality profile
    for h, n in ((4, 5), (0, 1)):
        with pytest.raises(SplitVAEInputError):
            band_rows(h, n)


def test_one_rank_is_the_plain_decode_and_bad_input_is_refused():
    vae = tiny_vae()
    lat = cases()["odd"][:, :, :2]
    assert torch.equal(split_decode(vae, lat, single()), vae.decode(lat))
    for bad in (torch.zeros(1, 16, 4, 4), torch.zeros(1, 8, 1, 4, 4), torch.zeros(1, 16, 1, 4, 4, dtype=torch.int64)):
        with pytest.raises(SplitVAEInputError):
            split_decode(vae, bad, single())
    with pytest.raises(ValueError):
        SplitDecodeVAE(vae, _rank1())


def _rank1():
    pg = single()
    pg.rank = 1
    return pg


def test_halo_rules_cover_the_decoder_and_refuse_the_encoder():
    vae = tiny_vae()
    pg = single()
    targets = _halo_targets(vae.decoder, _Split(pg, [4]))
    kinds = sorted({type(m).__name__ for m, _ in targets})
    assert kinds == ["AttentionBlock", "CausalConv3d", "Conv2d"]
    # 3x3x3 causal convs: conv1, 2 in each of the 2 middle and 12 up-sampling residual blocks, the head.
    n3 = sum(1 for m, _ in targets if type(m).__name__ == "CausalConv3d")
    assert n3 == 1 + 2 * 2 + 2 * 12 + 1
    with pytest.raises(NotImplementedError):
        _halo_targets(vae.encoder, _Split(pg, [4]))  # down-samplers: no rule, refused rather than wrong
    # The forwards are removed again, also when the block raises.
    with pytest.raises(KeyError):
        with halo_decoder(vae, pg, [4]):
            assert all("forward" in m.__dict__ for m, _ in targets)
            raise KeyError("boom")
    assert not any("forward" in m.__dict__ for m in vae.decoder.modules())
    with pytest.raises(SplitVAEInputError):
        with halo_decoder(vae, pg, [0]):
            pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["rank"])
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    sys.exit(rank_main(ap.parse_args()))
