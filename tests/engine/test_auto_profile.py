"""model.profile = "auto": the pure choice from injected timings, the candidate rules and the settings checks."""

from __future__ import annotations

import pytest

from flashtalk_live.engine.profile import (
    PROFILE_LADDER, PROFILES, ProfileError, candidate_profiles, choose_profile, resolve_profile,
)
from flashtalk_live.settings import ConfigError
from flashtalk_live.config import load_settings

LADDER = [PROFILES[n] for n in PROFILE_LADDER]
BUDGET = 28 / 25  # 1.12 s


def test_ladder_is_quality_native_fast_realtime_all_28_new_frames() -> None:
    assert PROFILE_LADDER == ("quality", "native", "fast", "realtime")
    assert [p.new_frames for p in LADDER] == [28] * 4
    rt, native = PROFILES["realtime"], PROFILES["native"]
    assert rt.seq_len < PROFILES["fast"].seq_len < native.seq_len < PROFILES["quality"].seq_len  # cheaper down
    assert [p.chunk_seconds for p in LADDER] == [BUDGET] * 4
    # native is the output geometry of configs/flashtalk-14b.toml (448 wide, 768 high) in fast's 2 steps
    assert (native.width, native.height, native.frame_num, native.motion_frames, native.sample_steps) == (
        448, 768, 29, 1, 2)


def test_picks_the_best_quality_that_fits() -> None:
    t = {"quality": [3.9, 4.0, 4.1], "fast": [0.90, 0.92, 0.91], "realtime": [0.70, 0.71, 0.72]}
    c = choose_profile(LADDER, t, margin=0.15)
    assert c.profile.name == "fast" and c.fits  # realtime is faster, but fast is better and fits
    assert [m.profile.name for m in c.timings] == ["quality", "fast", "realtime"]  # native not measured
    assert [m.fits for m in c.timings] == [False, True, True]


def test_order_given_is_the_quality_order() -> None:
    t = {"quality": [0.5] * 3, "fast": [0.5] * 3, "realtime": [0.5] * 3}
    assert choose_profile(LADDER, t, 0.15).profile.name == "quality"
    assert choose_profile(LADDER[::-1], t, 0.15).profile.name == "realtime"


def test_none_fits_takes_the_fastest_and_says_so() -> None:
    t = {"quality": [4.0] * 3, "fast": [1.4, 1.5, 1.6], "realtime": [1.2, 1.3, 1.25]}
    c = choose_profile(LADDER, t, margin=0.15)
    assert c.profile.name == "realtime" and not c.fits


def test_margin_edge_and_p90_not_median() -> None:
    limit = BUDGET * (1 - 0.15)
    assert choose_profile(LADDER[:1], {"quality": [limit] * 3}, 0.15).fits  # equal to the limit fits
    assert not choose_profile(LADDER[:1], {"quality": [limit + 1e-6] * 3}, 0.15).fits
    assert choose_profile(LADDER[:1], {"quality": [limit + 1e-6] * 3}, 0.0).fits  # no margin: the budget itself
    # median well inside, but one slow chunk in four puts p90 over the limit
    c = choose_profile(LADDER, {"quality": [0.5, 0.5, 0.5, 1.5], "fast": [0.5] * 4}, 0.15)
    assert c.profile.name == "fast" and c.timings[0].median == 0.5 and c.timings[0].p90 > limit


def test_unmeasured_candidates_are_skipped_and_bad_inputs_are_clear() -> None:
    c = choose_profile(LADDER, {"quality": [5.0], "fast": [0.5]}, 0.15)  # measuring stopped at fast
    assert c.profile.name == "fast" and [m.profile.name for m in c.timings] == ["quality", "fast"]
    with pytest.raises(ProfileError, match="no timings"):
        choose_profile(LADDER, {}, 0.15)
    with pytest.raises(ProfileError, match="margin"):
        choose_profile(LADDER, {"fast": [0.5]}, 1.0)


def test_candidates_must_share_new_frames_and_auto_is_not_a_profile(tmp_path) -> None:
    assert [p.name for p in candidate_profiles("auto")] == list(PROFILE_LADDER)
    assert [p.name for p in candidate_profiles("fast")] == ["fast"]
    odd = tmp_path / "odd.toml"
    odd.write_text('base = "fast"\nframe_num = 25\n')
    with pytest.raises(ProfileError, match="same new frames"):
        candidate_profiles("auto", ["quality", str(odd)])
    with pytest.raises(ProfileError, match="distinct"):
        candidate_profiles("auto", ["fast", "fast"])
    with pytest.raises(ProfileError, match="chosen by measurement"):
        resolve_profile("auto")


def test_settings_check_chunk_frames_against_the_profile_or_every_candidate() -> None:
    base = ['renderer.kind="flashtalk"']
    s = load_settings(None, base + ['model.profile="auto"'], environ={})
    assert s.model.auto_candidates == list(PROFILE_LADDER) and s.model.auto_margin == 0.15
    with pytest.raises(ConfigError, match="video.chunk_frames = 24"):
        load_settings(None, base + ['model.profile="realtime"', "video.chunk_frames=24"], environ={})
    with pytest.raises(ConfigError, match="auto_margin"):
        load_settings(None, base + ["model.auto_margin=1.0"], environ={})
    # the still renderer does not care about the profile's chunking
    load_settings(None, ["video.chunk_frames=24"], environ={})


def test_random_weights_refused_outside_benchmarks() -> None:
    with pytest.raises(ConfigError, match=r"model.random_weights = 'full' is for benchmarks only.*FLASHTALK_LIVE_BENCHMARK=1"):
        load_settings(None, ['model.random_weights="full"'], environ={})
    s = load_settings(None, ['model.random_weights="tiny"'], environ={"FLASHTALK_LIVE_BENCHMARK": "1"})
    assert s.model.random_weights == "tiny"
    with pytest.raises(ConfigError, match="random_weights"):
        load_settings(None, ['model.random_weights="huge"'], environ={"FLASHTALK_LIVE_BENCHMARK": "1"})


def test_prefixed_variables_that_are_not_settings_are_ignored() -> None:
    s = load_settings(None, [], environ={"FLASHTALK_LIVE_CONFIG": "/x.toml", "FLASHTALK_LIVE_BENCHMARK": "1"})
    assert s.model.random_weights == "off"


@pytest.mark.parametrize("verb", [["config", "show"], ["run", "--duration", "1"]])
def test_cli_refuses_random_weights_without_the_benchmark_flag(verb, tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
    r = subprocess.run([sys.executable, "-m", "flashtalk_live", *verb, "--set", 'model.random_weights="full"',
                        "--set", f'state_dir="{tmp_path}"'], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "model.random_weights = 'full' is for benchmarks only" in r.stderr
    assert not (tmp_path / "spool").exists()  # refused before anything started


# ---------------------------------------------------------------- auto with compile: eager first (pure)


def _drive(eager_s: dict[str, float], compiled_s: dict[str, float], ratio: float, margin: float = 0.15):
    """Runs next_auto_step to the end with fixed per-profile seconds; returns (actions, choice)."""
    from flashtalk_live.engine.profile import next_auto_step

    eager: dict[str, list[float]] = {}
    compiled: dict[str, list[float]] = {}
    actions = []
    for _ in range(20):
        step = next_auto_step(LADDER, eager, compiled, margin, ratio)
        actions.append((step.action, step.profile.name))
        if step.action == "done":
            return actions, step.choice
        target, source = (eager, eager_s) if step.action == "eager" else (compiled, compiled_s)
        target[step.profile.name] = [source[step.profile.name]] * 3
    raise AssertionError(f"no decision after 20 steps: {actions}")


# Fake timings shaped like the shipped config's on an H100 (docs/performance.md), fast just inside its limit here
EAGER = {"quality": 5.95, "native": 2.60, "fast": 2.23, "realtime": 1.83}
COMPILED = {"quality": 2.86, "native": 1.12, "fast": 0.94, "realtime": 0.74}


def test_auto_compiles_only_the_candidate_predicted_to_fit() -> None:
    actions, choice = _drive(EAGER, COMPILED, ratio=0.42)
    assert actions == [("eager", "quality"), ("eager", "native"), ("eager", "fast"), ("compile", "fast"),
                       ("done", "fast")]  # fast: 2.23 x 0.42 = 0.94 <= 0.952; realtime never compiled
    assert choice.profile.name == "fast" and choice.fits
    assert [t.profile.name for t in choice.timings] == ["fast"]


def test_a_wrong_ratio_is_corrected_by_the_first_compiled_measurement() -> None:
    # 0.85 predicts nothing fits: the fastest is compiled, its ratio (0.74 / 1.83) then finds fast
    actions, choice = _drive(EAGER, COMPILED, ratio=0.85)
    assert actions == [("eager", "quality"), ("eager", "native"), ("eager", "fast"), ("eager", "realtime"),
                       ("compile", "realtime"), ("compile", "fast"), ("done", "fast")]
    assert choice.profile.name == "fast" and choice.fits
    # too optimistic: native predicted to fit (2.60 x 0.3) misses compiled (ratio now 0.43: fast predicted 0.96, just
    # over); realtime is compiled, the median ratio of both (0.417) predicts fast again, which is then kept
    actions, choice = _drive(EAGER, COMPILED, ratio=0.3)
    assert actions == [("eager", "quality"), ("eager", "native"), ("compile", "native"), ("eager", "fast"),
                       ("eager", "realtime"), ("compile", "realtime"), ("compile", "fast"), ("done", "fast")]
    assert choice.profile.name == "fast" and choice.fits
    assert [t.profile.name for t in choice.timings] == ["native", "fast", "realtime"]


def test_none_fits_compiled_keeps_the_fastest_compiled_and_says_so() -> None:
    slow = {k: v * 2 for k, v in COMPILED.items()}  # a GPU half as fast once compiled
    actions, choice = _drive(EAGER, slow, ratio=0.42)
    # fast (predicted 0.94) misses at 1.88; realtime predicted 1.83 x 0.84 = 1.54 < 1.88: compiled too, kept
    assert actions == [("eager", "quality"), ("eager", "native"), ("eager", "fast"), ("compile", "fast"),
                       ("eager", "realtime"), ("compile", "realtime"), ("done", "realtime")]
    assert choice.profile.name == "realtime" and not choice.fits


def test_compiled_ratio_is_the_median_of_measured_pairs() -> None:
    from flashtalk_live.engine.profile import compiled_ratio

    assert compiled_ratio({}, {}, 0.42) == 0.42
    r = compiled_ratio({"fast": [2.0] * 3, "realtime": [1.0] * 3}, {"fast": [1.0] * 3, "realtime": [0.4] * 3}, 0.9)
    assert r == pytest.approx(0.45)
