"""Lab colour correction: golden-fixture parity, strength semantics and the Lab drift distance."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.model.colour import (
    LabStats,
    lab_distance,
    lab_stats,
    lab_to_rgb,
    match_and_blend_colors,
    rgb_to_lab,
)

from support.tensors import assert_close

COLOUR_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "colour"

# README "Determinism and tolerances": single-module fixtures in float32.
REL_L2_TOL = 1e-5
MAX_ABS_TOL = 1e-4


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(COLOUR_DIR / "io.safetensors")


def _to_rgb01_last(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).permute(0, 2, 3, 4, 1)


@pytest.mark.parametrize(("strength", "key"), [(1.0, "out_strength_1_0"), (0.5, "out_strength_0_5")])
def test_parity_match_and_blend(io, strength: float, key: str):
    out = match_and_blend_colors(io["source"], io["reference"], strength)
    assert_close(f"colour strength {strength}", out, io[key], MAX_ABS_TOL, REL_L2_TOL)
    # precomputed reference statistics give the same result
    again = match_and_blend_colors(io["source"], lab_stats(io["reference"]), strength)
    assert torch.equal(out, again)


@pytest.mark.parametrize(("inp", "key"), [("source", "source_lab"), ("reference", "reference_lab")])
def test_parity_lab_intermediates(io, inp: str, key: str):
    lab = rgb_to_lab(_to_rgb01_last(io[inp]))
    # Lab intermediates span ~100 units, so their absolute tolerance scales with that range.
    assert_close(f"colour {key}", lab, io[key], MAX_ABS_TOL * float(io[key].abs().max()), REL_L2_TOL)


def test_lab_round_trip_inside_the_gamut():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 8, 8, 3, generator=g) * 0.9 + 0.05
    back = lab_to_rgb(rgb_to_lab(rgb.double())).float()
    # the 7-digit matrices are not exact inverses: ~1e-6 is the method's own round-trip error
    torch.testing.assert_close(back, rgb, rtol=0, atol=1e-5)
    white = rgb_to_lab(torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(white, torch.tensor([[100.0, 0.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-3)


def test_strength_zero_is_a_copy_and_out_of_range_is_rejected(io):
    out = match_and_blend_colors(io["source"], io["reference"], 0.0)
    assert torch.equal(out, io["source"]) and out.data_ptr() != io["source"].data_ptr()
    for bad in (-0.1, 1.5, math.nan, "1"):
        with pytest.raises(ValueError, match="strength"):
            match_and_blend_colors(io["source"], io["reference"], bad)  # type: ignore[arg-type]


def test_dtype_and_shape_are_kept(io):
    src = io["source"].to(torch.bfloat16)
    out = match_and_blend_colors(src, io["reference"], 1.0)
    assert out.dtype == torch.bfloat16 and out.shape == src.shape
    # computing in float32 is closer to the float32 reference than the reference's bf16 path
    hi = match_and_blend_colors(src, io["reference"], 1.0, compute_dtype=torch.float32)
    assert hi.dtype == torch.bfloat16
    exact = match_and_blend_colors(src.float(), io["reference"], 1.0)
    assert (hi.float() - exact).abs().mean() <= (out.float() - exact).abs().mean()


def test_bad_shapes_are_rejected(io):
    with pytest.raises(ValueError, match="one image"):
        match_and_blend_colors(io["source"], io["source"], 1.0)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        match_and_blend_colors(io["source"][0], io["reference"], 1.0)
    with pytest.raises(ValueError, match="batch"):
        match_and_blend_colors(io["source"], io["reference"].expand(2, -1, -1, -1, -1), 1.0)
    with pytest.raises(ValueError, match="LabStats"):
        lab_distance(io["source"], LabStats(mean=torch.zeros(1, 3), std=torch.ones(1, 3)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        rgb_to_lab(torch.zeros(4, 4))


def test_lab_stats_shapes_and_values(io):
    s = lab_stats(io["source"])
    assert s.mean.shape == s.std.shape == (1, 5, 3)
    lab = io["source_lab"]
    torch.testing.assert_close(s.mean, lab.mean(dim=(2, 3)), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(s.std, lab.std(dim=(2, 3), unbiased=False), rtol=1e-5, atol=1e-3)


def test_lab_distance_measures_drift_from_the_reference(io):
    ref = io["reference"]
    assert lab_distance(ref, ref).abs().max().item() == 0.0
    before = lab_distance(io["source"], ref)
    half = lab_distance(io["out_strength_0_5"], ref)
    full = lab_distance(io["out_strength_1_0"], ref)
    print("lab distance before", before.tolist(), "s=0.5", half.tolist(), "s=1", full.tolist())
    assert before.shape == (1, 5)
    assert bool((full < half).all() and (half < before).all())
    # a reference-coloured frame shifted in brightness drifts by about that shift in L
    brighter = (ref * 0.5 + 0.5 + 0.05).clamp(0, 1) * 2 - 1
    d = lab_distance(brighter, lab_stats(ref))
    assert 1.0 < d.item() < 20.0
    # accepts a batch-1 reference for a batch of videos
    both = lab_distance(torch.cat([io["source"], io["source"]]), ref)
    assert both.shape == (2, 5) and torch.equal(both[0], both[1])
