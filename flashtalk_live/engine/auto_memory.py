"""What `model.profile = "auto"` measured, remembered in the compile cache folder so a restart need not measure again.

With `model.compile = true`, auto times candidates eager and compiles only the one predicted to fit
(engine.profile.next_auto_step). The eager trials cost about 50 s on an H100 at every start (a warm-up and
`auto_chunks` timed chunks each of quality 5.95, native 2.60, fast 2.23 s...), while what they measure only changes
when the machine or the settings do. After a search, `AutoMemory.save` writes the measurements (eager seconds per
profile, the compiled seconds measured, the compiled/eager ratio, the choice) as `auto-profile.json` beside torch's
inductor cache (`model.compile_cache_dir`); at the next start `AutoMemory.recall` hands them back when the record's
fingerprint equals this start's. The renderer then seeds the search with them: no eager trials, the recorded ratio,
so the predicted winner is compiled (from the warm cache) and timed as before. If it still fits it is kept; if not,
the search goes on as without a record and the record is rewritten.

The fingerprint (`speed_fingerprint`) holds everything that changes a chunk's time: the GPU's name and how many,
torch (with its CUDA build), this package's version and a digest of its model/engine/quant code (`code_digest`),
each candidate profile's fields, the DiT's architecture,
dtype, the effective quantisation and its fp8 options, the decoder, attention, compile and CUDA graphs, the VAE
options, and the output geometry (frames are fitted to it inside a timed chunk). Left out on purpose: paths (the
weights, the caches: the same release elsewhere runs as fast, and a moved folder should not cost a re-measure),
the weights' identity (the same architecture runs at the same speed whatever its values: random benchmark weights
included), the text encoder's device (it runs once per prompt, never inside a chunk), drift and recalibration
settings (the silent chunks auto times always measure drift), and auto's own knobs: `auto_margin` and
`auto_chunks` are applied afresh to the remembered seconds, and `auto_compiled_ratio` is only the prior that the
remembered, measured ratio replaces.

Promises: the file is written atomically (a temporary file in the same folder, fsynced, then renamed over the
old one), so a crash leaves the old record or the new one, never half of one. A missing file, another fingerprint
or an unreadable file (bad JSON, wrong shape) is "no record": the full search runs; an unreadable one is logged as
a warning, never raised. Deleting the file (or the whole compile cache) forces a re-measure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeGuard

import torch

import flashtalk_live
from flashtalk_live.engine.profile import Profile
from flashtalk_live.log import get_logger
from flashtalk_live.settings import ModelSettings, VideoSettings

AUTO_MEMORY_FILE = "auto-profile.json"
RECORD_FORMAT = 1  # bump when the record's shape changes: an older file then reads as another fingerprint


def device_name(device: torch.device) -> str:
    """The accelerator's model name ("NVIDIA H100 80GB HBM3"), or the device type ("cpu")."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def gpu_count(gpus: int | Sequence[int]) -> int:
    """model.gpus as a count: a list of ids runs on as many GPUs as it names."""
    return gpus if isinstance(gpus, int) else len(gpus)


SPEED_CODE = ("model", "engine", "quant")  # the package's folders whose code runs inside a timed chunk


def code_digest(root: str | os.PathLike[str] | None = None) -> str:
    """sha256 (16 hex digits) of the Python source that runs inside a chunk (SPEED_CODE under the package folder
    `root`): an upgrade that changes it re-measures, even under the same package version."""
    base = Path(root) if root is not None else Path(flashtalk_live.__file__).parent
    h = hashlib.sha256()
    for folder in SPEED_CODE:
        for f in sorted((base / folder).rglob("*.py")):
            h.update(f.relative_to(base).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def speed_fingerprint(model: ModelSettings, video: VideoSettings, candidates: Sequence[Profile], *,
                      device: str, dit_architecture: Mapping[str, Any], quantized: bool) -> dict[str, Any]:
    """Everything that changes auto's chunk times, as plain JSON values (the module docstring says what is left
    out and why). `device`: device_name(); `dit_architecture`: the built DiT's config; `quantized`: whether the
    fp8 plan is in use (quantize = "fp8" falls back to bf16 on a GPU without fp8)."""
    m = model
    fp = {
        "format": RECORD_FORMAT,
        "device": device,
        "gpus": gpu_count(m.gpus),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "flashtalk_live": flashtalk_live.__version__,
        "code": code_digest(),
        "candidates": [p.to_dict() for p in candidates],
        "dit": dict(dit_architecture),
        "dtype": m.dtype,
        "quantize": "fp8" if quantized else "none",
        "fp8": ({"keep_bf16_blocks": list(m.fp8_keep_bf16_blocks), "backend": m.fp8_backend,
                 "fast_accum": m.fp8_fast_accum} if quantized else None),
        "decoder": m.decoder,
        "attention": m.attention,
        "compile": m.compile,
        "cuda_graphs": m.cuda_graphs,
        "vae": {"latents_per_pass": m.vae_latents_per_pass, "channels_last": m.vae_channels_last,
                "compile": m.vae_compile},
        "output": {"width": video.width, "height": video.height, "fit": video.fit},
    }
    out: dict[str, Any] = json.loads(json.dumps(fp))  # tuples -> lists: compares equal to a record read back
    return out


@dataclass(frozen=True)
class AutoRecord:
    """One search's measurements: eager and compiled chunk seconds per profile name, the compiled/eager ratio
    the choice was made with, the profile chosen and whether it fit, and when it was written (Unix seconds)."""

    fingerprint: dict[str, Any]
    eager: dict[str, list[float]]
    compiled: dict[str, list[float]]
    ratio: float
    choice: str
    fits: bool
    written_unix: float

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.written_unix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "AutoRecord":
        """The record in `data` (a parsed file); ValueError naming what is wrong with its shape."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")

        def seconds(key: str) -> dict[str, list[float]]:
            v = data.get(key)
            if not isinstance(v, dict) or not all(
                    isinstance(k, str) and isinstance(s, list) and s and all(_finite(x) for x in s)
                    for k, s in v.items()):
                raise ValueError(f"{key!r} must map profile names to non-empty lists of seconds")
            return {k: [float(x) for x in s] for k, s in v.items()}

        fingerprint, ratio, choice = data.get("fingerprint"), data.get("ratio"), data.get("choice")
        fits, written = data.get("fits"), data.get("written_unix")
        if not isinstance(fingerprint, dict):
            raise ValueError("'fingerprint' must be an object")
        if not _finite(ratio) or ratio <= 0:
            raise ValueError("'ratio' must be a positive number")
        if not isinstance(choice, str) or not isinstance(fits, bool) or not _finite(written):
            raise ValueError("'choice', 'fits' and 'written_unix' must be a name, a boolean and a number")
        return cls(fingerprint, seconds("eager"), seconds("compiled"), float(ratio), choice, fits, float(written))


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class AutoMemory:
    """auto's record in `folder` (the compile cache folder) for one fingerprint."""

    def __init__(self, folder: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(folder) / AUTO_MEMORY_FILE
        self.fingerprint = dict(fingerprint)

    def recall(self) -> AutoRecord | None:
        """The record if the file exists, reads and carries this fingerprint; else None (a warning for a file that
        cannot be read or parsed, an info line naming what differs for another fingerprint)."""
        log = get_logger("engine")
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("auto_memory_unreadable", path=str(self.path), error=str(e),
                        note="measuring every candidate again")
            return None
        try:
            record = AutoRecord.from_dict(json.loads(text))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            log.warning("auto_memory_unreadable", path=str(self.path), error=str(e),
                        note="measuring every candidate again; the file is rewritten after the search")
            return None
        if record.fingerprint != self.fingerprint:
            keys = sorted(k for k in set(record.fingerprint) | set(self.fingerprint)
                          if record.fingerprint.get(k) != self.fingerprint.get(k))
            log.info("auto_memory_stale", path=str(self.path), changed=keys,
                     note="written for another machine or settings: measuring again")
            return None
        return record

    def save(self, eager: Mapping[str, Sequence[float]], compiled: Mapping[str, Sequence[float]], ratio: float,
             choice: str, fits: bool, now: float | None = None) -> AutoRecord:
        """Write the record for this fingerprint atomically (temporary file, fsync, rename) and return it."""
        record = AutoRecord(self.fingerprint, {k: [float(x) for x in v] for k, v in eager.items()},
                            {k: [float(x) for x in v] for k, v in compiled.items()}, float(ratio), choice, fits,
                            time.time() if now is None else now)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{AUTO_MEMORY_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(record.to_dict(), indent=1, sort_keys=True))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: a crash leaves the old record or this one, never half of one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return record
