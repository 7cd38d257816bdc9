"""The renderer's warm-up with model.profile = "auto" (injected timings, real chunks) and the random-weights mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from flashtalk_live.checkpoints.fake import write_fake_release
from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer
from flashtalk_live.renderers.base import RendererError

from support.chunks import render_chunk
from support.logs import capture_logs, log_lines
from support.settings import flashtalk_settings


torch.set_num_threads(1)

N = 8  # new frames per chunk of both tiny candidates; budget 8/25 = 0.32 s
CANDIDATES = {  # best quality first
    "tiny_q": 'base = "quality"\nheight = 64\nwidth = 32\nframe_num = 13\nmotion_frames = 5\nsample_steps = 2\n',
    "tiny_f": 'base = "fast"\nheight = 48\nwidth = 32\nframe_num = 9\nmotion_frames = 1\nsample_steps = 1\n',
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("auto")
    for name, text in CANDIDATES.items():
        (root / f"{name}.toml").write_text(text)
    return root


def _settings(root: Path, extra: list[str], environ: dict[str, str] | None = None):
    cands = json.dumps([str(root / f"{n}.toml") for n in CANDIDATES])
    return flashtalk_settings(root, N, 'renderer.kind="flashtalk"', 'model.profile="auto"',
                              f"model.auto_candidates={cands}", "model.auto_chunks=2", *extra, environ=environ)


class FakeTimer:
    """Runs every chunk for real and reports the injected seconds of its profile."""

    def __init__(self, seconds: dict[str, float], eager: dict[str, float] | None = None) -> None:
        self.seconds, self.eager = seconds, eager or {}
        self.runs: dict[str, int] = {}
        self.stages: list[tuple[str, str]] = []

    def __call__(self, profile, run, stage) -> float:
        frames = run()
        assert frames.shape == (N, 80, 48, 3) and frames.dtype == np.uint8
        self.runs[profile.name] = self.runs.get(profile.name, 0) + 1
        self.stages.append((profile.name, stage))
        return (self.eager if stage == "eager" else self.seconds)[profile.name]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("admission_margin, chosen", [(0.25, "tiny_f"), (0.1, "tiny_q")])
def test_auto_fits_a_profile_only_where_the_admission_plans_it_faster_than_real_time(root, admission_margin, chosen):
    """tiny_q at 0.26 s fits auto's own margin (0.272 s) but, planned at 1.25 x, is slower than its 0.32 s chunk:
    every clip would wait for a head start. With a 10 % admission margin (0.29 s planned) it is kept."""
    rel = write_fake_release(root / "models")
    timer = FakeTimer({"tiny_q": 0.26, "tiny_f": 0.10})
    s = _settings(root, [f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"',
                         f"renderer.admission_margin={admission_margin}"])
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(s), chunk_timer=timer)
    try:
        assert r.profile.name == chosen
    finally:
        r.close()


@pytest.mark.timeout(300)
def test_auto_keeps_the_best_quality_that_fits_and_logs_why(root) -> None:
    rel = write_fake_release(root / "models")
    # limit 0.32 x 0.8 = 0.256 (the admission's margin 0.25 asks more than auto's 0.15): only tiny_f fits
    timer = FakeTimer({"tiny_q": 0.40, "tiny_f": 0.10})
    buf = capture_logs()
    s = _settings(root, [f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"'])
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(s), chunk_timer=timer)
    try:
        assert r.ready() and r.profile.name == "tiny_f" and r.engine.profile.name == "tiny_f"
        assert timer.runs == {"tiny_q": 2, "tiny_f": 2}  # auto_chunks timed chunks each, best quality first
        measured = log_lines(buf, "profile_measured")
        assert [(m["profile"], m["fits"], m["p90_s"]) for m in measured] == [("tiny_q", False, 0.4), ("tiny_f", True, 0.1)]
        assert measured[0]["geometry"] == "32x64" and measured[0]["limit_s"] == pytest.approx(0.256)
        chosen = log_lines(buf, "profile_chosen")
        assert len(chosen) == 1 and chosen[0]["profile"] == "tiny_f" and chosen[0]["fits"] is True
        assert not log_lines(buf, "profile_too_slow")
        frames = r.render(render_chunk(0, N, seed=0))
        assert frames.shape == (N, 80, 48, 3) and frames.std() > 0
        d = r.drift()
        assert d["profile"] == "tiny_f" and [m["profile"] for m in d["auto"]["measured"]] == ["tiny_q", "tiny_f"]
        assert d["chunk_s"]["count"] == 1 and set(timer.stages) == {("tiny_q", "plain"), ("tiny_f", "plain")}
        assert d["auto"]["eager"] == [] and d["auto"]["compiled_ratio"] is None
        assert d["gpu_load_peak_bytes"] is None and d["gpu_steady_peak_bytes"] is None  # CPU: no allocator stats
    finally:
        r.close()


@pytest.mark.timeout(300)
def test_random_tiny_weights_in_benchmark_mode_and_none_fits(root, monkeypatch) -> None:
    monkeypatch.setenv("FLASHTALK_LIVE_BENCHMARK", "1")
    timer = FakeTimer({"tiny_q": 1.0, "tiny_f": 0.5})  # both over the 0.272 s limit: the fastest, loudly
    buf = capture_logs()
    s = _settings(root, ['model.random_weights="tiny"'], environ={"FLASHTALK_LIVE_BENCHMARK": "1"})
    assert s.model.weights_dir is None
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(s), chunk_timer=timer)
    try:
        assert r.profile.name == "tiny_f" and timer.runs == {"tiny_q": 2, "tiny_f": 2}
        assert log_lines(buf, "random_weights")[0]["level"] == "warning"
        loud = log_lines(buf, "profile_too_slow")
        assert len(loud) == 1 and loud[0]["level"] == "error" and loud[0]["profile"] == "tiny_f"
        assert loud[0]["measured"] == {"tiny_q": 1.0, "tiny_f": 0.5} and not log_lines(buf, "profile_chosen")
        for i in range(2):
            assert r.render(render_chunk(i, N, seed=i)).shape == (N, 80, 48, 3)
        assert r.drift()["auto"]["fits"] is False
    finally:
        r.close()


def test_random_weights_refused_by_the_renderer_without_the_flag(root, monkeypatch) -> None:
    monkeypatch.setenv("FLASHTALK_LIVE_BENCHMARK", "1")
    s = _settings(root, ['model.random_weights="tiny"'], environ={"FLASHTALK_LIVE_BENCHMARK": "1"})
    monkeypatch.delenv("FLASHTALK_LIVE_BENCHMARK")  # settings built elsewhere, flag gone in this process
    with pytest.raises(RendererError, match="random_weights = 'tiny' is for benchmarks only"):
        build_flashtalk_renderer(FlashTalkConfig.from_settings(s))


@pytest.mark.timeout(900)
def test_auto_with_compile_times_eager_first_and_compiles_only_the_winner(root, monkeypatch, tmp_path) -> None:
    """compile = true: both candidates are timed eager (nothing compiles), only tiny_f (predicted to fit at eager x
    ratio) is compiled and timed again; the choice, the eager trials and the ratio reach status and /metrics."""
    from prometheus_client import generate_latest

    from flashtalk_live.engine.compile_cache import INDUCTOR_CACHE_ENV
    from flashtalk_live.metrics import metrics_registry

    monkeypatch.setenv("FLASHTALK_LIVE_BENCHMARK", "1")
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path / "before"))  # restored after the test
    # limit 0.272 s: tiny_q eager 0.50 x 0.8 = 0.40 (no), tiny_f eager 0.30 x 0.8 = 0.24 (compile it), compiled 0.25
    timer = FakeTimer({"tiny_q": 0.9, "tiny_f": 0.25}, eager={"tiny_q": 0.50, "tiny_f": 0.30})
    buf = capture_logs()
    s = _settings(root, ['model.random_weights="tiny"', "model.compile=true", "model.auto_compiled_ratio=0.8"],
                  environ={"FLASHTALK_LIVE_BENCHMARK": "1"})
    torch._dynamo.reset()
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(s), chunk_timer=timer)
    try:
        assert r.profile.name == "tiny_f"
        assert timer.stages == [("tiny_q", "eager")] * 2 + [("tiny_f", "eager")] * 2 + [("tiny_f", "compiled")] * 2
        measured = [(m["stage"], m["profile"]) for m in log_lines(buf, "profile_measured")]
        assert measured == [("eager", "tiny_q"), ("eager", "tiny_f"), ("compiled", "tiny_f")]
        assert os.environ[INDUCTOR_CACHE_ENV] == str(root / "state" / "compile-cache")  # the room's state dir
        assert (root / "state" / "compile-cache").is_dir()
        d = r.drift()
        assert d["auto"]["profile"] == "tiny_f" and d["auto"]["fits"] is True
        assert [m["profile"] for m in d["auto"]["measured"]] == ["tiny_f"]  # only the winner was compiled
        assert [(e["profile"], e["p90_s"]) for e in d["auto"]["eager"]] == [("tiny_q", 0.5), ("tiny_f", 0.3)]
        assert d["auto"]["compiled_ratio"] == pytest.approx(0.25 / 0.30, abs=1e-4)
        assert r.render(render_chunk(0, N, seed=0)).shape == (N, 80, 48, 3)
        text = generate_latest(metrics_registry(lambda: {"renderer": {"active": "flashtalk", "drift": r.drift()}})).decode()
        assert 'flashtalk_model_profile{chosen_by="auto",fits="true",profile="tiny_f"} 1.0' in text
        assert 'flashtalk_auto_chunk_seconds{profile="tiny_q",stage="eager",stat="p90"} 0.5' in text
        assert 'flashtalk_auto_chunk_seconds{profile="tiny_f",stage="compiled",stat="p90"} 0.25' in text
        assert "flashtalk_auto_compiled_ratio 0.8333" in text
        assert 'flashtalk_model_chunk_seconds{stat="p99"}' in text
    finally:
        r.close()
        torch._dynamo.reset()
