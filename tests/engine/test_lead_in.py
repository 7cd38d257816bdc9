"""A clip's lead-in on the FlashTalk engine: shorter chunks (video.lead_in_frames) rendered as their own shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flashtalk_live.engine.engine import EngineError, FlashTalkEngine
from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer
from flashtalk_live.engine.session import prepare_session
from flashtalk_live.images import default_portrait
from flashtalk_live.renderers.base import RendererError

from support.chunks import render_chunk
from support.settings import TINY_CHUNK_FRAMES, flashtalk_settings, tiny_release

torch.set_num_threads(1)

N = TINY_CHUNK_FRAMES
LEAD = 4  # the one lead-in it can make: 4 + 5 motion frames = 9 = 1 + 4 x 2


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, object]:
    return tiny_release(tmp_path_factory.mktemp("release"))


def _settings(root: Path, rel, *extra: str):
    return flashtalk_settings(root, N, f'model.weights_dir="{rel.weights_dir}"',
                              f'model.wav2vec_dir="{rel.wav2vec_dir}"', f'model.profile="{root / "tiny.toml"}"',
                              *extra)


@pytest.fixture(scope="module")
def renderer(release):
    root, rel = release
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(_settings(root, rel, f"video.lead_in_frames=[{LEAD}]")))
    yield r
    r.close()


@pytest.mark.timeout(120)
def test_a_lead_in_chunk_is_the_chunk_of_a_profile_with_that_frame_num(renderer) -> None:
    """The engine cuts the session's conditioning instead of preparing it again per shape: the result must be what
    a session prepared for the short frame_num gives (the causal VAE's latent t sees only frames <= 4t)."""
    engine = renderer.engine
    session = engine.session
    short = engine.shape(LEAD)
    assert (short.frame_num, short.new_frames, short.latent_frames) == (9, LEAD, 3)
    direct = prepare_session(short, default_portrait(), session.prompt, vae=engine.models.vae,
                             clip=engine.models.clip, context=session.context, clip_fea=session.clip_fea)
    torch.testing.assert_close(session.y[:, :short.latent_frames], direct.y, rtol=1e-5, atol=1e-5)

    window = (0.1 * np.random.default_rng(3).standard_normal(short.window_samples)).astype(np.float32)
    engine.use_session(session)
    ours = engine.generate(engine.audio_features(window, LEAD), new_frames=LEAD).frames
    other = FlashTalkEngine(engine.models, short, engine.device, engine.dtype, output=engine.output)
    other.use_session(direct)
    theirs = other.generate(other.audio_features(window)).frames
    engine.use_session(session)
    assert ours.shape == (LEAD, 80, 48, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.timeout(120)
def test_the_renderer_renders_its_lead_in_and_full_chunks_and_refuses_other_lengths(renderer) -> None:
    first = render_chunk(0, LEAD, seed=1, history_samples=128000)
    frames = renderer.render(first)
    assert frames.shape == (LEAD, 80, 48, 3) and frames.std() > 0
    frames = renderer.render(render_chunk(1, N, start_frame=LEAD, seed=2, history_samples=128000))
    assert frames.shape == (N, 80, 48, 3)
    odd = render_chunk(2, 6, seed=3)
    with pytest.raises(RendererError, match=r"lead-in of \[4\]"):
        renderer.render(odd)
    with pytest.raises(EngineError, match="cannot make a chunk of 6"):
        renderer.engine.shape(6)


@pytest.mark.timeout(120)
def test_warm_up_renders_each_lead_in_shape_unless_told_not_to(renderer) -> None:
    shapes: list[int | None] = []
    generate = renderer.engine.generate

    def spy(*a, **kw):
        shapes.append(kw.get("new_frames"))
        return generate(*a, **kw)

    renderer.engine.generate = spy
    try:
        renderer.warm_up()
        assert shapes == [None, LEAD]
        shapes.clear()
        renderer.warm_up(lead_in=False)  # "auto" timing candidates: only the winner compiles its lead-in
        assert shapes == [None]
    finally:
        del renderer.engine.generate


@pytest.mark.timeout(60)
def test_a_lead_in_the_profile_cannot_make_is_refused_at_build(release) -> None:
    root, rel = release
    with pytest.raises(Exception, match="lead_in_frames"):  # settings: not below chunk_frames
        _settings(root, rel, "video.lead_in_frames=[8]")
    with pytest.raises(Exception, match="lead_in_frames"):  # settings: not a multiple of 4
        _settings(root, rel, "video.lead_in_frames=[6]")


@pytest.mark.timeout(120)
def test_abandon_steps_and_timings_come_from_whole_chunks_only(renderer) -> None:
    """A re-plan plans the stop of a whole chunk in flight (e.g. an idle-bank link) from abandon_s: a short chunk's
    time would make those steps look shorter than they are."""
    renderer.render(render_chunk(0, N, seed=5, history_samples=128000))
    whole = renderer.abandon_s()
    renderer.render(render_chunk(1, LEAD, start_frame=N, seed=6, history_samples=128000))
    assert renderer.abandon_s() == whole and renderer.render_seconds[-1] != renderer.render_seconds[-2]
    timed = renderer.time_chunks(1, lambda run: (run(), 0.25)[1], LEAD)
    assert timed == [0.25] and renderer.abandon_s() == whole, "timing a lead-in length leaves the steps alone"
