"""Generic strict checkpoint reading: file headers, key/shape comparison, and streaming assignment into a meta module.

Nothing here knows a particular model: a released module is a `Component` row (release.COMPONENTS), and
`plan_component` / `load_plan` walk it. The flow every loader follows:

1. read the file headers only (`read_safetensors_header`, `read_sharded_safetensors`, `pth_headers`),
2. `compare_keys(module_on_meta, headers)` and raise a `CheckpointError` naming the file and every bad key,
3. `load_into(module_on_meta, tensor_iterator, dtype, device)`: tensors are read one at a time (shard by
   shard), moved to the target device/dtype as they are read and assigned with
   `load_state_dict(strict=True, assign=True)`, so the model is never held twice.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from safetensors import safe_open

from flashtalk_live.log import get_logger

__all__ = [
    "CheckpointError",
    "Component",
    "FileTensors",
    "KeyMap",
    "KeyReport",
    "ModulePlan",
    "ShardedSafetensors",
    "TensorInfo",
    "compare_keys",
    "expected_shapes",
    "format_keys",
    "header_stats",
    "iter_pth",
    "iter_safetensors",
    "load_into",
    "load_plan",
    "plan_component",
    "plan_headers",
    "pth_headers",
    "read_pth",
    "read_safetensors_header",
    "read_safetensors_index",
    "read_sharded_safetensors",
    "same_keys",
]

log = get_logger("checkpoints")

MAX_LISTED = 20  # keys named in one error message; the count covers the rest


def format_keys(keys: Sequence[str], limit: int = MAX_LISTED) -> str:
    """'a, b, c' or 'a, b, ... (+N more)'."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the module; the message names file and keys."""

    def __init__(self, file: str | Path, problem: str, details: Sequence[str] = ()) -> None:
        self.file = str(file)
        self.problem = problem
        self.details = list(details)
        msg = f"{self.file}: {problem}"
        if self.details:
            lines = self.details[:MAX_LISTED]
            more = len(self.details) - len(lines)
            msg += "\n  " + "\n  ".join(lines)
            if more:
                msg += f"\n  ... and {more} more ({len(self.details)} in all)"
        super().__init__(msg)


@dataclass(frozen=True)
class TensorInfo:
    """What a file header says about one tensor."""

    shape: tuple[int, ...]
    dtype: str  # torch-style name: 'bfloat16', 'float32', ...
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


# ------------------------------------------------------------------------------------------ key comparison


@dataclass
class KeyReport:
    """Differences between a module's state dict and a file's tensors, every key by name."""

    missing: list[str] = field(default_factory=list)  # in the module, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the module
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, module, file
    where: dict[str, str] = field(default_factory=dict)  # file key -> the file holding it (sharded checkpoints)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.misshaped)

    def _in(self, key: str) -> str:
        return f" (in {self.where[key]})" if key in self.where else ""

    def lines(self) -> list[str]:
        out = [f"wrong shape: {k}: file {list(f)} but the module needs {list(m)}{self._in(k)}"
               for k, m, f in self.misshaped]
        out += [f"missing key: {k}" for k in self.missing]
        out += [f"unexpected key: {k}{self._in(k)}" for k in self.unexpected]
        return out

    def summary(self) -> str:
        return (f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.misshaped)} wrongly shaped key(s)")

    def raise_for(self, file: str | Path, what: str = "checkpoint") -> None:
        if not self.ok:
            raise CheckpointError(file, f"{what} does not match the module: {self.summary()}", self.lines())


def expected_shapes(module: nn.Module | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a module's state dict (works on meta), or of a mapping of tensors / shapes."""
    items = module.state_dict().items() if isinstance(module, nn.Module) else module.items()
    out = {}
    for k, v in items:
        shape = v.shape if hasattr(v, "shape") else v
        out[k] = tuple(int(s) for s in shape)
    return out


def compare_keys(module: nn.Module | Mapping[str, Any], file_keys_shapes: Mapping[str, Any]) -> KeyReport:
    """Compare the module's keys and shapes with a file's; every entry of `file_keys_shapes` is a shape,
    a tensor or a `TensorInfo`. Lists keep the module's order (missing) and the file's order (unexpected)."""
    want = expected_shapes(module)
    got = expected_shapes(file_keys_shapes)
    rep = KeyReport()
    rep.missing = [k for k in want if k not in got]
    rep.unexpected = [k for k in got if k not in want]
    rep.misshaped = [(k, want[k], got[k]) for k in want if k in got and want[k] != got[k]]
    files = {v.file.name for v in file_keys_shapes.values() if isinstance(v, TensorInfo)}
    if len(files) > 1:  # name the shard of each bad key
        bad = set(rep.unexpected) | {k for k, _, _ in rep.misshaped}
        rep.where = {k: file_keys_shapes[k].file.name for k in bad}
    return rep


# ------------------------------------------------------------------------------------------ safetensors

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def _torch_dtype_name(st_dtype: str) -> str:
    return _ST_DTYPES.get(st_dtype, st_dtype.lower())


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Key -> TensorInfo from a safetensors header (the tensor data is not read).

    safetensors checks on open that the header is complete and that the data offsets cover the file
    exactly, so a truncated or padded file fails here with the file named.
    """

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = TensorInfo(tuple(int(s) for s in sl.get_shape()), _torch_dtype_name(sl.get_dtype()), path)
            return out
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError, OSError
        raise CheckpointError(path, f"not a readable safetensors file (truncated or corrupt?): {e}") from e


def iter_safetensors(
    files: Iterable[str | Path], device: str | torch.device = "cpu", keys: Iterable[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) file after file; each tensor is read when asked for (one at a time).

    `keys` restricts what is read. Tensors land on `device` directly (safetensors reads to CUDA itself).
    """

    wanted = None if keys is None else set(keys)
    dev = str(torch.device(device))
    for path in files:
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt", device=dev) as f:
                for k in f.keys():
                    if wanted is None or k in wanted:
                        yield k, f.get_tensor(k)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(path, f"cannot read tensors (truncated or corrupt?): {e}") from e


_SHARD_RE = r"-(\d{5})-of-(\d{5})\.safetensors$"


@dataclass
class ShardedSafetensors:
    """A diffusers/transformers-style (possibly sharded) safetensors checkpoint in a folder."""

    folder: Path
    stem: str
    index: Path | None  # the .index.json, None for a single unsharded file
    shards: list[Path]  # in shard order
    weight_map: dict[str, Path]  # key -> shard file
    total_size: int | None = None  # what the index claims, in bytes

    @property
    def description(self) -> str:
        return str(self.index) if self.index else str(self.shards[0])


def read_safetensors_index(folder: str | Path, stem: str = "diffusion_pytorch_model") -> ShardedSafetensors:
    """Find `<stem>.safetensors.index.json` (+ its shards) or a single `<stem>.safetensors` in `folder`.

    Checks the index itself and that every shard it names, and every `-0000N-of-0000M` shard of the
    series, exists. Does not open the shards (see `read_sharded_safetensors`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "folder not found")
    index = folder / f"{stem}.safetensors.index.json"
    single = folder / f"{stem}.safetensors"
    on_disk = sorted(p for p in folder.iterdir() if re.fullmatch(re.escape(stem) + _SHARD_RE, p.name))
    if not index.is_file():
        if single.is_file():
            return ShardedSafetensors(folder, stem, None, [single], {})
        if on_disk:
            raise CheckpointError(index, f"index file not found, but {len(on_disk)} shard(s) are present",
                                  [p.name for p in on_disk])
        raise CheckpointError(index, f"neither {index.name} nor {single.name} found in {folder}")
    try:
        data = json.loads(index.read_text())
        wm = data["weight_map"]
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise ValueError("weight_map must map tensor names to shard file names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(index, f"not a valid safetensors index: {e}") from e
    if not wm:
        raise CheckpointError(index, "the index's weight_map is empty")
    names = sorted(set(wm.values()))
    bad = [n for n in names if "/" in n or "\\" in n or n.startswith(".")]
    if bad:
        raise CheckpointError(index, "shard names must be plain file names in the same folder", bad)
    # The series: every shard 1..M named with the same M must exist, whatever the index lists.
    series: dict[int, set[int]] = {}
    for n in names + [p.name for p in on_disk]:
        m = re.search(_SHARD_RE, n)
        if m:
            series.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    expected = set(names)
    for total in series:
        expected |= {f"{stem}-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)}
    missing = sorted(n for n in expected if not (folder / n).is_file())
    if missing:
        details = []
        for n in missing:
            held = [k for k, v in wm.items() if v == n]
            details.append(f"missing shard: {n}" + (f" (holds {len(held)} tensors: {format_keys(held, 5)})" if held else ""))
        raise CheckpointError(folder / missing[0], f"{len(missing)} shard file(s) missing from {folder}", details)
    if len(series) > 1:
        raise CheckpointError(index, f"shards of different series are mixed: -of-{sorted(series)}", names)
    unlisted = sorted({p.name for p in on_disk} - set(names))
    if unlisted:
        raise CheckpointError(folder / unlisted[0], "shard file(s) on disk that the index does not list", unlisted)
    total_size = data.get("metadata", {}).get("total_size") if isinstance(data.get("metadata"), dict) else None
    shards = [folder / n for n in names]
    return ShardedSafetensors(folder, stem, index, shards, {k: folder / v for k, v in wm.items()},
                              int(total_size) if total_size is not None else None)


_ELEMENT_SIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}


def read_sharded_safetensors(ckpt: ShardedSafetensors) -> tuple[dict[str, TensorInfo], list[str]]:
    """Read every shard's header and check it against the index, shard by shard.

    Returns (key -> TensorInfo over all shards, warnings). Raises CheckpointError naming the shard and
    the keys when a shard lacks a tensor the index puts there, holds one the index puts elsewhere or
    does not list, or when a key appears in two shards.
    """
    headers: dict[str, TensorInfo] = {}
    warnings: list[str] = []
    for shard in ckpt.shards:
        h = read_safetensors_header(shard)
        dup = [k for k in h if k in headers]
        if dup:
            raise CheckpointError(shard, f"{len(dup)} tensor(s) also stored in another shard", dup)
        if ckpt.index is not None:
            listed = [k for k, v in ckpt.weight_map.items() if v == shard]
            absent = [k for k in listed if k not in h]
            if absent:
                raise CheckpointError(shard, f"{len(absent)} tensor(s) that {ckpt.index.name} places in this shard "
                                      "are not in it", absent)
            extra = [k for k in h if ckpt.weight_map.get(k) != shard]
            if extra:
                raise CheckpointError(shard, f"{len(extra)} tensor(s) in this shard are not listed for it in "
                                      f"{ckpt.index.name}", extra)
        headers.update(h)
    if ckpt.total_size is not None:
        size = sum(i.numel * _ELEMENT_SIZE.get(i.dtype, 0) for i in headers.values())
        if size != ckpt.total_size:
            warnings.append(f"{ckpt.index}: metadata.total_size {ckpt.total_size} differs from the "
                            f"{size} bytes of tensor data in the shards")
    return headers, warnings


# ------------------------------------------------------------------------------------------ .pth


def read_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain torch state dict, memory-mapped (`weights_only=True, mmap=True`): no tensor data is read yet.

    Legacy (non-zip) files cannot be mapped; they are read whole, which costs their size in RAM once.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        try:
            obj = torch.load(str(path), weights_only=True, mmap=True, map_location="cpu")
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            obj = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as e:  # zip errors, OSError, unpickling errors
        raise CheckpointError(path, f"not a readable torch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"expected a state dict (a mapping of tensors), found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, "entries that are not named tensors", bad)
    return dict(obj)


def pth_headers(path: str | Path, sd: Mapping[str, torch.Tensor] | None = None) -> dict[str, TensorInfo]:
    """Key -> TensorInfo of a .pth state dict (memory-mapped; the data is not read)."""
    path = Path(path)
    sd = read_pth(path) if sd is None else sd
    return {k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch."), path) for k, v in sd.items()}


def iter_pth(sd: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) from a (memory-mapped) state dict, restricted to `keys` if given."""
    for k in (sd.keys() if keys is None else keys):
        yield k, sd[k]


# ------------------------------------------------------------------------------------------ loading


def _meta_leftovers(module: nn.Module) -> list[str]:
    names = [n for n, p in module.named_parameters() if p.is_meta]
    names += [n for n, b in module.named_buffers() if b.is_meta]
    return names


def load_into(
    module: nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    file: str | Path = "<checkpoint>",
    finish: Mapping[str, Callable[[nn.Module], Any]] | None = None,
) -> nn.Module:
    """Assign a checkpoint to a module built on `meta`, strictly, holding the weights once.

    Each tensor is moved to `device` and (floating point only) cast to `dtype` as it is read, so only one
    source tensor is alive beside the growing target set; `load_state_dict(strict=True, assign=True)`
    then adopts those very tensors as the module's parameters (no second copy). Any missing, unexpected or
    wrongly shaped key raises a CheckpointError naming `file` and the keys, and nothing is assigned.

    `finish`: submodule name -> function. Such a submodule is assigned as soon as its last tensor has arrived
    and the function is called on it at once (e.g. quantise a DiT block), so the checkpoint's own copy of it
    is dropped before the next tensors are read. The key check then covers all keys at the end, after those
    submodules were assigned (the callers compare file headers with the module before loading).
    Returns the module in eval mode with gradients off.
    """
    if isinstance(tensors, Mapping):
        tensors = tensors.items()
    device = torch.device(device)
    want = expected_shapes(module)
    groups = {name: [k for k in want if k.startswith(name + ".")] for name in (finish or {})}
    owner = {k: name for name, keys in groups.items() for k in keys}
    remaining = {name: len(keys) for name, keys in groups.items()}
    sd: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for k, t in tensors:
        shapes[k] = tuple(t.shape)
        if k not in want or want[k] != shapes[k]:
            continue  # reported below; never copy a tensor that will be rejected
        target = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        sd[k] = t.to(device=device, dtype=target)
        del t
        name = owner.get(k)
        if name is not None:
            remaining[name] -= 1
            if remaining[name] == 0:
                _finish_submodule(module, name, {kk: sd.pop(kk) for kk in groups[name]}, finish[name], file)
    compare_keys(want, shapes).raise_for(file)
    try:
        if not groups:
            module.load_state_dict(sd, strict=True, assign=True)
        else:  # the finished submodules' keys are already assigned (and may have changed: quantised)
            res = module.load_state_dict(sd, strict=False, assign=True)
            done = tuple(name + "." for name in groups)
            stray = list(res.unexpected_keys) + [k for k in res.missing_keys if not k.startswith(done)]
            if stray:
                raise RuntimeError(f"keys not assigned: {format_keys(stray)}")
    except RuntimeError as e:
        raise CheckpointError(file, f"load_state_dict failed: {e}") from e
    del sd
    left = _meta_leftovers(module)
    if left:
        raise CheckpointError(file, "the module still has tensors on the meta device after loading "
                              "(not in its state dict)", left)
    return module.eval().requires_grad_(False)


def _finish_submodule(module: nn.Module, name: str, part: dict[str, torch.Tensor],
                      fn: Callable[[nn.Module], Any], file: str | Path) -> None:
    sub = module.get_submodule(name)
    cut = len(name) + 1
    try:
        sub.load_state_dict({k[cut:]: v for k, v in part.items()}, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(file, f"load_state_dict of {name} failed: {e}") from e
    part.clear()  # the submodule holds the only reference now: fn may replace its tensors and free them
    fn(sub)


# ------------------------------------------------------------------------------------------ components
# A released module is one `Component` record (the rows are `release.COMPONENTS`); `plan_component` and
# `load_plan` walk a row: read the headers, map the keys, size the config, build on meta, compare, stream.


@dataclass
class FileTensors:
    """What a component's files hold, read from headers or memory maps only."""

    file: Path  # what errors name
    headers: dict[str, TensorInfo]  # file key -> what the header says
    source: Any = None  # the shards (safetensors) or the memory-mapped state dict (.pth); None: not loaded here
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)


@dataclass
class KeyMap:
    """A file's keys as the module names them."""

    headers: dict[str, TensorInfo]  # module key -> what the file says about it
    prefix: str = ""  # file key = prefix + module key
    unexpected: list[str] = field(default_factory=list)  # file keys that fit nowhere (errors, as the file names them)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)


def same_keys(headers: Mapping[str, Any]) -> KeyMap:
    """The key map of a file whose keys are the module's own."""
    return KeyMap(dict(headers))


@dataclass(frozen=True)
class Component:
    """One released module: its files, how its size is known, its builder, its key map, its quantisation plan.

    The config is, in this order: the caller's; `read_config(folder)` (a config file); `infer_config(module
    headers, file)` (tensor shapes). The module is built on `meta` by `build(config)`.
    """

    name: str
    files: tuple[str, ...]  # names in its folder ('*' for a series), for the reports and the docs
    read: Callable[[Path], FileTensors]
    build: Callable[[Any], nn.Module]
    read_config: Callable[[Path], Any] | None = None
    infer_config: Callable[[Mapping[str, TensorInfo], Path], Any] | None = None
    key_map: Callable[[Mapping[str, Any]], KeyMap] = same_keys
    optional_keys: Mapping[str, str] = field(default_factory=dict)  # module key -> warning when the file lacks it
    quantize: Callable[[Any, Any], Mapping[str, Callable[[nn.Module], Any]]] | None = None  # (config, plan) -> finish
    released: Any = None  # the released config: other sizes are reported (None: not checked)
    folder: str = "weights"  # which folder holds it: 'weights' (the FlashTalk release) or 'wav2vec'

    def path(self, folder: Path) -> Path:
        """What a report names: its one file, or the folder for a file set."""
        return folder / self.files[0] if len(self.files) == 1 else folder


@dataclass
class ModulePlan:
    """A file's tensors against the module that must take them: sized, built on meta, keys compared."""

    file: Path  # what errors name
    module: nn.Module  # on meta
    headers: dict[str, TensorInfo]  # the keys the module takes (prefix removed)
    report: KeyReport
    config: Any
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    source: Any = None  # shard list or the mmap state dict
    prefix: str = ""


def plan_headers(component: Component, headers: Mapping[str, Any], file: str | Path = "<headers>",
                 config: Any = None) -> ModulePlan:
    """Size the module from a file's key -> shape (TensorInfo or tuple) map, build it on meta, compare keys.

    The pure part of verify and load: usable on a manifest as well as on real file headers.
    """
    file = Path(file)
    keys = component.key_map(headers)
    if config is None:
        if component.infer_config is None:
            raise ValueError(f"the {component.name}'s size comes from {component.files[0]}: pass config=")
        config = component.infer_config(keys.headers, file)
    with torch.device("meta"):
        module = component.build(config)
    report = compare_keys(module, keys.headers)
    warnings = list(keys.warnings)
    for key, why in component.optional_keys.items():
        if key in report.missing:
            report.missing.remove(key)
            warnings.append(why)
    pre = keys.prefix
    if pre:
        report.missing = [pre + k for k in report.missing]
        report.unexpected = [pre + k for k in report.unexpected]
        report.misshaped = [(pre + k, m, f) for k, m, f in report.misshaped]
    report.unexpected += keys.unexpected
    return ModulePlan(file, module, keys.headers, report, config, warnings=warnings, info=list(keys.info), prefix=pre)


def plan_component(component: Component, folder: Path, config: Any = None) -> ModulePlan:
    """A component's plan from its files in `folder`: config, headers, module on meta, keys compared."""
    if config is None and component.read_config is not None:
        config = component.read_config(folder)
    files = component.read(folder)
    plan = plan_headers(component, files.headers, files.file, config)
    plan.source = files.source
    plan.warnings += files.warnings
    plan.info += files.info
    return plan


def load_plan(plan: ModulePlan, device: str | torch.device, dtype: torch.dtype | None, what: str,
              finish: Mapping[str, Callable[[nn.Module], Any]] | None = None) -> nn.Module:
    """Stream a plan's tensors into its module (strictly: a bad key raises before anything is read)."""
    plan.report.raise_for(plan.file, what)
    for w in plan.warnings:
        log.warning("checkpoint_warning", module=what, file=str(plan.file), warning=w)
    for line in plan.info:
        log.info("checkpoint_note", module=what, file=str(plan.file), detail=line)
    if isinstance(plan.source, list):  # safetensors shards, read one after the other
        tensors = iter_safetensors(plan.source, device=device)
    elif plan.source is None:
        raise CheckpointError(plan.file, f"{what} is not loaded from its tensors here (no source)")
    else:
        pre = plan.prefix
        tensors = ((k, v) for k, v in iter_pth(plan.source, [pre + k for k in plan.headers]))
        if pre:
            tensors = ((k[len(pre):], v) for k, v in tensors)
    module = load_into(plan.module, tensors, dtype=dtype, device=device, file=plan.file, finish=finish)
    n, params, dtypes = header_stats(plan.headers)
    log.info("checkpoint_loaded", module=what, file=str(plan.file), tensors=n, params=params, file_dtypes=dtypes,
             dtype=str(dtype).removeprefix("torch.") if dtype else "as stored", device=str(device))
    plan.source = None
    return module


def header_stats(headers: Mapping[str, TensorInfo]) -> tuple[int, int, dict[str, int]]:
    """(tensors, parameters, tensors per dtype) of a header map."""
    dtypes = Counter(i.dtype for i in headers.values())
    return len(headers), sum(i.numel for i in headers.values()), dict(dtypes)
