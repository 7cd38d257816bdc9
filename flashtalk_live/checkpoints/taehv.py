"""The tiny decoder's released file (taew2_1, .safetensors or .pth): check and load it strictly.

Upstream (github.com/madebyollin/taehv) keeps the `.pth` files at the repository root and the converted
`.safetensors` under `safetensors/`; `models download --only taehv` fetches `safetensors/taew2_1.safetensors`, so
the file lands in `taehv/safetensors/`, and `find_taehv_file` looks there as well as in the folder itself.
LightX2V's `lighttaew2_1` has the same layout but is trained on un-normalised latents (LightX2V applies the Wan
latent mean/std before decoding it); our engine feeds TAEHV the normalised latents, which would air wrong colours,
and no golden pair from LightX2V's code exists here to check an un-scaling against: such a file is refused.

A released file holds the whole TAEHV autoencoder. Its `decoder.*` tensors must fit `TAEHVDecoder` exactly
(missing, unexpected and wrongly shaped keys are errors naming the file and the keys); its `encoder.*`
tensors are skipped on purpose (the engine encodes motion frames with the Wan VAE) and only counted in the
plan's info. Any other key is unexpected.

One shape difference is allowed, as the reference's `patch_tgrow_layers` allows it: a temporal-grow conv
(`decoder.{7,13,19}.conv.weight`) with more output channels than the module's (a file trained with a
temporal upscale where this decoder has none) keeps only its LAST output channels, the last time step's.

`random_fixture_weights` is the parity fixture's weight recipe (config.json `weights`), so the fixture
folder need not carry its 20 MB of random weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flashtalk_live.log import get_logger
from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder, TemporalGrow

from .loader import CheckpointError, TensorInfo, compare_keys, iter_pth, iter_safetensors, load_into
from .loader import pth_headers, read_pth, read_safetensors_header
from .release import ModulePlan


@dataclass
class TAEHVPlan(ModulePlan):
    """A ModulePlan plus the temporal-grow convs to cut: key -> output channels kept (the last ones)."""

    slices: dict[str, int] = field(default_factory=dict)

__all__ = ["TAEHV_DIR", "TAEHV_FILE", "TAEHV_REPO", "TAEHV_REPO_PATH", "TAEHVPlan",
           "find_taehv_file", "load_taehv", "plan_taehv", "plan_taehv_from_headers",
           "random_fixture_weights"]

log = get_logger("checkpoints")

TAEHV_REPO, TAEHV_FILE = "madebyollin/taehv", "taew2_1.safetensors"  # MIT
TAEHV_REPO_PATH = f"safetensors/{TAEHV_FILE}"  # where upstream keeps the converted file
LIGHTTAE_PREFIX = "lighttae"  # LightX2V's distilled files: un-normalised latents, refused (module docstring)
TAEHV_DIR = "taehv"  # the sub-folder `models download --only taehv` fills, beside SoulX-FlashTalk-14B
_DECODER, _ENCODER = "decoder.", "encoder."


def _tgrow_keys(module: TAEHVDecoder) -> set[str]:
    return {f"decoder.{i}.conv.weight" for i, layer in enumerate(module.decoder) if isinstance(layer, TemporalGrow)}


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v))


def _infer_config(headers: Mapping[str, Any], file: Path) -> TAEHVConfig:
    """Latent and stage widths from the file's conv shapes; the time/space layout is taew2_1's."""
    need = ("decoder.1.weight", "decoder.8.weight", "decoder.14.weight", "decoder.20.weight")
    missing = [k for k in need if k not in headers]
    if missing:
        raise CheckpointError(file, "cannot size the TAEHV decoder: not a TAEHV file?",
                              [f"missing key: {k}" for k in missing])
    c0, latent = _shape(headers[need[0]])[:2]
    c1, c2, c3 = (_shape(headers[k])[0] for k in need[1:])
    return TAEHVConfig(latent_channels=latent, channels=(c0, c1, c2, c3))


def plan_taehv_from_headers(headers: Mapping[str, Any], file: str | Path = "<headers>",
                            config: TAEHVConfig | None = None) -> TAEHVPlan:
    """Key -> shape (or TensorInfo) of a released file -> the decoder on meta, keys compared, encoder set aside.

    `plan.headers` holds the decoder keys the module takes; `plan.slices` the temporal-grow convs to cut.
    """
    file = Path(file)
    decoder = {k: v for k, v in headers.items() if k.startswith(_DECODER)}
    encoder = [k for k in headers if k.startswith(_ENCODER)]
    other = [k for k in headers if not k.startswith((_DECODER, _ENCODER))]
    cfg = config or _infer_config(decoder, file)
    with torch.device("meta"):
        module = TAEHVDecoder(cfg)
    want = module.state_dict()
    shapes = {k: _shape(v) for k, v in decoder.items()}
    slices: dict[str, int] = {}
    info = []
    for key in sorted(_tgrow_keys(module) & shapes.keys()):
        have, need = shapes[key], tuple(want[key].shape)
        if have != need and len(have) == 4 and have[1:] == need[1:] and have[0] > need[0] and have[0] % need[0] == 0:
            slices[key] = need[0]
            shapes[key] = need
            info.append(f"{key}: file {list(have)}, last {need[0]} output channels kept (temporal grow rule)")
    report = compare_keys(module, shapes)
    report.unexpected += other
    if encoder:
        n = sum(math.prod(_shape(headers[k])) for k in encoder)
        info.append(f"encoder ignored knowingly: {len(encoder)} tensors, {n:,} parameters (encoder.*)")
    return TAEHVPlan(file, module, {k: decoder[k] for k in shapes if k in want}, report, cfg, info=info,
                     slices=slices)


def plan_taehv(path: str | Path, config: TAEHVConfig | None = None) -> TAEHVPlan:
    """Plan from a released file's header (.safetensors) or memory map (.pth): no tensor data read."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        headers: dict[str, TensorInfo] = read_safetensors_header(path)
        source: Any = [path]
    elif path.suffix in (".pth", ".pt"):
        source = read_pth(path)
        headers = pth_headers(path, source)
    else:
        raise CheckpointError(path, "the tiny decoder file must be .safetensors or .pth")
    plan = plan_taehv_from_headers(headers, path, config)
    plan.source = source
    return plan


def find_taehv_file(path: str | Path | None, weights_dir: str | Path | None) -> Path:
    """The tiny decoder's file: `path` when set (a file, or a folder holding taew2_1 itself or under
    safetensors/), else the `taehv/` folder `models download` fills beside (or inside) the weights folder."""
    names = (TAEHV_FILE, TAEHV_REPO_PATH, "taew2_1.pth")
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            found = [p / n for n in names if (p / n).is_file()]
            if not found:
                raise CheckpointError(p, f"no tiny decoder file in this folder (expected {' or '.join(names)})")
            return found[0]
        if p.name.lower().startswith(LIGHTTAE_PREFIX):
            raise CheckpointError(p, "LightTAE files (lighttaew2_1) decode un-normalised latents (LightX2V's "
                                  "convention) and would air wrong colours here; use taew2_1 from madebyollin/taehv "
                                  "(`flashtalk-live models download DIR --only taehv`)")
        return p
    if weights_dir is None:
        raise CheckpointError("<model.taehv_path>", "the tiny decoder's file is not set (model.taehv_path)")
    w = Path(weights_dir).expanduser()
    folders = [w / TAEHV_DIR, w.parent / TAEHV_DIR]
    for folder in folders:
        for n in names:
            if (folder / n).is_file():
                return folder / n
    raise CheckpointError(folders[0], f"no tiny decoder file found (looked for {' or '.join(names)} in "
                          f"{' and '.join(str(f) for f in folders)}): run `flashtalk-live models download DIR "
                          "--only taehv` or set model.taehv_path")


def _tensors(plan: TAEHVPlan, device: str | torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    keys = list(plan.headers)
    raw = iter_safetensors(plan.source, device, keys) if isinstance(plan.source, list) else iter_pth(plan.source, keys)
    for k, t in raw:
        yield k, (t[-plan.slices[k]:] if k in plan.slices else t)


def load_taehv(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float16,
               *, config: TAEHVConfig | None = None) -> TAEHVDecoder:
    """TAEHVDecoder from a released taew2_1 file, strictly (see the module docstring)."""
    plan = plan_taehv(path, config)
    plan.report.raise_for(plan.file, "tiny decoder (TAEHV)")
    for line in plan.info:
        log.info("taehv_checkpoint_note", file=str(plan.file), detail=line)
    module = load_into(plan.module, _tensors(plan, device), dtype=dtype, device=device, file=plan.file)
    log.info("checkpoint_loaded", module="taehv", file=str(plan.file), tensors=len(plan.headers),
             dtype=str(dtype).removeprefix("torch.") if dtype else "as stored", device=str(device))
    assert isinstance(module, TAEHVDecoder)  # plan_taehv built one; load_state_dict(assign=True) keeps the class
    return module


def random_fixture_weights(config: TAEHVConfig | None = None, seed: int = 2026) -> dict[str, torch.Tensor]:
    """The parity fixture's random decoder, float16, drawn exactly as its config.json says.

    In state_dict() order from one generator: kernels N(0, 1/fan_in) with fan_in = in_channels x kh x kw,
    1-D tensors N(0, 0.05^2); the last conv's weight x 0.8 and bias + 0.5 (a mid-grey, visible output).
    """
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in TAEHVDecoder(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        std = 1 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else 0.05
        out[k] = torch.randn(shape, generator=g) * std
    last = max((k for k in shapes if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    out[last] = out[last] * 0.8
    out[last.replace(".weight", ".bias")] = out[last.replace(".weight", ".bias")] + 0.5
    return {k: v.half() for k, v in out.items()}
