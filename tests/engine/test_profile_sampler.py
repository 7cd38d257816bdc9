"""Profiles (validation, files, derived geometry), the sampler's noise hook and draw count, the GPU benchmark in --tiny mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from flashtalk_live.engine.profile import PROFILES, ProfileError, resolve_profile
from flashtalk_live.engine.sampler import NoiseSource, make_timesteps, sample

torch.set_num_threads(1)


def test_shipped_profiles() -> None:
    q, f = PROFILES["quality"], PROFILES["fast"]
    assert (q.height, q.width, q.frame_num, q.motion_frames, q.sample_steps, q.shift, q.seed) == (768, 448, 33, 5, 4, 5.0, 9999)
    assert q.new_frames == 28 and q.latent_frames == 9 and q.motion_latent_frames == 2 and q.seq_len == 12096
    assert f.new_frames == 28 and f.motion_latent_frames == 1 and f.sample_steps == 2 and f.seq_len % 1 == 0


def test_profile_files_overrides_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text('base = "fast"\nwidth = 448\nsample_steps = 3\n')
    prof = resolve_profile(str(p))
    assert (prof.name, prof.height, prof.width, prof.sample_steps) == ("mine", 704, 448, 3)
    assert resolve_profile("quality", seed=1).seed == 1
    for bad, msg in [({"height": 770}, "multiple of 16"), ({"frame_num": 32}, "1 \\+ 4k"),
                     ({"motion_frames": 33}, "smaller than"), ({"colour_correction_strength": 2.0}, r"\[0, 1\]")]:
        with pytest.raises(ProfileError, match=msg):
            resolve_profile("quality", **bad)
    with pytest.raises(ProfileError, match="unknown profile"):
        resolve_profile("turbo")
    (tmp_path / "bad.toml").write_text("heigth = 64\n")
    with pytest.raises(ProfileError, match="heigth"):
        resolve_profile(str(tmp_path / "bad.toml"))


def test_linspace_schedule_for_other_step_counts() -> None:
    ts = make_timesteps(3, 5.0)
    assert ts.dtype == torch.float32 and ts.shape == (4,) and ts[0] == 1000 and ts[-1] == 0
    assert torch.all(ts[:-1] > ts[1:])


def test_sampler_draws_steps_plus_one_and_imposes_motion() -> None:
    calls = []

    def noise_fn(i, shape, dtype, device):
        calls.append((i, dtype))
        return torch.full(shape, float(i), dtype=dtype)

    src = NoiseSource(0, torch.device("cpu"), noise_fn)
    motion = torch.full((4, 1, 2, 2), 7.0)
    out = sample(lambda x, t, i: torch.zeros_like(x, dtype=torch.float32), motion, (4, 3, 2, 2), make_timesteps(2, 5.0),
                 src, noise_dtype=torch.bfloat16)
    assert [c[0] for c in calls] == [0, 1, 2] and calls[0][1] == torch.bfloat16 and calls[1][1] == torch.float32
    assert torch.all(out[:, :1] == 7.0) and out.dtype == torch.float32
    # generator draws: deterministic per seed, different across seeds
    a = sample(lambda x, t, i: torch.zeros_like(x, dtype=torch.float32), motion, (4, 3, 2, 2), make_timesteps(2, 5.0),
               NoiseSource(5, torch.device("cpu")), noise_dtype=torch.float32)
    b = sample(lambda x, t, i: torch.zeros_like(x, dtype=torch.float32), motion, (4, 3, 2, 2), make_timesteps(2, 5.0),
               NoiseSource(5, torch.device("cpu")), noise_dtype=torch.float32)
    assert torch.equal(a, b)


@pytest.mark.timeout(300)
def test_gpu_benchmark_runs_tiny_on_cpu(capsys, tmp_path) -> None:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_gpu.py"
    spec = importlib.util.spec_from_file_location("engine_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    out_json = tmp_path / "engine.json"
    assert mod.main(["--tiny", "--chunks", "2", "--profiles", "fast,quality", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    print(out)
    for stage in ("audio_features", "dit_step_0", "dit_step_3", "vae_decode", "colour_correction", "motion_encode",
                  "host_copy", "drift_measure", "wall p99", "peak GiB", "| tiny-fast | bf16 | wan | off |"):
        assert stage in out
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["profile"], r["status"]) for r in rows] == [("tiny-fast", "ok"), ("tiny-quality", "ok")]
    assert len(rows[1]["chunks"]) == 2 and rows[1]["summary"]["wall_p50_s"] > 0
