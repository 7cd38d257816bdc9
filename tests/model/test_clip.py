"""CLIP visual tower: released key manifest, state-dict split, reference parity, image_features."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.model.clip import VIT_H_14, CLIPVisual, CLIPVisualConfig, preprocess_images, split_clip_state_dict

from support.tensors import assert_close

FIX = Path(__file__).resolve().parents[1] / "fixtures"
PARITY = FIX / "parity" / "clip_visual"
MANIFEST = FIX / "reference" / "clip_xlm_roberta_vit_h_14.keys"
TINY = CLIPVisualConfig(dim=64, num_heads=2, num_layers=4, out_dim=32)  # parity/clip_visual/config.json


def read_manifest(path: Path) -> list[tuple[str, list[int]]]:
    rows = []
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, [int(x) for x in shape.strip("[]").split(",") if x.strip()]))
    return rows


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    visual, ignored, unexpected = split_clip_state_dict(load_file(PARITY / "weights.safetensors"))
    assert ignored == [] and unexpected == []
    model = CLIPVisual(TINY).eval()
    model.load_state_dict(visual, strict=True)
    return model, load_file(PARITY / "io.safetensors")


def test_full_size_keys_and_shapes_match_manifest():
    manifest = read_manifest(MANIFEST)
    want = [(k[len("visual."):], s) for k, s in manifest if k.startswith("visual.")]
    with torch.device("meta"):
        model = CLIPVisual(VIT_H_14)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == want  # same keys, same shapes, same order
    assert len(got) == 392


def test_split_of_released_layout():
    manifest = read_manifest(MANIFEST)
    sd = {k: torch.empty(s, device="meta") for k, s in manifest}
    visual, ignored, unexpected = split_clip_state_dict(sd)
    with torch.device("meta"):
        model_keys = list(CLIPVisual().state_dict())
    assert list(visual) == model_keys
    assert unexpected == []
    assert len(ignored) == len(manifest) - len(model_keys) == 392
    assert "log_scale" in ignored and all(k == "log_scale" or k.startswith("textual.") for k in ignored)
    # Anything else is reported, never silently dropped or loaded.
    sd["module.visual.head"] = torch.empty(1)
    sd["visual."] = torch.empty(1)
    sd["text_projection"] = torch.empty(1)
    _, _, unexpected = split_clip_state_dict(sd)
    assert unexpected == ["module.visual.head", "text_projection", "visual."]


def test_preprocessing_parity(tiny):
    _, io = tiny
    assert_close("preprocessed", preprocess_images(io["image"]), io["preprocessed"])
    # 4-D input is the same as the pipeline's [B, 3, 1, H, W].
    assert_close("preprocessed_4d", preprocess_images(io["image"][:, :, 0]), io["preprocessed"])


@torch.no_grad()
def test_embeddings_and_features_parity(tiny):
    model, io = tiny
    assert_close("embeddings_after_pre_norm", model.embed(io["preprocessed"]), io["embeddings_after_pre_norm"])
    features = model.encode(io["image"])
    assert_close("features", features, io["features"])
    assert_close("all_blocks_no_post_norm", model(io["preprocessed"], use_31_block=False), io["all_blocks_no_post_norm"])
    # The two stored outputs differ by one block: the 31-of-32 choice is really exercised.
    assert ((io["features"] - io["all_blocks_no_post_norm"]).norm() / io["features"].norm()) > 0.1


@torch.no_grad()
def test_half_precision_path_runs_close(tiny):
    model, io = tiny
    half = CLIPVisual(TINY).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    out = half.encode(io["image"])
    assert out.dtype == torch.bfloat16
    rel = ((out.double() - io["features"].double()).norm() / io["features"].double().norm()).item()
    print(f"clip bf16 vs fp32 reference: rel_l2={rel:.3e}")
    assert rel < 5e-2


@torch.no_grad()
def test_image_features(tiny):
    model, io = tiny
    img = io["image"][:, :, 0]  # [1, 3, 96, 64] in [-1, 1]
    u8 = ((img[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[None]
    a = model.image_features(img)
    b = model.image_features(u8)
    other = model.image_features(torch.flip(img, dims=[2, 3]) * 0.5)
    assert a.shape == (1, TINY.out_dim)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(1))
    cos_same = (a * b).sum().item()
    cos_other = (a * other).sum().item()
    print(f"clip image_features cosine: uint8-vs-float {cos_same:.6f}, other image {cos_other:.4f}")
    assert cos_same > 0.999
    assert cos_other < cos_same - 0.01


def test_bad_inputs_are_rejected(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        preprocess_images(torch.zeros(1, 4, 32, 32))
    with pytest.raises(TypeError):
        preprocess_images(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="preprocessed pixels"):
        model(torch.zeros(1, 3, 96, 64))
    with pytest.raises(ValueError, match="uint8 frames"):
        model.image_features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CLIPVisualConfig(image_size=225)
