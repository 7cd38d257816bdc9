"""The chunk/ fixture: chunk 0 and chunk 1 of the reference's streaming loop, float32 on the CPU, recorded noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.engine.sampler import make_timesteps

from support.chunk_fixture import CHUNK, fixture_engine
from support.tensors import errors as _err

torch.set_num_threads(1)

# README "Determinism and tolerances", chunk fixture with the stored noises injected.
LATENT_REL = 2e-5
VIDEO_REL, VIDEO_ABS = 5e-5, 2e-3
LATENT_KEYS = ("latent_in", "v", "x0", "latent_final", "motion_latents_in", "motion_latents_out")


@pytest.fixture(scope="module")
def run() -> dict:
    eng, inputs = fixture_engine()
    out = {"session": eng.session, "chunks": []}
    for k in range(2):
        fx = load_file(CHUNK / f"chunk{k}.safetensors")
        trace: dict = {}
        audio = inputs["audio_all"][:, 8 * k : 8 * k + 13]  # config.json audio_chunk_rule
        frames = eng.generate_chunk(audio, noise=[fx[f"noise_{i}"] for i in range(5)], trace=trace)
        out["chunks"].append((fx, trace, frames))
    return out


def test_schedule_is_bitwise_the_reference() -> None:
    sampler = load_file(CHUNK / "sampler.safetensors")
    assert torch.equal(make_timesteps(4, 5.0), sampler["timesteps_4steps"])
    assert torch.equal(make_timesteps(2, 5.0), sampler["timesteps_2steps"])
    assert torch.equal(make_timesteps(4, 5.0) / 1000, sampler["sigmas_4steps"])


def test_session_prepare_matches(run: dict) -> None:
    prep = load_file(CHUNK / "prepare.safetensors")
    s = run["session"]
    assert torch.equal(s.cond_image, prep["cond_image"])
    assert torch.equal(s.y[:4], prep["y_mask"])
    for name, got, want in (("y", s.y, prep["y"]), ("motion0", s.motion0, prep["motion_latents_chunk0"])):
        mx, rel = _err(got, want)
        print(f"{name:24s} max_abs {mx:.3e} rel_l2 {rel:.3e}")
        assert rel <= LATENT_REL, name


@pytest.mark.parametrize("k", [0, 1])
def test_chunk_every_stored_tensor(run: dict, k: int) -> None:
    fx, trace, _ = run["chunks"][k]
    checked = 0
    for key, want in fx.items():
        if key.startswith("noise_"):
            continue
        mx, rel = _err(trace[key], want)
        print(f"chunk{k} {key:24s} max_abs {mx:.3e} rel_l2 {rel:.3e}")
        if key.endswith(".t"):
            assert torch.equal(trace[key], want), key
        elif any(key.endswith(s) for s in LATENT_KEYS):
            assert rel <= LATENT_REL, key
        else:  # decoded, colour_corrected
            assert rel <= VIDEO_REL and mx <= VIDEO_ABS, key
        checked += 1
    assert checked == 4 * 4 + 5  # 4 steps x (latent_in, t, v, x0) + motion in/out, final, decoded, corrected


@pytest.mark.parametrize("k", [0, 1])
def test_returned_uint8_frames(run: dict, k: int) -> None:
    fx, _, frames = run["chunks"][k]
    # The reference's frames: ((cc + 1) / 2).permute.clip(0, 1) * 255, first 5 dropped, astype(uint8).
    want = (((fx["colour_corrected"][0] + 1) / 2).permute(1, 2, 3, 0).clip(0, 1) * 255)[5:].numpy().astype(np.uint8)
    assert frames.dtype == np.uint8 and frames.shape == (8, 64, 32, 3)
    diff = np.abs(frames.astype(int) - want.astype(int))
    print(f"chunk{k} uint8: max diff {diff.max()}, fraction off {(diff > 0).mean():.2e}")
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-2


def test_chunk1_motion_context_comes_from_chunk0(run: dict) -> None:
    (fx0, tr0, _), (fx1, tr1, _) = run["chunks"]
    assert torch.equal(tr1["motion_latents_in"], tr0["motion_latents_out"])
    assert tr0["motion_latents_in"].shape[1] == 1 and tr1["motion_latents_in"].shape[1] == 2


def test_verify_parity_runs_the_chunk_check() -> None:
    from flashtalk_live.checkpoints.parity import registered_checks, run_parity

    import flashtalk_live.engine.parity  # noqa: F401 - registers the check (run_parity also imports it)

    assert "chunk" in registered_checks()
    report = run_parity(CHUNK.parent, only=["chunk"])
    rows = [r for r in report.rows if r.module == "chunk"]
    assert len(rows) > 40 and report.ok, report.format()
