"""The renderer's warm-up with model.profile = "auto" (injected timings, real chunks) and the random-weights mode."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flashtalk_live import log
from flashtalk_live.checkpoints.fake import write_fake_release
from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer
from flashtalk_live.renderers.base import RendererError
from flashtalk_live.config import load_settings
from flashtalk_live.chunks import RenderChunk
from support.chunks import render_chunk

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
    over = ['renderer.kind="flashtalk"', 'model.profile="auto"', f"model.auto_candidates={cands}",
            "model.auto_chunks=2", 'model.device="cpu"', 'model.dtype="float32"', f"video.chunk_frames={N}",
            "video.width=48", "video.height=80", f'state_dir="{root / "state"}"'] + extra
    return load_settings(None, over, environ=environ or {})


class FakeTimer:
    """Runs every chunk for real and reports the injected seconds of its profile."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.runs: dict[str, int] = {}

    def __call__(self, profile, run) -> float:
        frames = run()
        assert frames.shape == (N, 80, 48, 3) and frames.dtype == np.uint8
        self.runs[profile.name] = self.runs.get(profile.name, 0) + 1
        return self.seconds[profile.name]


def _capture_logs() -> io.StringIO:
    buf = io.StringIO()
    log.configure("json", "info", stream=buf)
    return buf


def _lines(buf: io.StringIO, event: str) -> list[dict]:
    return [d for d in map(json.loads, buf.getvalue().splitlines()) if d.get("event") == event]


def _chunk(i: int) -> RenderChunk:
    return render_chunk(i, N, seed=i)


@pytest.mark.timeout(300)
def test_auto_keeps_the_best_quality_that_fits_and_logs_why(root) -> None:
    rel = write_fake_release(root / "models")
    timer = FakeTimer({"tiny_q": 0.40, "tiny_f": 0.10})  # limit 0.32 x 0.85 = 0.272: only tiny_f fits
    buf = _capture_logs()
    s = _settings(root, [f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"'])
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(s), chunk_timer=timer)
    try:
        assert r.ready() and r.profile.name == "tiny_f" and r.engine.profile.name == "tiny_f"
        assert timer.runs == {"tiny_q": 2, "tiny_f": 2}  # auto_chunks timed chunks each, best quality first
        measured = _lines(buf, "profile_measured")
        assert [(m["profile"], m["fits"], m["p90_s"]) for m in measured] == [("tiny_q", False, 0.4), ("tiny_f", True, 0.1)]
        assert measured[0]["geometry"] == "32x64" and measured[0]["limit_s"] == pytest.approx(0.272)
        chosen = _lines(buf, "profile_chosen")
        assert len(chosen) == 1 and chosen[0]["profile"] == "tiny_f" and chosen[0]["fits"] is True
        assert not _lines(buf, "profile_too_slow")
        frames = r.render(_chunk(0))
        assert frames.shape == (N, 80, 48, 3) and frames.std() > 0
        d = r.drift()
        assert d["profile"] == "tiny_f" and [m["profile"] for m in d["auto"]["measured"]] == ["tiny_q", "tiny_f"]
        assert d["chunk_s"]["count"] == 1
    finally:
        r.close()


@pytest.mark.timeout(300)
def test_random_tiny_weights_in_benchmark_mode_and_none_fits(root, monkeypatch) -> None:
    monkeypatch.setenv("FLASHTALK_LIVE_BENCHMARK", "1")
    timer = FakeTimer({"tiny_q": 1.0, "tiny_f": 0.5})  # both over the 0.272 s limit: the fastest, loudly
    buf = _capture_logs()
    s = _settings(root, ['model.random_weights="tiny"'], environ={"FLASHTALK_LIVE_BENCHMARK": "1"})
    assert s.model.weights_dir is None
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(s), chunk_timer=timer)
    try:
        assert r.profile.name == "tiny_f" and timer.runs == {"tiny_q": 2, "tiny_f": 2}
        assert _lines(buf, "random_weights")[0]["level"] == "warning"
        loud = _lines(buf, "profile_too_slow")
        assert len(loud) == 1 and loud[0]["level"] == "error" and loud[0]["profile"] == "tiny_f"
        assert loud[0]["measured"] == {"tiny_q": 1.0, "tiny_f": 0.5} and not _lines(buf, "profile_chosen")
        for i in range(2):
            assert r.render(_chunk(i)).shape == (N, 80, 48, 3)
        assert r.drift()["auto"]["fits"] is False
    finally:
        r.close()


def test_random_weights_refused_by_the_renderer_without_the_flag(root, monkeypatch) -> None:
    monkeypatch.setenv("FLASHTALK_LIVE_BENCHMARK", "1")
    s = _settings(root, ['model.random_weights="tiny"'], environ={"FLASHTALK_LIVE_BENCHMARK": "1"})
    monkeypatch.delenv("FLASHTALK_LIVE_BENCHMARK")  # settings built elsewhere, flag gone in this process
    with pytest.raises(RendererError, match="random_weights = 'tiny' is for benchmarks only"):
        build_flashtalk_renderer(FlashTalkConfig.from_settings(s))
