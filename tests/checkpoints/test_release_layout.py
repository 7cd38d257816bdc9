"""The released layout: a fake tiny release verifies and loads through the real code; every kind of damage is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flashtalk_live.checkpoints import release
from flashtalk_live.checkpoints.loader import CheckpointError
from flashtalk_live.checkpoints.release import (
    CLIP_FILE,
    ReleaseReport,
    _cross_check,
    plan_from_headers,
    T5_FILE,
    VAE_FILE,
    load_clip_visual,
    load_dit,
    load_t5,
    load_vae,
    load_wav2vec,
    resolve_release_dirs,
    verify_release,
)

from support.checkpoints import rewrite_shard, truncate

RELEASED_NAMES = {
    "config.json", "diffusion_pytorch_model.safetensors.index.json", "Wan2.1_VAE.pth",
    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "models_t5_umt5-xxl-enc-bf16.pth",
    "diffusion_pytorch_model-00001-of-00003.safetensors", "diffusion_pytorch_model-00002-of-00003.safetensors",
    "diffusion_pytorch_model-00003-of-00003.safetensors",
}


def test_fake_release_has_exactly_the_released_names(fake_release):
    w = fake_release.weights_dir
    assert w.name == "SoulX-FlashTalk-14B" and fake_release.wav2vec_dir.name == "chinese-wav2vec2-base"
    assert {p.name for p in w.iterdir() if p.is_file()} == RELEASED_NAMES
    assert (w / "google" / "umt5-xxl" / "tokenizer.json").is_file()
    assert (w / "xlm-roberta-large" / "tokenizer.json").is_file()
    assert {p.name for p in fake_release.wav2vec_dir.iterdir()} == {
        "config.json", "pytorch_model.bin", "preprocessor_config.json"}


def test_verify_fake_release_ok_with_size_warnings(fake_release):
    rep = verify_release(fake_release.weights_dir, fake_release.wav2vec_dir)
    text = rep.format()
    print(text)
    assert rep.ok, text
    names = [c.name for c in rep.components]
    assert names == ["dit", "vae", "clip_visual", "t5", "tokenizer:umt5-xxl", "tokenizer:xlm-roberta-large",
                     "wav2vec2"]
    assert rep.component("dit").tensors == len(fake_release.state_dicts["dit"])
    assert rep.component("dit").dtypes == {"bfloat16": len(fake_release.state_dicts["dit"])}
    assert "not the released size: dim 128 (released 5120)" in text
    assert "text tower ignored knowingly: 7 tensors" in text


def test_resolve_dirs_from_parent_or_weights_folder(fake_release):
    assert resolve_release_dirs(fake_release.root) == (fake_release.weights_dir, fake_release.wav2vec_dir)
    assert resolve_release_dirs(fake_release.weights_dir) == (fake_release.weights_dir, fake_release.wav2vec_dir)
    assert resolve_release_dirs(fake_release.weights_dir, "/x")[1].as_posix() == "/x"


@pytest.mark.timeout(120)
def test_every_module_loads_with_the_written_values(fake_release):
    w = fake_release.weights_dir
    sds = fake_release.state_dicts
    dit = load_dit(w, "cpu", torch.float32)
    assert all(torch.equal(dit.state_dict()[k], v.float()) for k, v in sds["dit"].items())
    assert dit.cfg == fake_release.dit
    vae = load_vae(w, "cpu", None)
    assert vae.config == fake_release.vae
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in sds["vae"].items())
    clip = load_clip_visual(w, "cpu", torch.float32)
    assert clip.cfg == fake_release.clip
    assert torch.equal(clip.head, sds["clip"]["visual.head"].float())
    t5 = load_t5(w, "cpu", torch.bfloat16)
    assert t5.cfg == fake_release.t5 and t5.token_embedding.weight.dtype == torch.bfloat16
    model, extractor = load_wav2vec(fake_release.wav2vec_dir)
    assert torch.equal(model.state_dict()["feature_projection.projection.weight"],
                       sds["wav2vec2"]["feature_projection.projection.weight"])

    # The loaded modules fit together: tokens -> T5 -> DiT context, image -> CLIP -> DiT, audio -> DiT.
    from flashtalk_live.model.audio import AudioFeatureConfig, encode_audio
    from flashtalk_live.model.text import encode_prompts

    tok = release.load_umt5_tokenizer(w)
    with torch.no_grad():
        (ctx,) = encode_prompts(t5.float(), tok, "a person is talking .")
        image = torch.rand(1, 3, 1, 64, 32) * 2 - 1
        clip_fea = clip.encode(image)
        wav = np.sin(np.arange(16000 * 2) / 16000 * 2 * np.pi * 180.0) * 0.1
        audio = encode_audio(model, extractor, wav, 0, 5, AudioFeatureConfig(frame_num=5, motion_frames=1))
        out = dit(torch.randn(1, 16, 2, 8, 4), torch.tensor([500.0]), ctx[None], clip_fea, torch.randn(1, 20, 2, 8, 4), audio)
    assert ctx.shape == (6, fake_release.t5.dim)
    assert out.shape == (1, 16, 2, 8, 4) and torch.isfinite(out).all()


def _one_problem(rep, component: str) -> str:
    assert not rep.ok
    comp = rep.component(component)
    assert not comp.ok
    others = [c.name for c in rep.components if not c.ok and c.name != component]
    assert others == [], f"only {component} should fail, also: {others}"
    return "\n".join(comp.problems)


def test_missing_shard_is_named(release_copy):
    w = release_copy.weights_dir
    (w / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    text = _one_problem(verify_release(w, release_copy.wav2vec_dir), "dit")
    assert "diffusion_pytorch_model-00002-of-00003.safetensors" in text and "missing" in text
    with pytest.raises(CheckpointError, match="missing shard: diffusion_pytorch_model-00002-of-00003.safetensors"):
        load_dit(w)


def test_renamed_key_is_named_with_its_shard(release_copy):
    w = release_copy.weights_dir

    def rename(sd):
        sd["blocks.1.ffn.0.weight_old"] = sd.pop("blocks.1.ffn.0.weight")
        return sd

    shard = rewrite_shard(w, "blocks.1.ffn.0.weight", rename)
    text = _one_problem(verify_release(w), "dit")
    assert "missing key: blocks.1.ffn.0.weight" in text
    assert f"unexpected key: blocks.1.ffn.0.weight_old (in {shard.name})" in text
    with pytest.raises(CheckpointError, match=r"(?s)index\.json: dit does not match.*missing key: blocks\.1\.ffn\.0\.weight"):
        load_dit(w)


def test_wrong_shape_is_named(release_copy):
    w = release_copy.weights_dir
    torch.save({**release_copy.state_dicts["vae"], "conv2.weight": torch.zeros(16, 16, 1, 1, 2)}, w / VAE_FILE)
    text = _one_problem(verify_release(w), "vae")
    assert VAE_FILE in text and "wrong shape: conv2.weight: file [16, 16, 1, 1, 2] but the module needs [16, 16, 1, 1, 1]" in text
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth.*\n.*conv2\.weight"):
        load_vae(w)


def test_wrong_shape_in_a_shard(release_copy):
    w = release_copy.weights_dir

    def widen(sd):
        sd["head.modulation"] = torch.zeros(1, 3, 128, dtype=torch.bfloat16)
        return sd

    shard = rewrite_shard(w, "head.modulation", widen)
    text = _one_problem(verify_release(w), "dit")
    assert f"wrong shape: head.modulation: file [1, 3, 128] but the module needs [1, 2, 128] (in {shard.name})" in text


@pytest.mark.parametrize("name", ["diffusion_pytorch_model-00003-of-00003.safetensors", VAE_FILE, CLIP_FILE, T5_FILE])
def test_truncated_file_is_named(release_copy, name):
    w = release_copy.weights_dir
    truncate(w / name)
    rep = verify_release(w)
    comp = {"diffusion_pytorch_model-00003-of-00003.safetensors": "dit", VAE_FILE: "vae", CLIP_FILE: "clip_visual",
            T5_FILE: "t5"}[name]
    text = _one_problem(rep, comp)
    assert name in text and "truncated or corrupt" in text
    loader = {"dit": load_dit, "vae": load_vae, "clip_visual": load_clip_visual, "t5": load_t5}[comp]
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        loader(w)


def test_clip_keys_outside_visual_and_text_tower_are_rejected(release_copy):
    w = release_copy.weights_dir
    sd = dict(release_copy.state_dicts["clip"])
    sd["text_projection"] = torch.zeros(2, 2)
    del sd["visual.post_norm.bias"]
    torch.save(sd, w / CLIP_FILE)
    text = _one_problem(verify_release(w), "clip_visual")
    assert "missing key: visual.post_norm.bias" in text and "unexpected key: text_projection" in text
    with pytest.raises(CheckpointError, match="unexpected key: text_projection"):
        load_clip_visual(w)


def test_bad_config_and_missing_files(release_copy):
    w = release_copy.weights_dir
    (w / "config.json").write_text(json.dumps({"dim": 128, "num_heads": 2, "dimm": 3}))
    assert "invalid DiT config" in _one_problem(verify_release(w), "dit")
    (w / "config.json").unlink()
    assert "config.json not found" in _one_problem(verify_release(w), "dit")
    (w / T5_FILE).unlink()
    assert f"{T5_FILE}: file not found" in "\n".join(verify_release(w).component("t5").problems)
    shutil.rmtree(w / "google")
    assert "tokenizer folder not found" in "\n".join(verify_release(w).component("tokenizer:umt5-xxl").problems)
    assert not verify_release(w.parent / "nowhere").ok


def test_modules_that_do_not_fit_each_other(release_copy):
    w = release_copy.weights_dir
    cfg = json.loads((w / "config.json").read_text())
    cfg["clip_dim"] = 80  # a DiT made for another CLIP width: its own file set is consistent
    (w / "config.json").write_text(json.dumps(cfg))
    from flashtalk_live.checkpoints.fake import write_fake_release
    from flashtalk_live.model.dit import DiTConfig

    other = write_fake_release(release_copy.root / "other", dit=DiTConfig.from_dict(cfg), wav2vec=False)
    for p in w.glob("diffusion_pytorch_model*"):
        p.unlink()
    for p in other.weights_dir.glob("diffusion_pytorch_model*"):
        shutil.copy(p, w / p.name)
    rep = verify_release(w, release_copy.wav2vec_dir)
    assert all(c.ok for c in rep.components) and not rep.ok
    assert rep.problems == ["modules do not fit: DiT clip_dim 80 != CLIP width 160"]


def test_wav2vec_pretraining_layout_with_old_weight_norm_names(release_copy):
    """A Wav2Vec2ForPreTraining-style file: `wav2vec2.` prefix, weight_g/weight_v, quantizer/project heads."""
    d = release_copy.wav2vec_dir
    sd = release_copy.state_dicts["wav2vec2"]
    out = {}
    for k, v in sd.items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        out[f"wav2vec2.{k}"] = v
    out["quantizer.codevectors"] = torch.zeros(1, 4, 8)
    out["project_hid.weight"] = torch.zeros(8, 32)
    (d / "pytorch_model.bin").unlink()
    torch.save(out, d / "pytorch_model.bin")
    rep = verify_release(release_copy.weights_dir, d)
    assert rep.ok, rep.format()
    assert any("pretraining heads ignored" in line for line in rep.component("wav2vec2").info)
    model, _ = load_wav2vec(d)
    g = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
    assert torch.equal(model.state_dict()[g], sd[g])

    del out["wav2vec2.encoder.layers.1.final_layer_norm.bias"]
    torch.save(out, d / "pytorch_model.bin")
    text = _one_problem(verify_release(release_copy.weights_dir, d), "wav2vec2")
    assert "pytorch_model.bin" in text and "missing key: encoder.layers.1.final_layer_norm.bias" in text
    with pytest.raises(CheckpointError, match="encoder.layers.1.final_layer_norm.bias"):
        load_wav2vec(d)


# ------------------------------------------------------------------------------------------ full size

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (MANIFESTS / name).read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    return out


@pytest.mark.timeout(120)
def test_released_manifests_size_and_fit_the_full_modules():
    """The headers of the real files (= the reference manifests) give exactly the released sizes and keys."""
    from flashtalk_live.model.clip import VIT_H_14
    from flashtalk_live.model.dit import DiTConfig
    from flashtalk_live.model.t5 import UMT5_XXL
    from flashtalk_live.model.vae import VAEConfig

    released_json = {"_class_name": "WanModel", "dim": 5120, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256,
                     "in_dim": 36, "model_type": "i2v", "num_heads": 40, "num_layers": 40, "out_dim": 16,
                     "text_len": 512}
    dit = plan_from_headers("dit", _manifest("dit_14b.keys"), "dit", DiTConfig.from_dict(released_json))
    assert dit.report.ok, dit.report.lines()[:5]
    vae = plan_from_headers("vae", _manifest("vae.keys"), VAE_FILE)
    assert vae.report.ok and vae.config == VAEConfig.released()
    t5 = plan_from_headers("t5", _manifest("t5_umt5_xxl_encoder.keys"), T5_FILE)
    assert t5.report.ok and t5.config == UMT5_XXL
    clip = plan_from_headers("clip_visual", _manifest("clip_xlm_roberta_vit_h_14.keys"), CLIP_FILE)
    assert clip.report.ok and clip.config == VIT_H_14
    visual_params = sum(p.numel() for p in clip.module.parameters())
    assert visual_params == 632_076_800  # ViT-H/14; the whole file holds 1,193,014,785 (reference doc, section 6)
    assert clip.info == [f"text tower ignored knowingly: 392 tensors, {1_193_014_785 - visual_params:,} parameters "
                         "(textual.*, log_scale)"]
    rep = ReleaseReport(Path("x"), None)
    _cross_check(rep, {"dit": dit.config, "vae": vae.config, "clip_visual": clip.config, "t5": t5.config})
    assert rep.problems == []
    # A shard that lost one block's audio projection is named key by key.
    broken = _manifest("dit_14b.keys")
    gone = [k for k in broken if k.startswith("blocks.7.audio_cross_attn.")]
    for k in gone:
        del broken[k]
    plan = plan_from_headers("dit", broken, "dit", dit.config)
    assert plan.report.missing == gone and len(gone) == 6
