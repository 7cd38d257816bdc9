"""The TAEHV tiny decoder: parity with the reference's three decode modes, strict loading of released files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashtalk_live.checkpoints.loader import CheckpointError
from flashtalk_live.checkpoints.taehv import load_taehv, plan_taehv, random_fixture_weights
from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder, TAEHVStream

from support.tensors import assert_close

TAEHV_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "taehv"
TOL = 1e-5  # fixture README: relative L2 1e-5, max abs 1e-5


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_fixture_weights(seed=json.loads((TAEHV_DIR / "config.json").read_text())["weight_seed"])


@pytest.fixture(scope="module")
def model(weights) -> TAEHVDecoder:
    torch.manual_seed(0)
    m = TAEHVDecoder()
    m.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(TAEHV_DIR / "io.safetensors"))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, weights) -> Path:
    """The drawn decoder as a released-style file: decoder.* plus an encoder.* tensor the loader must skip."""
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.safetensors"
    save_file({**weights, "encoder.0.weight": torch.zeros(64, 3, 3, 3, dtype=torch.float16),
               "encoder.0.bias": torch.zeros(64, dtype=torch.float16)}, str(path))
    return path


# ------------------------------------------------------------------------------------------ keys and weights


def test_drawn_weights_match_the_manifest_and_the_full_size_module():
    manifest = json.loads((TAEHV_DIR / "manifest.json").read_text())
    drawn = random_fixture_weights()
    assert {k: list(v.shape) for k, v in drawn.items()} == manifest["tensors"]
    assert all(v.dtype == torch.float16 for v in drawn.values())
    with torch.device("meta"):
        full = TAEHVDecoder(TAEHVConfig.taew2_1())
    assert {k: list(v.shape) for k, v in full.state_dict().items()} == manifest["tensors"]
    assert list(full.state_dict()) == list(manifest["tensors"]), "state_dict() order is the recipe's draw order"
    assert full.state_dict()["decoder.7.conv.weight"].shape == (256, 256, 1, 1)  # stage 0 grows time x1
    assert full.state_dict()["decoder.13.conv.weight"].shape == (256, 128, 1, 1)  # x2
    assert not any(k.startswith("decoder.3.skip") for k in full.state_dict()), "equal widths: identity skip"


def test_drawing_is_seeded():
    a, b = random_fixture_weights(seed=1), random_fixture_weights(seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder.1.weight"], random_fixture_weights(seed=2)["decoder.1.weight"])


# ------------------------------------------------------------------------------------------ parity


def test_parallel_decode_equals_the_golden(model, io):
    with torch.no_grad():
        out = model.decode(io["latents"], parallel=True)
    assert_close("parallel", out, io["decoded_parallel"], TOL, TOL)
    assert out.min() >= 0 and out.max() <= 1


def test_sequential_decode_equals_the_golden(model, io):
    with torch.no_grad():
        assert_close("sequential", model.decode(io["latents"], parallel=False), io["decoded_sequential"], TOL, TOL)


def test_streaming_decode_equals_the_golden(model, io):
    stream = TAEHVStream(model)
    with torch.no_grad():
        stream.push(io["latents"][:, :1])
        first = stream.drain()
        assert first.shape[1] == 1, "the first latent gives one frame (3 trimmed)"
        assert stream.next_frame() is None
        stream.push(io["latents"][:, 1:])
        rest = stream.drain()
    assert rest.shape[1] == 12 and stream.frames_out == 13 and stream.latents_in == 4
    assert_close("streaming", torch.cat([first, rest], 1), io["decoded_streaming"], TOL, TOL)


def test_stream_yields_each_latents_frames_as_soon_as_it_is_pushed(model, io):
    stream = TAEHVStream(model)
    frames, counts = [], []
    with torch.no_grad():
        for t in range(io["latents"].shape[1]):
            stream.push(io["latents"][:, t:t + 1])
            n = 0
            while (f := stream.next_frame()) is not None:
                frames.append(f)
                n += 1
            counts.append(n)
        assert counts == [1, 4, 4, 4]
        assert stream.drain().shape == (1, 0, 3, 48, 80)
        assert_close("one by one", torch.cat(frames, 1), io["decoded_streaming"], TOL, TOL)
        stream.reset()
        stream.push(io["latents"])
        assert_close("after reset", stream.drain(), io["decoded_streaming"], TOL, TOL)


def test_frame_counts_and_geometry():
    cfg = TAEHVConfig.tiny()
    assert [cfg.frames_out(t) for t in (1, 2, 8, 9)] == [1, 5, 29, 33]  # as the Wan VAE: 1 + 4(T - 1)
    torch.manual_seed(0)
    m = TAEHVDecoder(cfg).eval()
    with torch.no_grad():
        out = m.decode(torch.randn(2, 3, 16, 2, 3))
    assert out.shape == (2, 9, 3, 16, 24)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 2, 8, 4, 4), "NTCHW"),  # channels where time should be
    (torch.zeros(1, 16, 4, 4), "NTCHW"),
    (torch.zeros(1, 2, 16, 4, 4, dtype=torch.int64), "floating point"),
])
def test_bad_latents_get_clear_errors(bad, match):
    m = TAEHVDecoder(TAEHVConfig.tiny())
    with pytest.raises(ValueError, match=match):
        m.decode(bad)


def test_stream_refuses_a_change_of_geometry_and_an_empty_drain():
    m = TAEHVDecoder(TAEHVConfig.tiny())
    stream = TAEHVStream(m)
    with pytest.raises(ValueError, match="before any latent"):
        stream.drain()
    stream.push(torch.zeros(1, 1, 16, 4, 4))
    with pytest.raises(ValueError, match="latent size"):
        stream.push(torch.zeros(1, 1, 16, 4, 6))


# ------------------------------------------------------------------------------------------ loading


def test_released_file_loads_strictly_skipping_the_encoder(weights_file, model, io):
    plan = plan_taehv(weights_file)
    assert plan.report.ok and not plan.slices
    assert any("encoder ignored knowingly: 2 tensors" in line for line in plan.info)
    loaded = load_taehv(weights_file, dtype=torch.float32)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    half = load_taehv(weights_file)  # float16 by default, as released
    assert next(half.parameters()).dtype == torch.float16


def test_pth_file_loads_the_same(tmp_path, weights, model):
    path = tmp_path / "taew2_1.pth"
    torch.save(dict(weights), str(path))
    loaded = load_taehv(path, dtype=torch.float32)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def _save(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    save_file(sd, str(path))
    return path


def test_missing_unexpected_and_wrongly_shaped_keys_are_named(tmp_path, weights):
    sd = dict(weights)
    del sd["decoder.9.conv.2.bias"]
    sd["decoder.14.weight"] = torch.zeros(64, 128, 1, 1, dtype=torch.float16)
    sd["postprocess.scale"] = torch.zeros(1)
    path = _save(tmp_path / "bad.safetensors", sd)
    with pytest.raises(CheckpointError) as e:
        load_taehv(path)
    msg = str(e.value)
    assert str(path) in msg and "1 missing, 1 unexpected, 1 wrongly shaped" in msg
    assert "missing key: decoder.9.conv.2.bias" in msg
    assert "unexpected key: postprocess.scale" in msg
    assert "wrong shape: decoder.14.weight: file [64, 128, 1, 1] but the module needs [64, 128, 3, 3]" in msg


def test_not_a_taehv_file_and_bad_suffix(tmp_path):
    path = _save(tmp_path / "other.safetensors", {"weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="cannot size the TAEHV decoder") as e:
        load_taehv(path)
    assert "missing key: decoder.1.weight" in str(e.value)
    with pytest.raises(CheckpointError, match=".safetensors or .pth"):
        load_taehv(tmp_path / "taew2_1.bin")
    with pytest.raises(CheckpointError, match="file not found"):
        load_taehv(tmp_path / "absent.safetensors")


def test_a_larger_temporal_grow_conv_keeps_its_last_output_channels(tmp_path, weights, io):
    """The reference's patch_tgrow_layers: a file trained with a x2 temporal grow where the module has x1."""
    sd = dict(weights)
    real = sd["decoder.7.conv.weight"]  # [256, 256, 1, 1] in the module
    sd["decoder.7.conv.weight"] = torch.cat([torch.full_like(real, 7.0), real])  # [512, ...]: last 256 real
    path = _save(tmp_path / "grow.safetensors", sd)
    plan = plan_taehv(path)
    assert plan.report.ok and plan.slices == {"decoder.7.conv.weight": 256}
    assert any("decoder.7.conv.weight: file [512, 256, 1, 1], last 256" in line for line in plan.info)
    m = load_taehv(path, dtype=torch.float32)
    assert torch.equal(m.decoder[7].conv.weight, real.float())
    with torch.no_grad():
        assert_close("tgrow rule", m.decode(io["latents"]), io["decoded_parallel"], TOL, TOL)


@pytest.mark.parametrize("rows", [128, 384])  # smaller, or larger but not a whole number of time steps
def test_other_temporal_grow_shapes_are_errors(tmp_path, weights, rows):
    sd = dict(weights)
    sd["decoder.7.conv.weight"] = torch.zeros(rows, 256, 1, 1, dtype=torch.float16)
    with pytest.raises(CheckpointError, match=rf"wrong shape: decoder.7.conv.weight: file \[{rows}, 256, 1, 1\]"):
        load_taehv(_save(tmp_path / "grow.safetensors", sd))


def test_tiny_config_is_read_off_the_file(tmp_path):
    torch.manual_seed(0)
    m = TAEHVDecoder(TAEHVConfig.tiny())
    path = _save(tmp_path / "tiny.safetensors", {k: v.half() for k, v in m.state_dict().items()})
    loaded = load_taehv(path, dtype=torch.float32)
    assert loaded.config == TAEHVConfig.tiny()
