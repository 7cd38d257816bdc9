"""The idle bank: its key, the disk cache (round trip, corrupt and partial files, a full disk, the cap), the nearest
pick and the crossfade at the join, and RenderAhead serving idle from it with speech conditioned on aired frames."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from flashtalk_live.playout.idlebank import BankStore, IdleBank, bank_key, frame_distance, renderer_identity, thumb

from support.box_faults import fill, garbage, truncate

N, H, W = 6, 16, 24
SHAPE = (N, H, W, 3)


def ramp(start: float, step: float = 2.0, n: int = N) -> np.ndarray:
    """n frames of a smooth drift: frame i is a gradient shifted by start + i * step grey levels."""
    base = np.linspace(0, 60, W, dtype=np.float32)[None, :, None]
    out = [np.clip(base + start + i * step + np.zeros((H, W, 3), np.float32), 0, 255) for i in range(n)]
    return np.stack(out).astype(np.uint8)


def bank(tmp_path=None, size: int = 3, cap: int = 1 << 30, crossfade: int = 3) -> IdleBank:
    store = None if tmp_path is None else BankStore(tmp_path / "idlebank", cap, SHAPE)
    b = IdleBank(size=size, crossfade_frames=crossfade, config="cfg", store=store, chunk_frames=N)
    b.set_avatar(np.full((8, 8, 3), 7, np.uint8), "a prompt")
    b.sync("flashtalk:weights-a")
    return b


def fill_bank(b: IdleBank, starts: list[float]) -> None:
    for s in starts:
        assert b.wants_chunk()
        b.add_rendered(ramp(s))


def test_key_follows_avatar_prompt_config_and_renderer():
    img = np.zeros((8, 8, 3), np.uint8)
    k = bank_key(img, "p", "cfg", "flashtalk:w")
    img2 = img.copy()
    img2[3, 3, 1] = 1
    assert len({k, bank_key(img2, "p", "cfg", "flashtalk:w"), bank_key(img, "q", "cfg", "flashtalk:w"),
                bank_key(img, "p", "cfg2", "flashtalk:w"), bank_key(img, "p", "cfg", "flashtalk:w2")}) == 5
    assert k == bank_key(img.copy(), "p", "cfg", "flashtalk:w")


def test_renderer_identity_needs_an_opted_in_ready_renderer():
    class R:
        name, bank_identity, up = "flashtalk", "prof+weights", True

        def ready(self):
            return self.up

    r = R()
    assert renderer_identity(r) == "flashtalk:prof+weights"
    r.up = False
    assert renderer_identity(r) is None
    r.up, r.bank_identity = True, None  # a renderer without a bank (paint, still): idle is cheap anyway
    assert renderer_identity(r) is None and renderer_identity(None) is None


def test_a_new_avatar_or_renderer_drops_the_old_chunks():
    b = bank()
    fill_bank(b, [0, 12])
    key = b.key
    b.sync("flashtalk:weights-b")
    assert b.key != key and not b.chunks and b.serve(N, None) is None
    b.sync(None)
    assert not b.active and b.status()["state"] == "waiting_renderer"


def test_disk_round_trip_survives_a_restart(tmp_path):
    b = bank(tmp_path)
    fill_bank(b, [0, 12, 24])
    assert b.status()["state"] == "ready" and b.status()["from_render"] == 3
    again = bank(tmp_path)
    assert again.key == b.key and again.status()["state"] == "loading"
    while again.load_one():
        pass
    st = again.status()
    assert st["state"] == "ready" and st["from_disk"] == 3 and st["from_render"] == 0
    for seq, c in b.chunks.items():
        np.testing.assert_array_equal(again.chunks[seq].frames, c.frames)


@pytest.mark.parametrize("damage", [truncate, garbage])
def test_corrupt_and_partial_files_are_ignored_and_rebuilt(tmp_path, damage):
    b = bank(tmp_path)
    fill_bank(b, [0, 12, 24])
    d = tmp_path / "idlebank" / b.key
    damage(d / "0001.npz")
    (d / "0002.npz").write_bytes(b"")  # an empty file under a real name
    (d / "tmpabc.tmp").write_bytes(b"half a write")  # a write cut short by a crash
    again = bank(tmp_path)
    while again.load_one():
        pass
    assert sorted(again.chunks) == [0] and again.store.corrupt == 2
    assert not (d / "0001.npz").exists() and not (d / "tmpabc.tmp").exists()
    fill_bank(again, [40, 52])  # rendered again, appended to the chain
    assert sorted(again.chunks) == [0, 1, 2] and again.status()["state"] == "ready"
    assert sorted(p.name for p in d.iterdir()) == ["0000.npz", "0001.npz", "0002.npz"]


def test_a_file_of_another_key_or_shape_is_not_trusted(tmp_path):
    b = bank(tmp_path)
    fill_bank(b, [0])
    d = tmp_path / "idlebank" / b.key
    meta = np.frombuffer(json.dumps({"version": 1, "key": "other", "seq": 0}).encode(), np.uint8)
    with open(d / "0000.npz", "wb") as f:
        np.savez(f, frames=ramp(0), meta=meta)
    assert b.store.load(b.key, 0) is None and not (d / "0000.npz").exists()


def test_a_full_disk_keeps_the_bank_in_ram(tmp_path, tmpfs):
    fs = tmpfs(tmp_path / "fs", "1m")
    fill(fs)
    store = BankStore(fs / "idlebank", 1 << 30, SHAPE)
    b = IdleBank(size=2, crossfade_frames=2, config="cfg", store=store, chunk_frames=N)
    b.set_avatar(np.zeros((8, 8, 3), np.uint8), "p")
    b.sync("flashtalk:w")
    fill_bank(b, [0, 12])
    st = b.status()
    assert st["state"] == "ready" and st["chunks_ready"] == 2 and "No space" in st["disk"]["error"]
    assert b.serve(N, None) is not None
    assert not list((fs / "idlebank").rglob("*.npz")) and not list((fs / "idlebank").rglob("*.tmp"))


def test_the_disk_cap_evicts_other_avatars_first_then_keeps_the_rest_in_ram(tmp_path):
    one = ramp(0).nbytes + 4096
    old = bank(tmp_path, cap=2 * one + 1000)
    fill_bank(old, [0, 12])
    old_dir = tmp_path / "idlebank" / old.key
    os.utime(old_dir / "0000.npz", (1, 1))
    os.utime(old_dir / "0001.npz", (1, 1))
    b = bank(tmp_path, cap=2 * one + 1000)
    b.set_avatar(np.full((8, 8, 3), 9, np.uint8), "another avatar")
    fill_bank(b, [0, 12, 24])
    assert not old_dir.exists()  # the other avatar's bank made room
    on_disk = list((tmp_path / "idlebank" / b.key).glob("*.npz"))
    assert len(on_disk) == 2 and len(b.chunks) == 3  # the third is over the cap: RAM only
    assert b.store.used_bytes() <= 2 * one + 1000


def test_the_chain_plays_in_order_without_a_blend():
    b = bank(size=3)
    fill_bank(b, [0, 12, 24])
    first = b.serve(N, None)
    np.testing.assert_array_equal(first, b.chunks[0].frames)
    np.testing.assert_array_equal(b.serve(N, first[-1]), b.chunks[1].frames)
    np.testing.assert_array_equal(b.serve(N, None), b.chunks[2].frames)
    assert b.served == 3


def test_after_a_clip_the_nearest_chunk_joins_through_a_crossfade():
    b = bank(size=3, crossfade=3)
    fill_bank(b, [10, 100, 190])
    last_aired = ramp(104, n=1)[0]  # the clip ended near the second chunk's first frame
    b.interrupted()
    out = b.serve(N, last_aired)
    assert b.last_join["seq"] == 1 and b.last_join["crossfade_frames"] == 3
    assert b.last_join["distance"] == pytest.approx(frame_distance(thumb(last_aired), b.chunks[1].first))
    np.testing.assert_array_equal(out[3:], b.chunks[1].frames[3:])  # only the blend differs from the bank
    assert np.shares_memory(b.chunks[1].frames, b.chunks[1].frames) and not np.shares_memory(out, b.chunks[1].frames)

    # The join measured: the pixel step from the last aired frame into the bank is no larger than a typical
    # frame-to-frame step of the bank itself (here 2 grey levels), and every blended step is monotone.
    seq = np.concatenate([last_aired[None], out]).astype(np.float32)
    steps = np.abs(np.diff(seq, axis=0)).mean(axis=(1, 2, 3))
    typical = np.abs(np.diff(b.chunks[1].frames.astype(np.float32), axis=0)).mean()
    assert steps[0] <= typical + 1.0, (steps, typical)
    assert steps.max() <= typical + 1.0
    # Without the blend the join would be the whole distance in one frame.
    assert np.abs(b.chunks[1].frames[0].astype(np.float32) - last_aired).mean() == pytest.approx(4.0, abs=0.6)


def test_successor_missing_asks_for_the_next_link_while_idle_airs():
    b = bank(size=3)
    fill_bank(b, [0])
    b.serve(N, None)
    assert b.successor_missing()
    chunk = b.build_chunk(None)
    np.testing.assert_array_equal(chunk.motion_frames, b.chunks[0].frames[-8:])
    assert chunk.idle and chunk.n_frames == N and not chunk.model_history.any()
    b.add_rendered(ramp(12))
    np.testing.assert_array_equal(b.serve(N, None), b.chunks[1].frames)


def test_a_lead_in_chunk_gets_the_head_of_a_link_and_the_next_joins_through_the_nearest_pick():
    """A re-plan's ramp holds idle in chunks shorter than the bank's: the head of the link the chain or the nearest
    pick gives; the link's rest never airs, so the next chunk joins through the nearest pick, not the chain."""
    b = bank(size=3, crossfade=3)
    fill_bank(b, [0, 12, 100])
    np.testing.assert_array_equal(b.serve(N, None), b.chunks[0].frames)
    head = b.serve(N - 2, None)  # the chain's successor, cut short
    np.testing.assert_array_equal(head, b.chunks[1].frames[: N - 2])
    after = b.serve(N, head[-1])
    assert b.last_join["seq"] == 1 and b.last_join["crossfade_frames"] == 3, "the nearest pick, not link 2"
    np.testing.assert_array_equal(after[3:], b.chunks[1].frames[3:])
    assert b.serve(N + 1, None) is None, "longer than a link"
