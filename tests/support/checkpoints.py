"""Helpers to damage a fake release in controlled ways."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file


def dit_index(weights_dir: Path) -> tuple[Path, dict]:
    path = weights_dir / "diffusion_pytorch_model.safetensors.index.json"
    return path, json.loads(path.read_text())


def rewrite_shard(weights_dir: Path, key: str, edit) -> Path:
    """Apply `edit(state_dict)` to the shard holding `key` and keep the index consistent; returns the shard."""
    index_path, index = dit_index(weights_dir)
    shard = weights_dir / index["weight_map"][key]
    sd = load_file(str(shard))
    sd = edit(sd)
    save_file(sd, str(shard), metadata={"format": "pt"})
    wm = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    wm.update({k: shard.name for k in sd})
    index["weight_map"] = wm
    index_path.write_text(json.dumps(index))
    return shard


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
