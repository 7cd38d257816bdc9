"""The Wan2.1 VAE port: released key manifest, golden-fixture parity and the explicit streaming cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.model.vae import (
    LATENT_MEAN,
    LATENT_STD,
    VAECache,
    VAECacheError,
    VAEConfig,
    WanVAE,
    expected_state_dict_shapes,
)

from support.tensors import assert_close

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VAE_DIR = FIXTURES / "parity" / "vae"
MANIFEST = FIXTURES / "reference" / "vae.keys"

# README "Determinism and tolerances": single-module fixtures in float32.
REL_L2_TOL = 1e-5
MAX_ABS_TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(VAE_DIR / "io.safetensors")


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    kwargs = json.loads((VAE_DIR / "config.json").read_text())["constructor_kwargs"]
    with torch.device("meta"):
        model = WanVAE(VAEConfig.from_reference_kwargs(kwargs))
    model.load_state_dict(load_file(VAE_DIR / "weights.safetensors"), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _manifest() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in MANIFEST.read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(json.loads(shape))))
    return rows


def test_full_size_meta_model_has_exactly_the_released_keys_and_shapes():
    with torch.device("meta"):
        model = WanVAE(VAEConfig.released())
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    want = _manifest()
    assert len(want) == 194
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    assert got == want  # same order too
    assert model.parameter_count() == 126_892_531
    assert list(expected_state_dict_shapes().items()) == want


def test_fixture_config_is_the_tiny_config_and_weights_load_strictly(vae: WanVAE):
    assert vae.config == VAEConfig.tiny()
    assert vae.parameter_count() == 529_201
    assert all(p.device.type == "cpu" for p in vae.parameters())
    bad = load_file(VAE_DIR / "weights.safetensors")
    bad["decoder.head.2.weightX"] = bad.pop("decoder.head.2.weight")
    with pytest.raises(RuntimeError, match="decoder.head.2.weight"):
        WanVAE(VAEConfig.tiny()).load_state_dict(bad, strict=True)


def test_latent_scale_table_matches_the_reference(vae: WanVAE, io):
    mean, inv_std = vae.latent_scale(io["video"])
    assert torch.equal(mean.flatten(), io["scale_mean"])
    assert torch.equal(inv_std.flatten(), io["scale_inv_std"])
    assert len(LATENT_MEAN) == len(LATENT_STD) == 16


# fixture case -> (API call, input tensor, stored output)
CASES = {
    "encode.mu_raw": (lambda m, io: m.encode(io["video"], scaled=False)[0], "mu_raw"),
    "encode.latents": (lambda m, io: m.encode(io["video"])[0], "latents"),
    "decode.unclamped": (lambda m, io: m.decode(io["latents"][None], clamp=False), "decoded_unclamped"),
    "decode.decoded": (lambda m, io: m.decode(io["latents"][None]), "decoded"),
    "motion_clip.mu_raw": (lambda m, io: m.encode(io["clip5"], scaled=False)[0], "clip5_mu_raw"),
    "motion_clip.latents": (lambda m, io: m.encode_motion(io["clip5"], motion_frames=5)[0], "clip5_latents"),
    "motion_clip.decoded": (lambda m, io: m.decode(io["clip5_latents"][None]), "clip5_decoded"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_reference_fixture(vae: WanVAE, io, case: str):
    fn, key = CASES[case]
    assert_close(f"vae {case}", fn(vae, io), io[key], MAX_ABS_TOL, REL_L2_TOL)


def test_output_geometry_and_clamp(vae: WanVAE, io):
    lat = vae.encode(io["video"])
    assert lat.shape == (1, 16, 3, 4, 4)
    assert vae.config.latent_frames(9) == 3 and vae.config.latent_frames(33) == 9
    out = vae.decode(lat)
    assert out.shape == (1, 3, 9, 32, 32)
    assert out.min() >= -1 and out.max() <= 1
    raw = vae.decode(lat, clamp=False)
    assert (raw.abs() > 1).any()  # the fixture really exercises the clamp
    assert torch.equal(out, raw.clamp(-1, 1))
    # a lone image frame encodes to one latent and decodes back to one frame
    one = vae.encode(io["video"][:, :, :1])
    assert one.shape == (1, 16, 1, 4, 4)
    assert vae.decode(one).shape == (1, 3, 1, 32, 32)


def test_default_calls_are_independent(vae: WanVAE, io):
    a = vae.decode(io["latents"][None])
    vae.encode(io["clip5"])  # nothing may leak from one call into the next
    b = vae.decode(io["latents"][None])
    assert torch.equal(a, b)


def test_kept_decoder_cache_continues_the_stream(vae: WanVAE, io):
    # One latent per pass, as the reference: the split into calls is then the only difference (float32
    # equality to 1e-6); other pass sizes are compared in float64 in test_vae_passes.py.
    z = io["latents"][None]
    whole = vae.decode(z, clamp=False, latents_per_pass=1)
    cache = vae.new_decoder_cache()
    assert cache.fresh
    first = vae.decode(z[:, :, :2], cache=cache, clamp=False, latents_per_pass=1)
    second = vae.decode(z[:, :, 2:], cache=cache, clamp=False, latents_per_pass=1)
    assert (first.shape[2], second.shape[2]) == (5, 4)  # no new "image frame" in the continuation
    assert cache.steps == 3
    torch.testing.assert_close(torch.cat([first, second], 2), whole, rtol=0, atol=1e-6)
    # the per-call default treats the continuation's first latent as an image frame instead
    assert vae.decode(z[:, :, 2:], clamp=False).shape[2] == 1
    cache.reset()
    assert cache.fresh
    torch.testing.assert_close(vae.decode(z, cache=cache, clamp=False, latents_per_pass=1), whole, rtol=0, atol=0)


def test_decode_iter_yields_one_frame_then_four(vae: WanVAE, io):
    parts = list(vae.decode_iter(io["latents"][None]))
    assert [p.shape[2] for p in parts] == [1, 4, 4]
    torch.testing.assert_close(torch.cat(parts, 2), io["decoded"], rtol=1e-5, atol=1e-4)


def test_kept_encoder_cache_continues_the_stream(vae: WanVAE, io):
    video = io["video"]
    whole = vae.encode(video)
    cache = vae.new_encoder_cache()
    head = vae.encode(video[:, :, :5], cache=cache)
    tail = vae.encode(video[:, :, 5:], cache=cache)
    assert (head.shape[2], tail.shape[2]) == (2, 1)
    torch.testing.assert_close(torch.cat([head, tail], 2), whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(video[:, :, :5], cache=cache)
    cache.reset()
    torch.testing.assert_close(vae.encode(video, cache=cache), whole, rtol=0, atol=0)


def test_cache_misuse_is_rejected(vae: WanVAE, io):
    enc = vae.new_encoder_cache()
    with pytest.raises(VAECacheError, match="encoder cache was passed to the VAE decoder"):
        vae.decode(io["latents"][None], cache=enc)
    vae.encode(io["clip5"], cache=enc)
    with pytest.raises(VAECacheError, match="reset"):
        vae.encode(torch.zeros(1, 3, 4, 16, 16), cache=enc)
    with pytest.raises(ValueError, match="encoder"):
        VAECache("sideways", 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.encode(torch.zeros(1, 3, 4, 32, 32)), "1 \\+ 4k frames"),
        (lambda m: m.encode(torch.zeros(3, 9, 32, 32)), "\\[B, 3, T, H, W\\]"),
        (lambda m: m.encode(torch.zeros(1, 3, 5, 30, 32)), "multiples of 8"),
        (lambda m: m.encode(torch.zeros(1, 3, 5, 32, 32, dtype=torch.int64)), "floating point"),
        (lambda m: m.decode(torch.zeros(16, 3, 4, 4)), "\\[B, 16, T, h, w\\]"),
        (lambda m: m.decode(torch.zeros(1, 8, 3, 4, 4)), "\\[B, 16, T, h, w\\]"),
        (lambda m: m.encode_motion(torch.zeros(1, 3, 5, 32, 32), motion_frames=6), "motion_frames"),
    ],
)
def test_bad_inputs_get_clear_errors(vae: WanVAE, call, match):
    with pytest.raises(ValueError, match=match):
        call(vae)


def test_config_validation():
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(temporal_downsample=(True,))
    with pytest.raises(ValueError, match="unknown reference arguments"):
        VAEConfig.from_reference_kwargs({"dim": 6, "colour": 1})
    cfg = VAEConfig.released()
    assert (cfg.temporal_stride, cfg.spatial_stride) == (4, 8)
    assert math.isclose(cfg.latent_std[0], 2.8184)


def test_bfloat16_runs_and_stays_near_float32(io):
    # production runs the VAE in bf16 (scale table then also bf16, as the reference); ~1e-2 agreement
    model = WanVAE(VAEConfig.tiny())
    model.load_state_dict(load_file(VAE_DIR / "weights.safetensors"), strict=True)
    model = model.to(torch.bfloat16).eval().requires_grad_(False)
    lat = model.encode(io["clip5"].to(torch.bfloat16))
    out = model.decode(lat)
    assert lat.dtype == out.dtype == torch.bfloat16
    for name, got, want in (("latents", lat[0], io["clip5_latents"]), ("decoded", out, io["clip5_decoded"])):
        rel = ((got.double() - want.double()).norm() / want.double().norm()).item()
        print(f"vae bf16 {name} rel_l2={rel:.3e}")
        assert rel < 5e-2
