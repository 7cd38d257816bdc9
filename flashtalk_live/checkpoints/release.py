"""The released SoulX-FlashTalk-14B layout: verify a folder from file headers only, and load each module strictly.

    SoulX-FlashTalk-14B/
        config.json                                            DiT architecture (diffusers style)
        diffusion_pytorch_model-0000N-of-0000M.safetensors     DiT shards
        diffusion_pytorch_model.safetensors.index.json         key -> shard
        Wan2.1_VAE.pth                                         VAE state dict
        models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   full CLIP (only visual.* is used)
        models_t5_umt5-xxl-enc-bf16.pth                        umT5-XXL encoder
        google/umt5-xxl/                                       umT5 tokenizer
        xlm-roberta-large/                                     CLIP text tokenizer (unused, but shipped)
    chinese-wav2vec2-base/                                     transformers folder (separate repository)

Every module is one row of `COMPONENTS` (its files, how its size is known, its builder, its key map, its
quantisation plan); `loader.plan_component` / `loader.load_plan` walk a row and `verify_release` the table.
Every module is built on `meta`; its keys and shapes are compared with the file headers before any data
is read, then the tensors are streamed into it (`loader.load_into`). The DiT architecture comes from
config.json; the VAE, CLIP and T5 sizes, which the release does not write down, are read off the tensor
shapes (so a tiny test release loads through the same code), and `verify_release` says when a size is
not the released one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from flashtalk_live.log import get_logger
from flashtalk_live.model.audio import Wav2Vec2LoadError, load_wav2vec2
from flashtalk_live.model.clip import VIT_H_14, CLIPVisual, CLIPVisualConfig, split_clip_state_dict
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.model.t5 import UMT5_XXL, T5Config, T5Encoder
from flashtalk_live.model.text import UMT5Tokenizer
from flashtalk_live.model.vae import VAEConfig, WanVAE
from flashtalk_live.quant.fp8 import Fp8Plan, block_quantizers

from .loader import (
    CheckpointError,
    Component,
    FileTensors,
    KeyMap,
    ModulePlan,
    TensorInfo,
    header_stats,
    load_plan,
    plan_component,
    plan_headers,
    pth_headers,
    read_pth,
    read_safetensors_header,
    read_safetensors_index,
    read_sharded_safetensors,
)

__all__ = [
    "CLIP_FILE",
    "CLIP_TOKENIZER_DIR",
    "COMPONENTS",
    "ComponentReport",
    "ModulePlan",
    "DIT_CONFIG",
    "DIT_STEM",
    "FLASHTALK_DIR",
    "FLASHTALK_REPO",
    "ReleaseReport",
    "T5_FILE",
    "T5_TOKENIZER_DIR",
    "VAE_FILE",
    "WAV2VEC_DIR",
    "WAV2VEC_REPO",
    "infer_clip_config",
    "infer_t5_config",
    "infer_vae_config",
    "load_clip_visual",
    "load_component",
    "load_dit",
    "load_t5",
    "load_umt5_tokenizer",
    "load_vae",
    "load_wav2vec",
    "plan_from_headers",
    "plan_release_component",
    "read_dit_config",
    "resolve_release_dirs",
    "verify_release",
]

log = get_logger("checkpoints")

FLASHTALK_REPO = "Soul-AILab/SoulX-FlashTalk-14B"
WAV2VEC_REPO = "TencentGameMate/chinese-wav2vec2-base"
FLASHTALK_DIR = "SoulX-FlashTalk-14B"
WAV2VEC_DIR = "chinese-wav2vec2-base"

DIT_CONFIG = "config.json"
DIT_STEM = "diffusion_pytorch_model"
VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"
CLIP_TOKENIZER_DIR = "xlm-roberta-large"

CLIP_HEAD_DIM = 80  # ViT-H/14: 1280 wide, 16 heads; the file's shapes cannot tell the head count

# Which tokenizer files make a usable folder (any one of each group).
_TOKENIZER_FILES = {
    T5_TOKENIZER_DIR: ("tokenizer.json", "spiece.model"),
    CLIP_TOKENIZER_DIR: ("tokenizer.json", "sentencepiece.bpe.model"),
}


def resolve_release_dirs(path: str | Path, wav2vec_dir: str | Path | None = None) -> tuple[Path, Path | None]:
    """(FlashTalk folder, wav2vec folder or None) from either the FlashTalk folder itself or the folder that
    `models download` fills (holding both). Without an explicit `wav2vec_dir`, a `chinese-wav2vec2-base`
    beside (or inside) it is used when present."""
    path = Path(path).expanduser()
    if (path / FLASHTALK_DIR).is_dir() and not (path / DIT_CONFIG).is_file():
        weights, parent = path / FLASHTALK_DIR, path
    else:
        weights, parent = path, path.parent
    if wav2vec_dir is not None:
        return weights, Path(wav2vec_dir).expanduser()
    for cand in (parent / WAV2VEC_DIR, weights / WAV2VEC_DIR):
        if cand.is_dir():
            return weights, cand
    return weights, None


# ------------------------------------------------------------------------------------------ configs


def read_dit_config(weights_dir: str | Path) -> DiTConfig:
    """DiTConfig from the release's config.json."""

    path = Path(weights_dir) / DIT_CONFIG
    if not path.is_file():
        raise CheckpointError(path, "DiT config.json not found")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return DiTConfig.from_dict(data)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(path, f"invalid DiT config: {e}") from e


def _as_shape(v: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v))


def _shape(headers: Mapping[str, Any], key: str, file: Path) -> tuple[int, ...]:
    if key not in headers:
        raise CheckpointError(file, f"cannot size the module: key {key} is missing", [f"missing key: {key}"])
    return _as_shape(headers[key])


def _count_indexed(headers: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in headers if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def infer_vae_config(headers: Mapping[str, TensorInfo], file: Path) -> VAEConfig:
    """VAEConfig with the released structure and the file's base width / latent channels."""

    dim = _shape(headers, "encoder.conv1.weight", file)[0]
    z_dim = _shape(headers, "conv2.weight", file)[0]
    if z_dim == VAEConfig().z_dim:
        return VAEConfig(dim=dim)
    return VAEConfig(dim=dim, z_dim=z_dim, latent_mean=(0.0,) * z_dim, latent_std=(1.0,) * z_dim)


def infer_clip_config(visual: Mapping[str, TensorInfo], file: Path) -> CLIPVisualConfig:
    """CLIPVisualConfig from the visual tower's shapes (keys without the `visual.` prefix).

    The head count is not in any shape: it is width / 80, the head width of the released ViT-H/14.
    """

    dim, _, patch, _ = _shape(visual, "patch_embedding.weight", file)
    tokens = _shape(visual, "pos_embedding", file)[1]
    grid = round((tokens - 1) ** 0.5)
    if grid * grid + 1 != tokens:
        raise CheckpointError(file, f"visual.pos_embedding has {tokens} positions, not a square grid + 1")
    hidden = _shape(visual, "transformer.0.mlp.0.weight", file)[0]
    out_dim = _shape(visual, "head", file)[1]
    if dim % CLIP_HEAD_DIM:
        raise CheckpointError(file, f"CLIP width {dim} is not a multiple of the ViT-H/14 head width "
                              f"{CLIP_HEAD_DIM}: cannot tell the head count (pass config=)")
    return CLIPVisualConfig(image_size=grid * patch, patch_size=patch, dim=dim, mlp_ratio=hidden / dim,
                            out_dim=out_dim, num_heads=dim // CLIP_HEAD_DIM,
                            num_layers=_count_indexed(visual, "transformer."))


def infer_t5_config(headers: Mapping[str, TensorInfo], file: Path) -> T5Config:
    """T5Config from the encoder's shapes (the relative-position table gives buckets x heads)."""

    vocab, dim = _shape(headers, "token_embedding.weight", file)
    dim_attn = _shape(headers, "blocks.0.attn.q.weight", file)[0]
    dim_ffn = _shape(headers, "blocks.0.ffn.fc1.weight", file)[0]
    buckets, heads = _shape(headers, "blocks.0.pos_embedding.embedding.weight", file)
    return T5Config(vocab_size=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=heads,
                    num_layers=_count_indexed(headers, "blocks."), num_buckets=buckets)


def _clip_keys(headers: Mapping[str, Any]) -> KeyMap:
    """The full open-clip file -> the visual tower's keys (`visual.` removed); the text tower is set aside."""
    visual, ignored, unexpected = split_clip_state_dict(dict(headers))
    keys = KeyMap(visual, prefix="visual.", unexpected=list(unexpected))
    n_text = sum(math.prod(_as_shape(headers[k])) for k in ignored)
    keys.info.append(f"text tower ignored knowingly: {len(ignored)} tensors, {n_text:,} parameters "
                     f"(textual.*, log_scale)")
    if not any(k.startswith("textual.") for k in ignored):
        keys.warnings.append("the file has no textual.* keys: not the full open-clip checkpoint the release ships")
    return keys


def _read_dit_shards(weights_dir: Path) -> FileTensors:
    ckpt = read_safetensors_index(weights_dir, DIT_STEM)
    headers, warnings = read_sharded_safetensors(ckpt)
    return FileTensors(Path(ckpt.description), headers, ckpt.shards, warnings, [f"{len(ckpt.shards)} shard(s)"])


def _read_pth(name: str) -> Callable[[Path], FileTensors]:
    def read(folder: Path) -> FileTensors:
        path = folder / name
        sd = read_pth(path)  # memory-mapped: shapes now, data only when loading
        return FileTensors(path, pth_headers(path, sd), sd)
    return read


def _dit_quantizers(config: DiTConfig, fp8: Fp8Plan) -> dict[str, Callable[[nn.Module], Any]]:
    return block_quantizers(fp8, config.num_layers)


# ------------------------------------------------------------------------------------------ wav2vec2

_W2V_PREFIX = "wav2vec2."
# Pretraining heads of Wav2Vec2ForPreTraining checkpoints; transformers drops them for Wav2Vec2Model.
_W2V_HEADS = ("quantizer.", "project_q.", "project_hid.", "lm_head.", "dropout_features.")
_W2V_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _read_wav2vec_config(folder: Path) -> Any:
    # transformers takes seconds to import: only when wav2vec2 is checked
    from transformers import Wav2Vec2Config

    if not folder.is_dir():
        raise CheckpointError(folder, "wav2vec2 folder not found")
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise CheckpointError(folder / name, "file not found (needed by the wav2vec2 feature path)")
    try:
        return Wav2Vec2Config.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise CheckpointError(folder / "config.json", f"invalid wav2vec2 config: {e}") from e


def _read_wav2vec_headers(folder: Path) -> FileTensors:
    """The weights' headers only: transformers loads them (`load_wav2vec`), not `load_plan`."""
    for name in _W2V_WEIGHTS:
        path = folder / name
        if path.is_file():
            return FileTensors(path, read_safetensors_header(path) if name.endswith(".safetensors")
                               else pth_headers(path))
    raise CheckpointError(folder, f"no wav2vec2 weights: expected one of {', '.join(_W2V_WEIGHTS)}")


def _normalise_wav2vec_key(key: str) -> str:
    """A checkpoint key as transformers 4.x maps it onto Wav2Vec2Model (prefix, old weight-norm names)."""
    if key.startswith(_W2V_PREFIX):
        key = key[len(_W2V_PREFIX):]
    if key.endswith(".weight_g"):
        key = key[: -len(".weight_g")] + ".parametrizations.weight.original0"
    elif key.endswith(".weight_v"):
        key = key[: -len(".weight_v")] + ".parametrizations.weight.original1"
    return key


def _wav2vec_keys(headers: Mapping[str, Any]) -> KeyMap:
    heads = [k for k in headers if k.startswith(_W2V_HEADS)]
    keys = KeyMap({_normalise_wav2vec_key(k): v for k, v in headers.items() if k not in heads})
    if heads:
        keys.info.append(f"pretraining heads ignored as transformers does: {len(heads)} tensors "
                         f"({', '.join(sorted({k.split('.')[0] for k in heads}))})")
    return keys


def _build_wav2vec(config: Any) -> nn.Module:
    # transformers takes seconds to import: only when wav2vec2 is checked
    from transformers import Wav2Vec2Model

    return Wav2Vec2Model(config)


# ------------------------------------------------------------------------------------------ the table

COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component("dit", (DIT_CONFIG, f"{DIT_STEM}*.safetensors"), read=_read_dit_shards, build=FlashTalkDiT,
              read_config=read_dit_config, quantize=_dit_quantizers, released=DiTConfig.flashtalk_14b()),
    Component("vae", (VAE_FILE,), read=_read_pth(VAE_FILE), build=WanVAE, infer_config=infer_vae_config,
              released=VAEConfig.released()),
    Component("clip_visual", (CLIP_FILE,), read=_read_pth(CLIP_FILE), build=CLIPVisual,
              infer_config=infer_clip_config, key_map=_clip_keys, released=VIT_H_14),
    Component("t5", (T5_FILE,), read=_read_pth(T5_FILE), build=T5Encoder, infer_config=infer_t5_config,
              released=UMT5_XXL),
    Component("wav2vec2", ("config.json", "preprocessor_config.json", " or ".join(_W2V_WEIGHTS)),
              read=_read_wav2vec_headers, build=_build_wav2vec, read_config=_read_wav2vec_config,
              key_map=_wav2vec_keys, folder="wav2vec",
              # Only used by spec-augment in training; its absence does not change inference.
              optional_keys={"masked_spec_embed": "masked_spec_embed absent (training-only parameter)"}),
)}
"""Every released module, one row each: adding a module is one row here plus its model code."""


def _component(name: str) -> Component:
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    return COMPONENTS[name]


def plan_from_headers(component: str, headers: Mapping[str, Any], file: str | Path = "<headers>",
                      config: Any = None) -> ModulePlan:
    """Size the module from a file's key -> shape (TensorInfo or tuple) map, build it on meta, compare keys.

    `component`: a COMPONENTS name ('dit' needs `config`: its size is in config.json). This is the pure part of
    verify/load, usable on a manifest as well as on real file headers.
    """
    return plan_headers(_component(component), headers, file, config)


def plan_release_component(component: str, folder: str | Path, config: Any = None) -> ModulePlan:
    """The plan of one COMPONENTS row from its folder (headers and memory maps only)."""
    return plan_component(_component(component), Path(folder), config)


def load_component(component: str, folder: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype | None = torch.bfloat16, *, config: Any = None,
                   fp8: Fp8Plan | None = None) -> nn.Module:
    """One COMPONENTS row loaded strictly: planned from headers, then streamed into the module on meta.

    fp8: a `quant.fp8.Fp8Plan` for a row with a quantisation plan (the DiT): the chosen blocks' linears are
    quantised each as soon as its tensors have arrived (the bf16 copy of the whole module is never held).
    """
    entry = _component(component)
    plan = plan_component(entry, Path(folder), config)
    finish = None
    if fp8 is not None:
        if entry.quantize is None:
            raise ValueError(f"{component} has no quantisation plan")
        finish = entry.quantize(plan.config, fp8)
    module = load_plan(plan, device, dtype, component, finish)
    if fp8 is not None and finish is not None:
        first, last = fp8.keep_bf16_blocks
        log.info(f"{component}_quantized", quantize="fp8", backend=fp8.backend, blocks=len(finish),
                 kept_bf16_first=first, kept_bf16_last=last)
    return module


# ------------------------------------------------------------------------------------------ loading


def load_dit(weights_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.bfloat16,
             *, config: DiTConfig | None = None, fp8: Fp8Plan | None = None) -> FlashTalkDiT:
    """FlashTalkDiT from config.json + the safetensors shards, strictly, shard by shard (fp8: load_component)."""
    return cast(FlashTalkDiT, load_component("dit", weights_dir, device, dtype, config=config, fp8=fp8))


def load_vae(weights_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.bfloat16,
             *, config: VAEConfig | None = None) -> WanVAE:
    """WanVAE from Wan2.1_VAE.pth (memory-mapped), strictly."""
    return cast(WanVAE, load_component("vae", weights_dir, device, dtype, config=config))


def load_clip_visual(weights_dir: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = torch.float16, *, config: CLIPVisualConfig | None = None) -> CLIPVisual:
    """CLIPVisual from the full open-clip file: its `visual.*` keys, strictly; the text tower is checked to be
    only `textual.*` / `log_scale` and skipped (logged); any other key is an error."""
    return cast(CLIPVisual, load_component("clip_visual", weights_dir, device, dtype, config=config))


def load_t5(weights_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.bfloat16,
            *, config: T5Config | None = None) -> T5Encoder:
    """T5Encoder from models_t5_umt5-xxl-enc-bf16.pth (memory-mapped), strictly."""
    return cast(T5Encoder, load_component("t5", weights_dir, device, dtype, config=config))


def load_umt5_tokenizer(weights_dir: str | Path, text_len: int = 512) -> UMT5Tokenizer:
    """The umT5 tokenizer from the release's google/umt5-xxl folder (offline)."""

    return UMT5Tokenizer(Path(weights_dir) / T5_TOKENIZER_DIR, text_len)


def load_wav2vec(wav2vec_dir: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(Wav2Vec2Model, Wav2Vec2FeatureExtractor): keys and shapes checked strictly against the folder's
    config first (missing or wrongly shaped keys are errors), then loaded through transformers offline."""

    folder = Path(wav2vec_dir)
    plan = plan_release_component("wav2vec2", folder)
    plan.report.raise_for(plan.file, "wav2vec2")
    for line in plan.info + plan.warnings:
        log.info("wav2vec2_checkpoint_note", file=str(plan.file), detail=line)
    try:
        return load_wav2vec2(folder, device=device, dtype=dtype)
    except Wav2Vec2LoadError as e:
        raise CheckpointError(folder, str(e)) from e


# ------------------------------------------------------------------------------------------ verify


@dataclass
class ComponentReport:
    """One file (or file set) of the release, checked from headers."""

    name: str
    path: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    tensors: int = 0
    params: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    config: Any = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ReleaseReport:
    weights_dir: Path
    wav2vec_dir: Path | None
    components: list[ComponentReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # release-wide (cross-module) problems
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.components)

    def component(self, name: str) -> ComponentReport:
        return next(c for c in self.components if c.name == name)

    def format(self, limit: int = 20) -> str:
        out = [f"release {self.weights_dir}" + (f" + {self.wav2vec_dir}" if self.wav2vec_dir else "")]
        for c in self.components:
            dt = ", ".join(f"{k} x{v}" for k, v in sorted(c.dtypes.items()))
            size = f"{c.tensors} tensors, {c.params:,} params" + (f" [{dt}]" if dt else "") if c.tensors else ""
            out.append(f"  {'OK  ' if c.ok else 'FAIL'} {c.name:12s} {c.path}" + (f"  ({size})" if size else ""))
            for line in c.info:
                out.append(f"         {line}")
            for line in c.warnings:
                out.append(f"         warning: {line}")
            for line in c.problems[:limit]:
                out.append(f"         {line}")
            if len(c.problems) > limit:
                out.append(f"         ... and {len(c.problems) - limit} more ({len(c.problems)} in all)")
        for line in self.warnings:
            out.append(f"  warning: {line}")
        for line in self.problems:
            out.append(f"  FAIL {line}")
        out.append("OK: every file matches its module" if self.ok else "FAILED: the release does not load strictly")
        return "\n".join(out)


def _error_lines(e: CheckpointError) -> list[str]:
    return [f"{e.file}: {e.problem}"] + [f"  {d}" for d in e.details]


def _size_differences(released: Any, cfg: Any) -> list[str]:
    """'field ours (released X)' for every architecture field that is not the released value (none: unchecked)."""
    if released is None:
        return []
    return [f"{f.name} {getattr(cfg, f.name)} (released {getattr(released, f.name)})" for f in fields(released)
            if f.name not in ("latent_mean", "latent_std") and getattr(cfg, f.name) != getattr(released, f.name)]


def _check_component(report: ReleaseReport, entry: Component, folder: Path) -> ModulePlan | None:
    comp = ComponentReport(entry.name, entry.path(folder))
    report.components.append(comp)
    try:
        plan = plan_component(entry, folder)
    except CheckpointError as e:
        comp.problems = _error_lines(e)
        return None
    comp.tensors, comp.params, comp.dtypes = header_stats(plan.headers)
    comp.config = plan.config
    comp.warnings += plan.warnings
    comp.info += plan.info
    if not plan.report.ok:
        comp.problems.append(f"{plan.file}: {plan.report.summary()}")
        comp.problems += [f"  {line}" for line in plan.report.lines()]
    diff = _size_differences(entry.released, plan.config)
    if diff:
        comp.warnings.append("not the released size: " + ", ".join(diff))
    return plan


def _check_tokenizer(report: ReleaseReport, weights_dir: Path, sub: str) -> None:
    folder = weights_dir / sub
    comp = ComponentReport(f"tokenizer:{sub.split('/')[-1]}", folder)
    report.components.append(comp)
    if not folder.is_dir():
        comp.problems.append(f"{folder}: tokenizer folder not found")
        return
    files = _TOKENIZER_FILES[sub]
    if not any((folder / f).is_file() for f in files):
        comp.problems.append(f"{folder}: none of {', '.join(files)} found")


def verify_release(weights_dir: str | Path, wav2vec_dir: str | Path | None = None) -> ReleaseReport:
    """Check every file of a release against the modules built on meta, from headers / memory maps only
    (nothing is loaded to a GPU, no tensor data is read). Never raises for a bad release: read `.ok`."""
    weights = Path(weights_dir)
    report = ReleaseReport(weights, Path(wav2vec_dir) if wav2vec_dir else None)
    if not weights.is_dir():
        report.problems.append(f"{weights}: folder not found")
        return report
    plans: dict[str, ModulePlan | None] = {}
    for entry in COMPONENTS.values():
        if entry.folder == "weights":
            plans[entry.name] = _check_component(report, entry, weights)
    for sub in (T5_TOKENIZER_DIR, CLIP_TOKENIZER_DIR):
        _check_tokenizer(report, weights, sub)
    for entry in COMPONENTS.values():
        if entry.folder != "wav2vec":
            continue
        if report.wav2vec_dir is None:
            report.warnings.append(f"{entry.name} folder not checked (none given, no {WAV2VEC_DIR} beside the weights)")
        else:
            plans[entry.name] = _check_component(report, entry, report.wav2vec_dir)
    _cross_check(report, {k: p.config for k, p in plans.items() if p is not None})
    return report


def _cross_check(report: ReleaseReport, cfg: dict[str, Any]) -> None:
    """The modules must fit each other: widths the DiT takes from CLIP, T5, the VAE and wav2vec2."""
    dit = cfg.get("dit")
    if dit is None:
        return
    checks = []
    if "clip_visual" in cfg:
        checks.append(("DiT clip_dim", dit.clip_dim, "CLIP width", cfg["clip_visual"].dim))
    if "t5" in cfg:
        checks.append(("DiT text_dim", dit.text_dim, "T5 width", cfg["t5"].dim))
    if "vae" in cfg:
        z = cfg["vae"].z_dim
        checks.append(("DiT out_dim", dit.out_dim, "VAE z_dim", z))
        checks.append(("DiT in_dim", dit.in_dim, "out_dim + 4 mask + VAE z_dim", dit.out_dim + 4 + z))
    if "wav2vec2" in cfg:
        w = cfg["wav2vec2"]
        checks.append(("DiT audio_layers", dit.audio_layers, "wav2vec2 layers", w.num_hidden_layers))
        checks.append(("DiT audio_channels", dit.audio_channels, "wav2vec2 hidden size", w.hidden_size))
    for a, va, b, vb in checks:
        if va != vb:
            report.problems.append(f"modules do not fit: {a} {va} != {b} {vb}")
