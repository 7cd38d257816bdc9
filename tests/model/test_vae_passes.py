"""Multi-frame VAE passes equal the reference's frame-by-frame loop (decode and encode, fresh and streamed).

Every op of the Wan VAE is causal in time, so running a call's latents through the decoder together (or in
any grouping) with the causal caches carried between passes must give the frame-by-frame result: in float64
to rounding (1e-12), in float32 to summation-order noise.  Chunks are streamed through one kept cache too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.model.vae import VAEConfig, WanVAE

from support.tensors import assert_close

VAE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "vae"
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}  # max abs difference; outputs are O(1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _vae(dtype: torch.dtype, channels_last: bool = False) -> WanVAE:
    kwargs = json.loads((VAE_DIR / "config.json").read_text())["constructor_kwargs"]
    model = WanVAE(VAEConfig.from_reference_kwargs(kwargs))
    model.load_state_dict(load_file(VAE_DIR / "weights.safetensors"), strict=True)
    return model.to(dtype).eval().requires_grad_(False).configure(channels_last=channels_last)


@pytest.fixture(scope="module")
def vae64() -> WanVAE:
    return _vae(torch.float64)


@pytest.fixture(scope="module")
def vae32() -> WanVAE:
    return _vae(torch.float32)


def _latents(t: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, t, 3, 5, generator=g).to(dtype)  # 24x40 px: odd latent sizes on purpose


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lengths", [(1, 1), (2, 9), (9, 2), (9, 1)])
def test_decode_passes_equal_frame_by_frame_over_two_streamed_chunks(request, dtype, lengths):
    vae = request.getfixturevalue("vae64" if dtype == torch.float64 else "vae32")
    chunks = [_latents(t, dtype, seed=k) for k, t in enumerate(lengths)]
    ref_cache = vae.new_decoder_cache()
    want = [vae.decode(z, cache=ref_cache, clamp=False, latents_per_pass=1) for z in chunks]
    for per_pass in (None, 2, 4):
        cache = vae.new_decoder_cache()
        got = [vae.decode(z, cache=cache, clamp=False, latents_per_pass=per_pass) for z in chunks]
        assert cache.steps == ref_cache.steps == sum(lengths)
        for k in range(2):
            assert_close(f"{dtype} {lengths} chunk {k} per_pass {per_pass}", got[k], want[k], TOL, rel_l2=None)
    # The engine's use: every chunk a fresh call (no kept cache), default pass size = the whole chunk.
    for z in chunks:
        assert_close(f"{dtype} fresh T={z.shape[2]}", vae.decode(z), vae.decode(z, latents_per_pass=1), TOL,
                     rel_l2=None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("frames", [(1, 4), (5, 8), (9, 4), (13, 12)])
def test_encode_passes_equal_frame_by_frame_over_two_streamed_clips(request, dtype, frames):
    vae = request.getfixturevalue("vae64" if dtype == torch.float64 else "vae32")
    g = torch.Generator().manual_seed(sum(frames))
    clips = [(torch.rand(1, 3, t, 24, 40, generator=g) * 2 - 1).to(dtype) for t in frames]
    ref_cache = vae.new_encoder_cache()
    want = [vae.encode(v, cache=ref_cache, latents_per_pass=1) for v in clips]
    for per_pass in (None, 2):
        cache = vae.new_encoder_cache()
        got = [vae.encode(v, cache=cache, latents_per_pass=per_pass) for v in clips]
        assert cache.steps == ref_cache.steps == sum(w.shape[2] for w in want)
        for k in range(2):
            assert_close(f"{dtype} {frames} clip {k} per_pass {per_pass}", got[k], want[k], TOL, rel_l2=None)
    # The motion re-encode as the engine calls it: a fresh clip of the last 1 or 5 frames.
    for n in (1, 5):
        if frames[0] >= n:
            assert_close(f"{dtype} motion {n}", vae.encode_motion(clips[0], motion_frames=n),
                         vae.encode(clips[0][:, :, -n:], latents_per_pass=1), TOL, rel_l2=None)


def test_decode_iter_yields_one_piece_per_pass(vae64):
    z = _latents(9, torch.float64, seed=3)
    assert [p.shape[2] for p in vae64.decode_iter(z)] == [1] + [4] * 8  # the reference's loop by default
    assert [p.shape[2] for p in vae64.decode_iter(z, latents_per_pass=4)] == [13, 16, 4]
    assert [p.shape[2] for p in vae64.decode_iter(z, latents_per_pass=None)] == [33]  # the VAE's default


def test_channels_last_gives_the_same_video_and_latents(vae64):
    cl = _vae(torch.float64, channels_last=True)
    assert cl.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    z = _latents(9, torch.float64, seed=4)
    video = cl.decode(z, clamp=False)
    assert video.is_contiguous()  # the caller gets the ordinary layout back
    assert_close("channels_last decode", video, vae64.decode(z, clamp=False, latents_per_pass=1), TOL, rel_l2=None)
    clip = torch.rand(1, 3, 5, 24, 40, dtype=torch.float64) * 2 - 1
    assert_close("channels_last encode", cl.encode(clip), vae64.encode(clip, latents_per_pass=1), TOL, rel_l2=None)
    cl.configure(channels_last=False)
    assert cl.decoder.conv1.weight.is_contiguous()


def test_default_pass_size_is_configurable_and_checked(vae64):
    vae = _vae(torch.float64).configure(latents_per_pass=2)
    z = _latents(5, torch.float64, seed=5)
    assert [p.shape[2] for p in vae.decode_iter(z, latents_per_pass=None)] == [5, 8, 4]
    assert_close("configured per_pass 2", vae.decode(z), vae64.decode(z, latents_per_pass=1), TOL, rel_l2=None)
    assert vae.configure(latents_per_pass=0).latents_per_pass is None  # 0: the whole call
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="latents_per_pass"):
            vae.configure(latents_per_pass=bad)
        with pytest.raises(ValueError, match="latents_per_pass"):
            vae.decode(z, latents_per_pass=bad)


@pytest.mark.timeout(300)
def test_compiled_decoder_and_encoder_trace_in_one_graph_and_match(vae64):
    # The eager backend checks what the option relies on (Dynamo traces the cached passes without graph
    # breaks, the results stay equal) without paying an inductor build on the CI machine.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    vae = _vae(torch.float64).configure(compile=True, compile_backend="eager")
    z = _latents(5, torch.float64, seed=6)
    clip = torch.rand(1, 3, 5, 24, 40, dtype=torch.float64) * 2 - 1
    assert_close("compiled decode", vae.decode(z), vae64.decode(z, latents_per_pass=1), TOL, rel_l2=None)
    assert_close("compiled encode", vae.encode(clip), vae64.encode(clip, latents_per_pass=1), TOL, rel_l2=None)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
