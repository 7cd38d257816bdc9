"""The generic loader: key reports, header reading, sharded indexes, .pth memory maps, strict single-copy assignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from flashtalk_live.checkpoints.loader import (
    CheckpointError,
    compare_keys,
    iter_safetensors,
    load_into,
    pth_headers,
    read_pth,
    read_safetensors_header,
    read_safetensors_index,
    read_sharded_safetensors,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Sequential(nn.LayerNorm(3), nn.Linear(3, 2, bias=False))


def tiny_sd(dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g).to(dtype) for k, v in Tiny().state_dict().items()}


def on_meta() -> Tiny:
    with torch.device("meta"):
        return Tiny()


def test_compare_keys_names_every_difference_in_order():
    sd = tiny_sd()
    sd["a.weight"] = torch.zeros(3, 5)
    del sd["b.1.weight"]
    sd["b.2.weight"] = torch.zeros(2, 3)
    rep = compare_keys(on_meta(), sd)
    assert not rep.ok and rep.count == 3
    assert rep.missing == ["b.1.weight"] and rep.unexpected == ["b.2.weight"]
    assert rep.misshaped == [("a.weight", (3, 4), (3, 5))]
    assert rep.lines() == [
        "wrong shape: a.weight: file [3, 5] but the module needs [3, 4]",
        "missing key: b.1.weight",
        "unexpected key: b.2.weight",
    ]
    assert compare_keys(on_meta(), {k: tuple(v.shape) for k, v in tiny_sd().items()}).ok


def test_error_lists_first_20_keys_and_the_count():
    rep = compare_keys({f"k{i}": (1,) for i in range(30)}, {})
    with pytest.raises(CheckpointError) as ei:
        rep.raise_for("/x/model.pth")
    msg = str(ei.value)
    assert msg.startswith("/x/model.pth: checkpoint does not match the module: 30 missing")
    assert "missing key: k0" in msg and "missing key: k19" in msg and "missing key: k20" not in msg
    assert "... and 10 more (30 in all)" in msg
    assert ei.value.file == "/x/model.pth" and len(ei.value.details) == 30


def test_load_into_assigns_the_read_tensors_without_a_copy():
    sd = tiny_sd()
    ptrs = {k: v.data_ptr() for k, v in sd.items()}
    model = load_into(on_meta(), sd, dtype=torch.float32, device="cpu", file="tiny")
    for k, v in model.state_dict().items():
        assert v.data_ptr() == ptrs[k], f"{k} was copied"  # assign=True adopted the very tensor
        assert torch.equal(v, sd[k])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_load_into_casts_floats_and_streams_an_iterator():
    sd = tiny_sd(torch.bfloat16)
    seen = []

    def stream():
        for k, v in sd.items():
            seen.append(k)
            yield k, v

    model = load_into(on_meta(), stream(), dtype=torch.float32, device="cpu")
    assert seen == list(sd)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.a.weight, sd["a.weight"].float())
    kept = load_into(on_meta(), sd, dtype=None, device="cpu")
    assert kept.a.weight.dtype == torch.bfloat16


def test_load_into_rejects_bad_keys_naming_file_and_key():
    sd = tiny_sd()
    sd["a.bias_renamed"] = sd.pop("a.bias")
    model = on_meta()
    with pytest.raises(CheckpointError, match=r"(?s)weights\.pth.*missing key: a\.bias\n.*unexpected key: a\.bias_renamed"):
        load_into(model, sd, file="weights.pth")
    assert model.a.weight.is_meta  # nothing was assigned
    sd = tiny_sd()
    sd["b.1.weight"] = torch.zeros(2, 4)
    with pytest.raises(CheckpointError, match=r"wrong shape: b\.1\.weight: file \[2, 4\] but the module needs \[2, 3\]"):
        load_into(on_meta(), sd, file="weights.pth")


def test_load_into_reports_tensors_left_on_meta():
    class WithBuffer(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.zeros(3), persistent=False)

    with torch.device("meta"):
        m = WithBuffer()
    with pytest.raises(CheckpointError, match="still has tensors on the meta device.*\n  table"):
        load_into(m, tiny_sd(), file="f")


def test_safetensors_header_and_truncation(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(tiny_sd(torch.bfloat16), str(path))
    h = read_safetensors_header(path)
    assert h["a.weight"].shape == (3, 4) and h["a.weight"].dtype == "bfloat16" and h["a.weight"].file == path
    data = path.read_bytes()
    for cut in (len(data) - 7, 40, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"w\.safetensors: not a readable safetensors file"):
            read_safetensors_header(path)
    with pytest.raises(CheckpointError, match="nope.safetensors: file not found"):
        read_safetensors_header(tmp_path / "nope.safetensors")


def test_pth_is_memory_mapped_and_truncation_names_the_file(tmp_path):
    path = tmp_path / "m.pth"
    sd = tiny_sd()
    torch.save(sd, path)
    got = read_pth(path)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert pth_headers(path)["b.1.weight"].shape == (2, 3)
    model = load_into(on_meta(), got, dtype=None, device="cpu", file=path)
    assert torch.equal(model.b[1].weight, sd["b.1.weight"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.pth: not a readable torch checkpoint"):
        read_pth(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_pth(path)
    legacy = tmp_path / "legacy.pth"  # old pickle format: cannot be mapped, read whole
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_pth(legacy)["a.bias"], sd["a.bias"])


def _write_sharded(folder: Path, sd: dict, n: int) -> dict:
    keys = list(sd)
    wm = {}
    for i in range(n):
        name = f"m-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::n]}
        save_file(part, str(folder / name))
        wm.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(v.numel() * 4 for v in sd.values())}, "weight_map": wm}
    (folder / "m.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_sharded_index_round_trip_and_shard_by_shard_reading(tmp_path):
    sd = tiny_sd()
    _write_sharded(tmp_path, sd, 2)
    ckpt = read_safetensors_index(tmp_path, "m")
    assert [p.name for p in ckpt.shards] == ["m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"]
    headers, warnings = read_sharded_safetensors(ckpt)
    assert set(headers) == set(sd) and warnings == []
    order = [k for k, _ in iter_safetensors(ckpt.shards)]
    assert order == list(sd)[0::2] + list(sd)[1::2]  # first shard entirely, then the second
    model = load_into(on_meta(), iter_safetensors(ckpt.shards), file=ckpt.index)
    assert torch.equal(model.a.weight, sd["a.weight"])


def test_sharded_index_problems_name_the_shard_and_keys(tmp_path):
    sd = tiny_sd()
    index = _write_sharded(tmp_path, sd, 3)
    (tmp_path / "m-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"m-00002-of-00003\.safetensors: 1 shard file\(s\) missing") as ei:
        read_safetensors_index(tmp_path, "m")
    assert "holds" in str(ei.value) and list(sd)[1] in str(ei.value)

    # Index consistent but the series is incomplete: still a missing shard.
    wm = {k: v for k, v in index["weight_map"].items() if v != "m-00002-of-00003.safetensors"}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(CheckpointError, match="missing shard: m-00002-of-00003.safetensors"):
        read_safetensors_index(tmp_path, "m")

    # A key the index puts in a shard that does not hold it.
    _write_sharded(tmp_path, sd, 3)
    idx = json.loads((tmp_path / "m.safetensors.index.json").read_text())
    idx["weight_map"]["a.weight"] = "m-00003-of-00003.safetensors"
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError) as ei:
        read_sharded_safetensors(read_safetensors_index(tmp_path, "m"))
    assert "m-00001-of-00003.safetensors" in ei.value.file and "a.weight" in str(ei.value)

    (tmp_path / "m.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        read_safetensors_index(tmp_path, "m")
    (tmp_path / "m.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="index file not found, but 3 shard"):
        read_safetensors_index(tmp_path, "m")


def test_single_unsharded_file_is_accepted(tmp_path):
    save_file(tiny_sd(), str(tmp_path / "m.safetensors"))
    ckpt = read_safetensors_index(tmp_path, "m")
    assert ckpt.index is None and [p.name for p in ckpt.shards] == ["m.safetensors"]
    with pytest.raises(CheckpointError, match="neither x.safetensors.index.json nor x.safetensors"):
        read_safetensors_index(tmp_path, "x")
