"""FlashTalkRenderer on a tiny fake release folder: factory, frame counts, audio window, drift and recalibration."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flashtalk_live.engine.drift import RecalibrationPolicy
from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer, crossfade
from flashtalk_live.events import EventBus
from flashtalk_live.renderers.base import Renderer, RendererError
from flashtalk_live.config import load_settings
from flashtalk_live.chunks import RenderAbandoned, RenderChunk

from support.chunks import render_chunk
from support.settings import TINY_CHUNK_FRAMES, flashtalk_settings, tiny_release

torch.set_num_threads(1)

N = TINY_CHUNK_FRAMES


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, object]:
    return tiny_release(tmp_path_factory.mktemp("release"))


def _settings(root: Path, rel, **extra: str):
    return flashtalk_settings(root, N, f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"',
                              f'model.profile="{root / "tiny.toml"}"', *(f"{k}={v}" for k, v in extra.items()))


def _chunk(i: int, idle: bool = False, history: bool = True, seed: int = 0) -> RenderChunk:
    return render_chunk(i, N, seed=seed + i, idle=idle, history_samples=128000 if history else 0)


@pytest.fixture(scope="module")
def renderer(release):
    root, rel = release
    bus = EventBus()
    events: list[dict] = []
    bus.subscribe(events.append)
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(_settings(root, rel)), bus)
    r.test_events = events  # type: ignore[attr-defined]
    yield r
    r.close()


@pytest.mark.timeout(120)
def test_factory_loads_warms_and_renders_the_right_frame_count(renderer, release) -> None:
    assert isinstance(renderer, Renderer) and renderer.name == "flashtalk"
    assert renderer.ready()
    cache = Path(release[0] / "state" / "text-cache")
    assert len(list(cache.glob("*.safetensors"))) == 1  # the prompt's umT5 output was cached on disk
    for i in range(2):
        frames = renderer.render(_chunk(i))
        assert frames.dtype == np.uint8 and frames.shape == (N, 80, 48, 3)  # profile 64x32 fitted to 80x48
        assert frames.std() > 0
    d = renderer.drift()
    assert d["chunk"] == 1 and d["identity"] is not None and np.isfinite(d["colour"])


@pytest.mark.timeout(60)
def test_text_cache_hit_needs_no_text_encoder(release) -> None:
    from flashtalk_live.engine.renderer import T5TextEncoder
    from flashtalk_live.engine.session import CachedTextEncoder

    root, rel = release
    enc = T5TextEncoder(rel.weights_dir, torch.device("cpu"), torch.float32)
    cache = CachedTextEncoder(enc, root / "cache2")
    first = cache("A person is talking .")
    offline = CachedTextEncoder(None, root / "cache2", identity=enc.identity)
    assert torch.equal(offline("A person is talking ."), first) and offline.hits == 1
    with pytest.raises(RuntimeError, match="not in the text cache"):
        offline("another prompt")


def test_umt5_runs_on_the_cpu_unless_the_model_device_is_asked_for() -> None:
    from flashtalk_live.engine.renderer import text_device_for
    from flashtalk_live.settings import ModelSettings

    gpu = torch.device("meta")  # stands for the model's device: only the choice is tested here
    assert ModelSettings().text_device == "cpu"
    assert text_device_for(ModelSettings(), gpu) == torch.device("cpu")
    assert text_device_for(ModelSettings(text_device="model"), gpu) == gpu


@pytest.mark.timeout(60)
def test_wrong_chunk_size_and_missing_weights_are_clear_errors(renderer, release) -> None:
    bad = _chunk(0)
    bad.n_frames = 7
    with pytest.raises(RendererError, match="frame_num - motion_frames"):
        renderer.render(bad)
    root, rel = release
    with pytest.raises(RendererError, match="chunk_frames"):
        build_flashtalk_renderer(FlashTalkConfig.from_settings(_settings(root, rel, **{"video.chunk_frames": "28"})))
    with pytest.raises(RendererError, match="weights_dir"):
        build_flashtalk_renderer(FlashTalkConfig.from_settings(load_settings(None, ['model.device="cpu"'], environ={})))


@pytest.mark.timeout(60)
def test_own_rolling_window_without_timeline_history(renderer) -> None:
    renderer.render(_chunk(5, history=False))
    w = renderer._history
    assert w.shape == (128000,) and np.array_equal(w[-N * 640:], _chunk(5).model_audio)


@pytest.mark.timeout(120)
def test_recalibration_on_injected_drift(renderer) -> None:
    eng = renderer.engine
    renderer.policy = RecalibrationPolicy(identity_min=-1.0, colour_max=1e9, patience=1, interval_s=0, min_gap_s=0)
    base = []
    for i in range(10, 13):
        renderer.render(_chunk(i))
        base.append(renderer.drift()["colour"])
    threshold = max(base) + 10.0
    renderer.policy.colour_max = threshold
    print(f"baseline colour drift {base}, threshold {threshold:.2f}")
    n_events = len(renderer.test_events)
    eng.motion = torch.full_like(eng.motion, -20.0)  # a corrupted motion context
    renderer.render(_chunk(13))
    corrupted = renderer.drift()
    print("corrupted", corrupted["colour"])
    assert corrupted["drifting"] and corrupted["colour"] > threshold
    assert len(renderer.test_events) == n_events  # patience 1: the re-anchor happens at the next boundary
    renderer.render(_chunk(14))
    assert eng.last_motion_in is eng.session.motion0  # re-anchored to the reference image's latent
    ev = renderer.test_events[n_events:]
    assert [e["type"] for e in ev] == ["recalibrated"] and ev[0]["reason"] == "drift"
    assert ev[0]["before"]["colour"] > threshold > ev[0]["after"]["colour"]
    assert not renderer.drift()["drifting"] and renderer.drift()["recalibrations"] >= 1
    print("recalibrated", ev[0])


@pytest.mark.timeout(120)
def test_scheduled_recalibration_waits_for_idle(renderer) -> None:
    chunk_s = N / 25
    renderer.policy = RecalibrationPolicy(identity_min=-1.0, colour_max=1e9, interval_s=2 * chunk_s,
                                          max_wait_s=2 * chunk_s)
    renderer.policy.anchored(renderer._frames_out / 25)
    for i in range(20, 26):  # speech: due after 2 chunks, but waits for idle...
        renderer.render(_chunk(i, idle=(i == 23)))
    # chunk 20, 21 not due; 22 due but speech (not overdue enough); 23 idle -> schedule; 24, 25 not due again
    sched = [e for e in renderer.recalibrations if e["reason"] == "schedule"]
    assert [e["chunk"] for e in sched] == [23]
    # ...and fires anyway once max_wait_s overdue in continuous speech (due at 25, +2 chunks)
    for i in range(26, 30):
        renderer.render(_chunk(i))
    sched = [e for e in renderer.recalibrations if e["reason"] == "schedule"]
    assert [e["chunk"] for e in sched] == [23, 27]
    assert sched[-1]["after"] is not None


@pytest.mark.timeout(120)
def test_new_session_takes_over_at_the_next_chunk(renderer) -> None:
    img = np.zeros((100, 60, 3), np.uint8)
    img[..., 1] = 200
    renderer.start_session(img, "A young woman presents a product .")
    assert renderer._pending is not None
    renderer.render(_chunk(40))
    assert renderer._pending is None and renderer.engine.session.prompt.startswith("A young woman")
    assert renderer.engine.last_motion_in is renderer.engine.session.motion0


def test_crossfade_blends_from_the_last_frame() -> None:
    prev = np.full((4, 4, 3), 0, np.uint8)
    new = np.full((5, 4, 4, 3), 200, np.uint8)
    out = crossfade(new, prev, 3)
    assert [int(f[0, 0, 0]) for f in out] == [50, 100, 150, 200, 200]


@pytest.mark.parametrize("mode", ["cover", "contain"])
@pytest.mark.parametrize("size", [(48, 80), (200, 150), (20, 30)])
def test_device_fit_matches_the_cpu_fit(mode, size) -> None:
    """The engine fits frames to the output on the device (no per-frame CPU resize on the render thread): same
    geometry and placement as fit_image, pixels within a few levels (bilinear+antialias vs swscale AREA/BICUBIC)."""
    from flashtalk_live.engine.engine import fit_video
    from flashtalk_live.images import BACKGROUND, default_portrait, fit_image

    src = default_portrait()[::4, ::4][:96, :64].copy()  # 64x96, portrait
    w, h = size
    want = fit_image(src, w, h, mode).astype(np.float32)
    video = torch.from_numpy(src).permute(2, 0, 1)[:, None].float() / 127.5 - 1  # [3, 1, H, W]
    got = ((fit_video(video, w, h, mode)[:, 0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).numpy()
    assert got.shape == want.shape == (h, w, 3)
    assert np.abs(got - want).mean() < 2.0, np.abs(got - want).mean()  # a wrong crop or pad: 14-43
    if mode == "contain" and w / h > 64 / 96:  # letterboxed left and right with the background colour
        assert np.abs(got[:, 0] - np.array(BACKGROUND)).max() < 1.0
    assert fit_video(video, 64, 96, mode) is video  # same geometry: untouched


@pytest.mark.parametrize("geometry", [(32, 64), (48, 80)])
def test_a_chunk_continues_from_the_aired_frames_it_is_given(release, geometry):
    """RenderChunk.motion_frames (the idle bank, an edit): the motion context comes from what aired, after the engine
    drew something else in between; exact up to uint8 at the profile geometry (32x64, as production's 448x768),
    closer than the engine's own state through a crop-and-rescale round trip at another output geometry."""
    root, rel_ = release
    w, h = geometry
    renderer = build_flashtalk_renderer(FlashTalkConfig.from_settings(
        _settings(root, rel_, **{"video.width": str(w), "video.height": str(h)})))
    e = renderer.engine
    aired = renderer.render(_chunk(20))
    own = e.motion.clone()  # what the engine would continue from after drawing `aired`
    renderer.render(_chunk(21))  # the engine draws something that does not air next (a bank chunk)
    moved = e.motion.clone()
    c = _chunk(22)
    c.motion_frames = aired[-8:]
    renderer.render(c)
    used = e.last_motion_in
    renderer.close()

    def rel(a, b):
        return float((a - b).abs().mean() / b.abs().mean())

    assert used.shape == own.shape
    err, drift = rel(used, own), rel(moved, own)
    assert err < drift, (err, drift)
    if geometry == (32, 64):
        assert err < 0.05, err


@pytest.mark.parametrize("geometry", [(32, 64), (48, 80)])
def test_a_reanchor_after_aired_frames_dissolves_from_the_aired_frame(release, geometry):
    """A re-anchor (drift, schedule, manual) on a chunk that carries the aired frames (after bank idle) blends from
    the last aired frame, whatever geometry the engine draws at (at 48x80 it fits on the device: the output's)."""
    root, rel_ = release
    w, h = geometry
    renderer = build_flashtalk_renderer(FlashTalkConfig.from_settings(
        _settings(root, rel_, **{"video.width": str(w), "video.height": str(h)})))
    renderer.render(_chunk(30))
    c = _chunk(31)
    c.motion_frames = np.full((8, h, w, 3), 200, np.uint8)
    renderer.recalibrate("manual")
    out = renderer.render(c)
    renderer.close()
    n = renderer.crossfade_frames
    assert out.shape == (N, h, w, 3) and n > 0
    # frame 0 is n/(n+1) the aired frame: within 255/(n+1) of its 200, whatever the model drew
    assert abs(float(out[0].mean()) - 200.0) <= 255 / (n + 1) + 1, out[0].mean()
    assert [r["reason"] for r in renderer.recalibrations] == ["manual"]


def test_engine_motion_from_its_own_frames_matches_its_motion_context(renderer):
    e = renderer.engine
    output, frame_hw = e.output, e.frame_hw
    e.output, e.frame_hw = None, (renderer.profile.height, renderer.profile.width)  # frames at the profile size
    try:
        out = e.generate(renderer._features(np.zeros(renderer.profile.window_samples, np.float32)))
    finally:
        e.output, e.frame_hw = output, frame_hw
    own = e.motion.clone()
    e.set_motion_frames(out.frames)
    assert float((e.motion - own).abs().mean() / own.abs().mean()) < 0.05
    with pytest.raises(Exception, match="motion frames must be"):
        e.set_motion_frames(np.zeros((2, 8, 8, 3), np.uint8))


def _wall(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


class _SetAtCheck(threading.Event):
    """A chunk's `abandoned` event that reads as set from its n-th check on: a re-plan arriving mid-render."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n or super().is_set()


@pytest.mark.timeout(120)
def test_an_abandoned_chunk_stops_at_the_next_step_and_leaves_the_engine_as_it_was(renderer) -> None:
    renderer.render(_chunk(50))
    eng = renderer.engine
    chunks, timed = renderer.chunks, len(renderer.render_seconds)
    stop_s = renderer.abandon_s()
    assert stop_s is not None and 0 < stop_s < renderer.render_seconds[-1]
    img = np.zeros((100, 60, 3), np.uint8)
    img[..., 2] = 180
    renderer.start_session(img, "A man presents a product .")  # due at this chunk: still due after it stops
    chunk = _chunk(51)
    chunk.abandoned = _SetAtCheck(2)  # clear before step 0, set before step 1
    with pytest.raises(RenderAbandoned, match="before step 1"):
        renderer.render(chunk)
    assert chunk.abandoned.checks == 2 and renderer._force == "session"  # still due at the next chunk
    # The new session was taken up (its reference's motion, chunk 0); the stopped chunk moved neither on.
    assert eng.motion is eng.session.motion0 and eng.chunk_index == 0
    assert renderer.chunks == chunks and len(renderer.render_seconds) == timed  # not timed as a chunk
    frames = renderer.render(_chunk(52))  # the next chunk starts the new session from its reference
    assert frames.shape == (N, 80, 48, 3) and eng.last_motion_in is eng.session.motion0
    assert eng.session.prompt.startswith("A man")


@pytest.mark.timeout(180)
def test_with_run_ahead_blocks_an_abandoned_chunk_stops_between_dit_blocks(release) -> None:
    root, rel = release
    settings = _settings(root, rel, **{"model.abandon_run_ahead_blocks": "1"})
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(settings), EventBus())
    try:
        eng = r.engine
        blocks = len(eng.models.dit.blocks)
        assert blocks >= 2
        # Before any render: from the chunk timed after the warm-up (the supervisor's rate measure), so a re-plan
        # right after the take-over counts the render in flight only to its next stop, as later ones do.
        assert r.abandon_s() is None
        timed_s = r.time_chunks(1, _wall)[0]
        assert not r.render_seconds
        assert r.abandon_s() == pytest.approx(timed_s / r.profile.sample_steps * min(1.0, 2 / blocks))
        share = r.stoppable_share()  # from the timed chunk: known before the first real render
        assert share is not None and 0.0 < share < 1.0
        eng.timing = True  # the stage timings, to check the share against
        first = r.render(_chunk(60))
        eng.timing = False
        step = r.render_seconds[-1] / r.profile.sample_steps
        # Only the denoising stops an abandoned chunk: its share of the render holds every DiT step, not the decode.
        t, took = eng.last_timings, r.render_seconds[-1]
        denoise = sum(v for k, v in t.items() if k.startswith("dit_step_"))
        assert denoise <= r.stoppable_share() * took <= took - t["vae_decode"] - t["motion_encode"]
        assert r.abandon_s() == pytest.approx(step * min(1.0, 2 / blocks))  # the host's lead + the block it waits in
        motion, index, timed = eng.motion, eng.chunk_index, len(r.render_seconds)
        chunk = _chunk(61)
        chunk.abandoned = _SetAtCheck(2)  # clear before step 0, set before block 1 of step 0
        with pytest.raises(RenderAbandoned, match="before block 1 of step 0"):
            r.render(chunk)
        assert chunk.abandoned.checks == 2
        assert eng.motion is motion and eng.chunk_index == index and len(r.render_seconds) == timed
        assert r.render(_chunk(62)).shape == first.shape  # the next chunk renders whole
    finally:
        r.close()


FLASHTALK = {"renderer.kind": '"flashtalk"'}


def test_run_ahead_blocks_are_refused_where_blocks_do_not_run_one_by_one_on_one_gpu(release) -> None:
    from flashtalk_live.config import ConfigError

    root, rel = release
    with pytest.raises(ConfigError, match="cuda_graphs"):
        _settings(root, rel, **{"model.abandon_run_ahead_blocks": "2", "model.cuda_graphs": "true", **FLASHTALK})
    with pytest.raises(ConfigError, match="one GPU only"):
        _settings(root, rel, **{"model.abandon_run_ahead_blocks": "2", "model.gpus": "2", **FLASHTALK})
    with pytest.raises(ConfigError, match="abandon_run_ahead_blocks"):
        _settings(root, rel, **{"model.abandon_run_ahead_blocks": "-1"})
    assert _settings(root, rel, **{"model.abandon_run_ahead_blocks": "2", **FLASHTALK}).model.abandon_run_ahead_blocks == 2
