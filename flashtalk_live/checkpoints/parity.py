"""Numerical parity against golden fixtures: run every check found in a folder laid out like the parity set.

The folder holds one sub-folder per module (`dit/`, `vae/`, `clip_visual/`, `t5/`, `audio/`, `colour/`,
`taehv/`, and `chunk/`), with the fixture README's file and tensor names. Each registered check reads its
sub-folder, runs our implementation in float32 and yields one row per case: module, case, max abs error,
relative L2 error, tolerance, result. An absent folder or file is skipped and said so.

Other parts add checks with `register_check(name, fn, folder=...)`; modules named in `PLUGIN_MODULES` are
imported (when installed) before a run so their registrations happen. A check function takes a
`CheckContext` and yields `CheckRow`s (usually through `ctx.compare`); it raises `SkipCheck` to skip.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from .loader import compare_keys, load_into, read_safetensors_header
from .taehv import load_taehv, random_fixture_weights
from flashtalk_live.model.audio import AudioFeatureConfig, StreamingAudioEncoder, encode_audio, load_wav2vec2, pad_for_once
from flashtalk_live.model.clip import CLIPVisual, CLIPVisualConfig, preprocess_images, split_clip_state_dict
from flashtalk_live.model.colour import match_and_blend_colors
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.model.t5 import T5Config, T5Encoder
from flashtalk_live.model.taehv import TAEHVDecoder
from flashtalk_live.model.taehv import TAEHVStream
from flashtalk_live.model.vae import VAEConfig, WanVAE
from safetensors import safe_open
from safetensors.torch import load_file

__all__ = [
    "CheckContext",
    "CheckRow",
    "PLUGIN_MODULES",
    "ParityReport",
    "SINGLE_MODULE_TOL",
    "SkipCheck",
    "compare_tensors",
    "register_check",
    "registered_checks",
    "run_parity",
    "unregister_check",
]

# Fixture README, "Suggested comparison tolerances": single-module fixtures in float32.
SINGLE_MODULE_TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}

# Modules that register more checks when imported (missing ones are fine: a partial install still runs).
PLUGIN_MODULES = ("flashtalk_live.engine.parity",)


class SkipCheck(Exception):
    """Raised by a check when what it needs is absent; the message says what."""


@dataclass
class CheckRow:
    module: str
    case: str
    status: str  # pass | fail | skip | error
    max_abs: float | None = None
    rel_l2: float | None = None
    tol_max_abs: float | None = None
    tol_rel_l2: float | None = None
    note: str = ""
    seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")


def compare_tensors(got: Any, want: torch.Tensor) -> tuple[float, float]:
    """(max abs error, relative L2 error) computed in float64; shapes must match exactly."""
    got = torch.as_tensor(got).detach().cpu()
    want = torch.as_tensor(want).detach().cpu()
    if tuple(got.shape) != tuple(want.shape):
        raise ValueError(f"shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    g, w = got.double(), want.double()
    diff = g - w
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    denom = w.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else (0.0 if diff.norm().item() == 0 else math.inf)
    if not (math.isfinite(max_abs) and math.isfinite(rel)):
        max_abs, rel = math.inf, math.inf  # NaN/inf in the output is a failure, never a pass
    return max_abs, rel


@dataclass
class CheckContext:
    """What a check gets: its fixture folder and helpers to read files and compare tensors."""

    root: Path
    folder: Path
    module: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def path(self, name: str) -> Path:
        p = self.folder / name
        if not p.exists():
            raise SkipCheck(f"{p.relative_to(self.root)} absent")
        return p

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path(name)))

    def metadata(self, name: str) -> dict[str, str]:
        with safe_open(str(self.path(name)), framework="pt") as f:
            return dict(f.metadata() or {})

    def json(self, name: str = "config.json") -> dict[str, Any]:
        return json.loads(self.path(name).read_text())

    def compare(self, case: str, got: Any, want: torch.Tensor, *, max_abs: float | None = SINGLE_MODULE_TOL["max_abs"],
                rel_l2: float | None = SINGLE_MODULE_TOL["rel_l2"], note: str = "") -> CheckRow:
        """A row for one comparison: pass when every given tolerance holds (None: not checked)."""
        try:
            mx, rel = compare_tensors(got, want)
        except ValueError as e:
            return CheckRow(self.module, case, "fail", tol_max_abs=max_abs, tol_rel_l2=rel_l2, note=str(e))
        ok = (max_abs is None or mx <= max_abs) and (rel_l2 is None or rel <= rel_l2)
        return CheckRow(self.module, case, "pass" if ok else "fail", mx, rel, max_abs, rel_l2, note)


CheckFn = Callable[[CheckContext], Iterable[CheckRow]]


@dataclass
class _Check:
    name: str
    folder: str
    fn: CheckFn


_REGISTRY: dict[str, _Check] = {}


def register_check(name: str, fn: CheckFn, *, folder: str | None = None) -> None:
    """Add (or replace) a check run on `<DIR>/<folder>` (default: `name`). Checks run in registration order."""
    if not name or not callable(fn):
        raise ValueError("register_check needs a name and a callable")
    _REGISTRY[name] = _Check(name, folder or name, fn)


def unregister_check(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered_checks() -> list[str]:
    return list(_REGISTRY)


@dataclass
class ParityReport:
    root: Path
    rows: list[CheckRow]

    @property
    def failed(self) -> list[CheckRow]:
        return [r for r in self.rows if r.failed]

    @property
    def ran(self) -> list[CheckRow]:
        return [r for r in self.rows if r.status in ("pass", "fail")]

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.ran)

    def format(self) -> str:
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.3e}"

        def tol(r: CheckRow) -> str:
            parts = []
            if r.tol_max_abs is not None:
                parts.append(f"abs<={r.tol_max_abs:.0e}")
            if r.tol_rel_l2 is not None:
                parts.append(f"rel<={r.tol_rel_l2:.0e}")
            return " ".join(parts) or "-"

        head = f"{'module':12s} {'case':28s} {'max_abs':>10s} {'rel_l2':>10s}  {'tolerance':22s} result"
        lines = [f"parity fixtures in {self.root}", head, "-" * len(head)]
        for r in self.rows:
            result = r.status.upper() if r.failed else r.status
            note = f"  ({r.note})" if r.note else ""
            lines.append(f"{r.module:12s} {r.case:28s} {num(r.max_abs):>10s} {num(r.rel_l2):>10s}  {tol(r):22s} "
                         f"{result}{note}")
        n = {s: sum(r.status == s for r in self.rows) for s in ("pass", "fail", "error", "skip")}
        lines.append(f"{n['pass']} passed, {n['fail']} failed, {n['error']} errors, {n['skip']} skipped")
        if not self.ran:
            lines.append("nothing was checked: is this a parity fixture folder?")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"root": str(self.root), "ok": self.ok, "rows": [asdict(r) for r in self.rows]}, indent=2)


def load_plugins() -> list[str]:
    """Import PLUGIN_MODULES; returns 'module: error' for each one that is present but fails to import."""
    errors = []
    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):  # the plugin exists but lacks a dependency
                errors.append(f"{name}: {type(e).__name__}: {e}")
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}: {e}")
    return errors


def run_parity(root: str | Path, only: Iterable[str] | None = None, device: str | torch.device = "cpu",
               progress: Callable[[CheckRow], None] | None = None) -> ParityReport:
    """Run every registered check (or those in `only`) on the fixture folder `root`."""
    plugin_errors = load_plugins()
    root = Path(root)
    wanted = None if only is None else list(only)
    if wanted:
        unknown = [n for n in wanted if n not in _REGISTRY]
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; known: {registered_checks()}")
    rows: list[CheckRow] = []

    def emit(row: CheckRow) -> None:
        rows.append(row)
        if progress:
            progress(row)

    if not root.is_dir():
        raise FileNotFoundError(f"parity fixture folder not found: {root}")
    for err in plugin_errors:
        emit(CheckRow("plugin", "import", "error", note=err))
    for check in list(_REGISTRY.values()):
        if wanted is not None and check.name not in wanted:
            continue
        folder = root / check.folder
        if not folder.is_dir():
            emit(CheckRow(check.name, "*", "skip", note=f"{check.folder}/ absent"))
            continue
        ctx = CheckContext(root, folder, check.name, torch.device(device))
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                for row in check.fn(ctx):
                    row.seconds = time.perf_counter() - t0
                    emit(row)
                    t0 = time.perf_counter()
        except SkipCheck as e:
            emit(CheckRow(check.name, "*", "skip", note=str(e)))
        except Exception as e:  # a crash in a check is a failure with its reason, not a traceback
            emit(CheckRow(check.name, "*", "error", note=f"{type(e).__name__}: {e}"))
    if wanted is None and any(r.status != "skip" for r in rows):  # a fixture folder: name what we cannot check
        known = {c.folder for c in _REGISTRY.values()}
        for sub in sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in known):
            emit(CheckRow(sub, "*", "skip", note=f"{sub}/ present but no check is registered for it"))
    return ParityReport(root, rows)


# ------------------------------------------------------------------------------------------ built-in checks


def _load_weights(ctx: CheckContext, factory: Callable[[], torch.nn.Module], name: str = "weights.safetensors",
                  transform: Callable[[dict], dict] | None = None) -> torch.nn.Module:
    """Build on meta and load the fixture weights through the same strict loader as the release."""

    path = ctx.path(name)
    read_safetensors_header(path)
    with torch.device("meta"):
        module = factory()
    sd = ctx.tensors(name)
    if transform is not None:
        sd = transform(sd)
    return load_into(module, sd, dtype=torch.float32, device=ctx.device, file=path)


def check_dit(ctx: CheckContext) -> Iterator[CheckRow]:
    cfg = DiTConfig.from_dict(ctx.json())
    model = _load_weights(ctx, lambda: FlashTalkDiT(cfg))
    inp = ctx.tensors("inputs.safetensors")
    seq_len = int(ctx.metadata("inputs.safetensors").get("seq_len", 0)) or None
    dev = ctx.device
    for case in ("case_a", "case_b"):
        if not (ctx.folder / f"{case}.safetensors").is_file():
            yield CheckRow("dit", case, "skip", note=f"dit/{case}.safetensors absent")
            continue
        c = ctx.tensors(f"{case}.safetensors")
        # The pipeline's call, model([x], t, [context], clip_fea, [y], audio, seq_len)[0], as batched tensors.
        out = model(c["x"][None].to(dev), c["t"].to(dev), inp["context"][None].to(dev), inp["clip_fea"].to(dev),
                    inp["y"][None].to(dev), inp["audio"].to(dev), seq_len=seq_len)[0]
        yield ctx.compare(f"{case} out", out, c["out"])


def check_vae(ctx: CheckContext) -> Iterator[CheckRow]:
    cfg = VAEConfig.from_reference_kwargs(ctx.json()["constructor_kwargs"])
    vae = _load_weights(ctx, lambda: WanVAE(cfg))
    io = {k: v.to(ctx.device) for k, v in ctx.tensors("io.safetensors").items()}
    yield ctx.compare("encode mu_raw", vae.encode(io["video"], scaled=False)[0], io["mu_raw"])
    yield ctx.compare("encode latents", vae.encode(io["video"])[0], io["latents"])
    yield ctx.compare("decode", vae.decode(io["latents"][None]), io["decoded"])
    yield ctx.compare("decode unclamped", vae.decode(io["latents"][None], clamp=False), io["decoded_unclamped"])
    if "clip5" in io:
        yield ctx.compare("motion_clip encode", vae.encode_motion(io["clip5"], motion_frames=5)[0],
                          io["clip5_latents"])
        yield ctx.compare("motion_clip decode", vae.decode(io["clip5_latents"][None]), io["clip5_decoded"])


def check_clip_visual(ctx: CheckContext) -> Iterator[CheckRow]:
    vt = ctx.json()["visual_tower"]
    cfg = CLIPVisualConfig(image_size=vt["image_size"], patch_size=vt["patch_size"], dim=vt["dim"],
                           mlp_ratio=vt["mlp_ratio"], out_dim=vt["out_dim"], num_heads=vt["num_heads"],
                           num_layers=vt["num_layers"], norm_eps=vt.get("norm_eps", 1e-5))

    def visual_only(sd: dict) -> dict:
        visual, _ignored, unexpected = split_clip_state_dict(sd)
        if unexpected:
            raise ValueError(f"clip_visual weights hold keys outside visual./textual.: {unexpected[:5]}")
        return visual

    model = _load_weights(ctx, lambda: CLIPVisual(cfg), transform=visual_only)
    io = {k: v.to(ctx.device) for k, v in ctx.tensors("io.safetensors").items()}
    yield ctx.compare("preprocess", preprocess_images(io["image"], cfg.image_size), io["preprocessed"])
    yield ctx.compare("features (31 of 32 blocks)", model.encode(io["image"]), io["features"])
    yield ctx.compare("all blocks", model(io["preprocessed"], use_31_block=False), io["all_blocks_no_post_norm"])


def check_t5(ctx: CheckContext) -> Iterator[CheckRow]:
    ov = ctx.json()["overrides"]
    if ov.get("shared_pos", False):
        raise ValueError("t5 fixture uses a shared position table; the umT5 encoder has one per layer")
    cfg = T5Config(vocab_size=ov["vocab_size"], dim=ov["dim"], dim_attn=ov["dim_attn"], dim_ffn=ov["dim_ffn"],
                   num_heads=ov["num_heads"], num_layers=ov["encoder_layers"], num_buckets=ov["num_buckets"])
    model = _load_weights(ctx, lambda: T5Encoder(cfg))
    io = {k: v.to(ctx.device) for k, v in ctx.tensors("io.safetensors").items()}
    yield ctx.compare("block0 position bias", model.blocks[0].position_bias(io["ids"].shape[1]),
                      io["block0_pos_bias"])
    yield ctx.compare("hidden (padded)", model(io["ids"], io["mask"]), io["hidden_full"])
    (context,) = model.encode(io["ids"], io["mask"])
    yield ctx.compare("context (trimmed)", context, io["context"])


def check_audio(ctx: CheckContext) -> Iterator[CheckRow]:
    c = ctx.json()
    cfg = AudioFeatureConfig(sample_rate=c["sample_rate"], fps=c["fps"], frame_num=c["frame_num"],
                             motion_frames=c["motion_frames_num"], target_lufs=c["lufs_target"],
                             window_offsets=tuple(c["window_offsets"]))
    model, extractor = load_wav2vec2(ctx.path("wav2vec2_tiny"), device=ctx.device)
    io = ctx.tensors("io.safetensors")
    wav = io["waveform"].numpy()
    if "once_windows" in io:
        windows = encode_audio(model, extractor, pad_for_once(wav, cfg), cfg=cfg)
        yield ctx.compare("once windows", windows, io["once_windows"])
    enc = StreamingAudioEncoder(model, extractor, cfg)
    k = 0
    while f"stream_chunk{k}_windows" in io:
        out = enc.push(wav[k * cfg.slice_samples:(k + 1) * cfg.slice_samples])
        yield ctx.compare(f"stream chunk{k} windows", out, io[f"stream_chunk{k}_windows"])
        k += 1


def check_colour(ctx: CheckContext) -> Iterator[CheckRow]:
    io = {k: v.to(ctx.device) for k, v in ctx.tensors("io.safetensors").items()}
    for strength, key in ((1.0, "out_strength_1_0"), (0.5, "out_strength_0_5")):
        if key in io:
            yield ctx.compare(f"strength {strength}", match_and_blend_colors(io["source"], io["reference"], strength),
                              io[key])


# TAEHV fixture README: "Suggested tolerance: relative L2 1e-5, max abs 1e-5" (outputs in [0, 1]).
TAEHV_TOL = {"max_abs": 1e-5, "rel_l2": 1e-5}


def _taehv_weights(ctx: CheckContext):
    """The fixture decoder: from weights.safetensors through the release loader when the folder holds it,
    else drawn again from config.json's recipe and checked against manifest.json (keys and shapes)."""

    if (ctx.folder / "weights.safetensors").is_file():
        return load_taehv(ctx.folder / "weights.safetensors", ctx.device, torch.float32), "weights.safetensors"
    sd = random_fixture_weights(seed=int(ctx.json()["weight_seed"]))
    manifest = ctx.path("manifest.json")
    compare_keys(json.loads(manifest.read_text())["tensors"], sd).raise_for(manifest, "drawn fixture weights")
    with torch.device("meta"):
        module = TAEHVDecoder()
    return load_into(module, sd, dtype=torch.float32, device=ctx.device, file=manifest), "drawn (manifest.json)"


def check_taehv(ctx: CheckContext) -> Iterator[CheckRow]:
    model, source = _taehv_weights(ctx)
    io = {k: v.to(ctx.device) for k, v in ctx.tensors("io.safetensors").items()}
    tol: dict[str, Any] = dict(max_abs=TAEHV_TOL["max_abs"], rel_l2=TAEHV_TOL["rel_l2"], note=f"weights: {source}")
    yield ctx.compare("decode parallel", model.decode(io["latents"], parallel=True), io["decoded_parallel"], **tol)
    yield ctx.compare("decode sequential", model.decode(io["latents"], parallel=False), io["decoded_sequential"],
                      **tol)
    first = int(ctx.json().get("streaming_feed", [1])[0])
    stream = TAEHVStream(model)
    stream.push(io["latents"][:, :first])
    frames = [stream.drain()]
    stream.push(io["latents"][:, first:])
    frames.append(stream.drain())
    yield ctx.compare("decode streaming", torch.cat(frames, 1), io["decoded_streaming"], **tol)


register_check("dit", check_dit)
register_check("vae", check_vae)
register_check("clip_visual", check_clip_visual)
register_check("t5", check_t5)
register_check("audio", check_audio)
register_check("colour", check_colour)
register_check("taehv", check_taehv)
