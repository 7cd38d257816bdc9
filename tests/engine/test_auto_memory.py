"""model.profile = "auto" remembers its measurements in the compile cache: the record's fingerprint, its atomic
write and unreadable files (engine.auto_memory), and the renderer's search seeded from it (tiny random family,
compiled, real chunks; a fake timer replays injected seconds, so no clock is in the asserts)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from flashtalk_live.engine import auto_memory, renderer as renderer_mod
from flashtalk_live.engine.auto_memory import AUTO_MEMORY_FILE, AutoMemory, speed_fingerprint
from flashtalk_live.engine.compile_cache import INDUCTOR_CACHE_ENV
from flashtalk_live.engine.profile import PROFILE_LADDER, PROFILES
from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer
from flashtalk_live.config import load_settings

from support.chunks import render_chunk
from support.logs import capture_logs, log_lines
from support.settings import flashtalk_settings

torch.set_num_threads(1)

N = 8  # new frames per chunk of every tiny candidate; budget 8/25 = 0.32 s, limit 0.32 x 0.85 = 0.272 s
CANDIDATES = {  # best quality first
    "tiny_q": 'base = "quality"\nheight = 64\nwidth = 32\nframe_num = 13\nmotion_frames = 5\nsample_steps = 2\n',
    "tiny_f": 'base = "fast"\nheight = 48\nwidth = 32\nframe_num = 9\nmotion_frames = 1\nsample_steps = 1\n',
    "tiny_r": 'base = "fast"\nheight = 32\nwidth = 32\nframe_num = 9\nmotion_frames = 1\nsample_steps = 1\n',
}
# compile ratio 0.8: tiny_q eager 0.50 -> 0.40 (no), tiny_f eager 0.30 -> 0.24 (compile it): compiled 0.25 fits
EAGER = {"tiny_q": 0.50, "tiny_f": 0.30, "tiny_r": 0.15}
COMPILED = {"tiny_q": 0.90, "tiny_f": 0.25, "tiny_r": 0.18}
LADDER = [PROFILES[n] for n in PROFILE_LADDER]


# ----------------------------------------------------------------------------- the record (no model)


def _fingerprint(*extra: str, device: str = "NVIDIA H100 80GB HBM3", quantized: bool = True,
                 candidates: list = LADDER, layers: int = 40) -> dict:
    s = load_settings(None, ['renderer.kind="flashtalk"', 'model.profile="auto"', 'model.quantize="fp8"',
                             "model.compile=true", *extra], environ={})
    return speed_fingerprint(s.model, s.video, candidates, device=device,
                             dit_architecture={"dim": 5120, "num_layers": layers}, quantized=quantized)


def test_the_fingerprint_holds_what_changes_chunk_time_and_not_paths_or_autos_knobs() -> None:
    base = _fingerprint()
    assert base == json.loads(json.dumps(base))  # plain JSON: equal to itself read back from the file
    assert base["device"] == "NVIDIA H100 80GB HBM3" and base["torch"] == torch.__version__
    assert [c["name"] for c in base["candidates"]] == list(PROFILE_LADDER)
    for changed in (['model.decoder="taehv"'], ["model.fp8_fast_accum=true"], ['model.attention="cudnn"'],
                    ["model.gpus=8"], ["model.cuda_graphs=true"], ["model.vae_latents_per_pass=2"],
                    ['model.dtype="float16"'], ["video.width=416"], ['model.vae_compile=true']):
        assert _fingerprint(*changed) != base, changed
    assert _fingerprint(device="NVIDIA H200") != base
    assert _fingerprint(candidates=LADDER[2:]) != base
    assert _fingerprint(candidates=[PROFILES["quality"], PROFILES["native"].replace(sample_steps=4),
                                    PROFILES["fast"], PROFILES["realtime"]]) != base  # a field, not only the name
    assert _fingerprint(layers=2) != base  # another model family (the tiny one)
    assert _fingerprint(quantized=False) != base  # quantize = "fp8" on a GPU without fp8 runs bf16
    # the same release elsewhere, other caches, and auto's own knobs (applied afresh to remembered seconds)
    for same in ('model.weights_dir="/elsewhere/FlashTalk"', 'model.compile_cache_dir="/x/cc"',
                 'model.text_cache_dir="/x/tc"', 'model.text_device="model"', "model.auto_margin=0.2",
                 "model.auto_chunks=5", "model.auto_compiled_ratio=0.5", "model.drift_every_chunks=4"):
        assert _fingerprint(same) == base, same
    assert _fingerprint("model.gpus=[0,1,2,3,4,5,6,7]") == _fingerprint("model.gpus=8")  # ids: the count matters


def test_save_and_recall_for_the_same_fingerprint_only(tmp_path) -> None:
    mem = AutoMemory(tmp_path / "cc", _fingerprint())
    assert mem.recall() is None  # no file yet
    saved = mem.save({"quality": [5.95] * 3, "fast": [2.23] * 3}, {"fast": [0.94] * 3}, 0.42, "fast", True, now=1000.0)
    assert mem.path == tmp_path / "cc" / AUTO_MEMORY_FILE
    back = mem.recall()
    assert back == saved and back.choice == "fast" and back.eager["quality"] == [5.95] * 3
    assert back.age_s(now=4600.0) == 3600.0
    buf = capture_logs()
    assert AutoMemory(tmp_path / "cc", _fingerprint(device="NVIDIA H200")).recall() is None
    assert AutoMemory(tmp_path / "cc", _fingerprint('model.decoder="taehv"')).recall() is None
    stale = log_lines(buf, "auto_memory_stale")
    assert [s["changed"] for s in stale] == [["device"], ["decoder"]] and not log_lines(buf, "auto_memory_unreadable")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"fingerprint": {}}', "\udcff"],
                         ids=["bad-json", "not-object", "missing-fields", "bad-utf8"])
def test_an_unreadable_record_is_no_record_and_a_warning(tmp_path, text) -> None:
    mem = AutoMemory(tmp_path, _fingerprint())
    mem.path.write_bytes(text.encode("utf-8", "surrogateescape"))
    buf = capture_logs()
    assert mem.recall() is None
    warned = log_lines(buf, "auto_memory_unreadable")
    assert len(warned) == 1 and warned[0]["level"] == "warning" and warned[0]["path"] == str(mem.path)


def test_a_record_with_bad_seconds_is_unreadable(tmp_path) -> None:
    mem = AutoMemory(tmp_path, _fingerprint())
    mem.save({"fast": [2.2]}, {"fast": [0.9]}, 0.42, "fast", True)
    data = json.loads(mem.path.read_text())
    data["eager"]["fast"] = ["NaN?"]
    mem.path.write_text(json.dumps(data))
    buf = capture_logs()
    assert mem.recall() is None and "eager" in log_lines(buf, "auto_memory_unreadable")[0]["error"]


def test_the_record_is_written_atomically(tmp_path, monkeypatch) -> None:
    """Written to a temporary file in the same folder and renamed over the record: a write that fails part way
    leaves the old record whole and no temporary file behind."""
    mem = AutoMemory(tmp_path, _fingerprint())
    mem.save({"fast": [2.2]}, {"fast": [0.9]}, 0.42, "fast", True)
    renames: list[tuple[Path, str, str]] = []  # (temporary file, target, the choice the temporary file held)
    real_replace = os.replace

    def spy(src, dst):  # noqa: ANN001, ANN202
        renames.append((Path(src), str(dst), json.loads(Path(src).read_text())["choice"]))
        real_replace(src, dst)

    monkeypatch.setattr(auto_memory.os, "replace", spy)
    mem.save({"fast": [2.3]}, {"realtime": [0.7]}, 0.42, "realtime", True)
    # complete under its temporary name in the same folder (same file system: the rename is atomic), then renamed
    assert [(src.parent, dst, choice) for src, dst, choice in renames] == [(tmp_path, str(mem.path), "realtime")]
    assert mem.recall().choice == "realtime"

    def broken_fsync(fd: int) -> None:  # the disk fills while the new record is being written
        raise OSError(28, "No space left on device")

    mem.save({"fast": [2.2]}, {"fast": [0.9]}, 0.42, "fast", True)
    kept = mem.path.read_bytes()
    monkeypatch.setattr(auto_memory.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        mem.save({"fast": [9.9]}, {"fast": [9.9]}, 0.42, "native", False)
    assert mem.path.read_bytes() == kept and mem.recall().choice == "fast"
    assert sorted(p.name for p in tmp_path.iterdir()) == [AUTO_MEMORY_FILE]  # no temporary file left


# ----------------------------------------------------------------- the renderer's search, seeded from the record


class FakeTimer:
    """Runs every chunk for real and reports the injected seconds of its profile and stage."""

    def __init__(self, compiled: dict[str, float], eager: dict[str, float]) -> None:
        self.compiled, self.eager = compiled, eager
        self.stages: list[tuple[str, str]] = []

    def __call__(self, profile, run, stage) -> float:  # noqa: ANN001
        frames = run()
        assert frames.shape == (N, 80, 48, 3) and frames.dtype == np.uint8
        self.stages.append((profile.name, stage))
        return (self.eager if stage == "eager" else self.compiled)[profile.name]


@pytest.fixture
def room(tmp_path, monkeypatch):
    """A tiny compiled auto room under tmp_path (its own compile cache) and a list of the profiles built."""
    monkeypatch.setenv("FLASHTALK_LIVE_BENCHMARK", "1")
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path / "before"))  # restored after the test
    for name, text in CANDIDATES.items():
        (tmp_path / f"{name}.toml").write_text(text)
    built: list[str] = []

    class CountingRenderer(renderer_mod.FlashTalkRenderer):  # the real renderer; each build of a profile noted
        def __init__(self, engine, **kw) -> None:  # noqa: ANN001
            built.append(engine.profile.name)
            super().__init__(engine, **kw)

    monkeypatch.setattr(renderer_mod, "FlashTalkRenderer", CountingRenderer)
    torch._dynamo.reset()
    yield tmp_path, built
    torch._dynamo.reset()


def _build(root: Path, timer: FakeTimer, *extra: str):
    cands = json.dumps([str(root / f"{n}.toml") for n in CANDIDATES])
    s = flashtalk_settings(root, N, 'renderer.kind="flashtalk"', 'model.profile="auto"', f"model.auto_candidates={cands}",
                           "model.auto_chunks=2", 'model.random_weights="tiny"', "model.compile=true",
                           "model.auto_compiled_ratio=0.8", *extra, environ={"FLASHTALK_LIVE_BENCHMARK": "1"})
    return build_flashtalk_renderer(FlashTalkConfig.from_settings(s), chunk_timer=timer)


def _record(root: Path) -> dict:
    return json.loads((root / "state" / "compile-cache" / AUTO_MEMORY_FILE).read_text())


def _rewrite_record(root: Path, edit: Callable[[dict], object]) -> Path:
    """Edit the record on disk as a room on another day or card would have left it; returns its path."""
    path = root / "state" / "compile-cache" / AUTO_MEMORY_FILE
    rec = _record(root)
    edit(rec)
    path.write_text(json.dumps(rec))
    return path


def _first_search(root: Path, built: list[str]) -> None:
    """The full search of a fresh room: eager tiny_q, tiny_f, then tiny_f compiled and kept; the record written."""
    timer = FakeTimer(COMPILED, EAGER)
    buf = capture_logs()
    r = _build(root, timer)
    try:
        assert r.profile.name == "tiny_f"
        assert timer.stages == [("tiny_q", "eager")] * 2 + [("tiny_f", "eager")] * 2 + [("tiny_f", "compiled")] * 2
        assert built == ["tiny_q", "tiny_f"]
        chosen = log_lines(buf, "profile_chosen")[0]
        assert chosen["remembered"] is False and chosen["eager_trials"] == ["tiny_q", "tiny_f"]
        assert r.drift()["auto"]["remembered"] is False and r.drift()["auto"]["remembered_age_s"] is None
        assert r.drift()["auto"]["eager_trials"] == ["tiny_q", "tiny_f"]
    finally:
        r.close()
    rec = _record(root)
    assert rec["eager"] == {"tiny_q": [0.5, 0.5], "tiny_f": [0.3, 0.3]} and rec["compiled"] == {"tiny_f": [0.25, 0.25]}
    assert rec["choice"] == "tiny_f" and rec["fits"] is True and rec["ratio"] == pytest.approx(0.25 / 0.30)
    assert rec["fingerprint"]["device"] == "cpu" and rec["fingerprint"]["compile"] is True
    built.clear()


@pytest.mark.timeout(900)
def test_a_restart_skips_the_eager_trials_and_builds_only_the_remembered_winner(room) -> None:
    from prometheus_client import generate_latest

    from flashtalk_live.metrics import metrics_registry

    root, built = room
    _first_search(root, built)
    path = _rewrite_record(root, lambda r: r.update(written_unix=r["written_unix"] - 86400))  # a day ago
    before = path.read_bytes()
    torch._dynamo.reset()  # a restart: a fresh process keeps only the folder

    timer = FakeTimer(COMPILED, EAGER)
    buf = capture_logs()
    r = _build(root, timer)
    try:
        assert r.profile.name == "tiny_f" and r.ready()
        assert timer.stages == [("tiny_f", "compiled")] * 2  # no eager trial; the winner compiled and timed
        assert built == ["tiny_f"]  # only one profile built
        assert [(m["stage"], m["profile"]) for m in log_lines(buf, "profile_measured")] == [("compiled", "tiny_f")]
        assert log_lines(buf, "auto_remembered")[0]["choice"] == "tiny_f"
        chosen = log_lines(buf, "profile_chosen")[0]
        assert chosen["remembered"] is True and chosen["remembered_age_s"] >= 86400 and chosen["eager_trials"] == []
        d = r.drift()["auto"]
        assert d["remembered"] is True and d["remembered_age_s"] >= 86400 and d["eager_trials"] == []
        assert [(e["profile"], e["p90_s"]) for e in d["eager"]] == [("tiny_q", 0.5), ("tiny_f", 0.3)]  # remembered
        assert [m["profile"] for m in d["measured"]] == ["tiny_f"]
        assert d["compiled_ratio"] == pytest.approx(0.25 / 0.30, abs=1e-4)
        assert r.render(render_chunk(0, N, seed=0)).shape == (N, 80, 48, 3)
        text = generate_latest(metrics_registry(lambda: {"renderer": {"active": "flashtalk", "drift": r.drift()}})).decode()
        assert "flashtalk_auto_remembered 1.0" in text and "flashtalk_auto_remembered_age_seconds" in text
    finally:
        r.close()
    assert path.read_bytes() == before  # nothing new learned: the record (and its age) stays


@pytest.mark.timeout(900)
def test_a_remembered_winner_that_now_misses_continues_the_search_and_rewrites_the_record(room) -> None:
    root, built = room
    _first_search(root, built)
    torch._dynamo.reset()
    slower = dict(COMPILED, tiny_f=0.40)  # tiny_f compiled now misses 0.272: ratio 0.40 / 0.30 = 1.33
    timer = FakeTimer(slower, EAGER)
    buf = capture_logs()
    r = _build(root, timer)
    try:
        # tiny_q is still predicted to miss (0.50 x 1.33); tiny_r was never timed: its eager trial runs now,
        # 0.15 x 1.33 = 0.20 fits, so it is compiled and kept
        assert timer.stages == ([("tiny_f", "compiled")] * 2 + [("tiny_r", "eager")] * 2
                                + [("tiny_r", "compiled")] * 2)
        assert r.profile.name == "tiny_r" and built == ["tiny_f", "tiny_r"]
        chosen = log_lines(buf, "profile_chosen")[0]
        assert chosen["remembered"] is True and chosen["eager_trials"] == ["tiny_r"]
        assert r.drift()["auto"]["eager_trials"] == ["tiny_r"]
        assert log_lines(buf, "auto_memory_saved")[0]["remembered"] is True
    finally:
        r.close()
    rec = _record(root)
    assert rec["choice"] == "tiny_r" and rec["fits"] is True
    assert rec["eager"] == {"tiny_q": [0.5, 0.5], "tiny_f": [0.3, 0.3], "tiny_r": [0.15, 0.15]}
    assert rec["compiled"] == {"tiny_f": [0.4, 0.4], "tiny_r": [0.18, 0.18]}
    assert rec["ratio"] == pytest.approx((0.40 / 0.30 + 0.18 / 0.15) / 2)

    # The next restart: tiny_r now compiles faster (0.10 / 0.15: ratio 0.67), which alone would predict tiny_f to
    # fit (0.30 x 0.67 = 0.20); but tiny_f compiled and missed before: it is not compiled again.
    torch._dynamo.reset()
    built.clear()
    timer = FakeTimer(dict(COMPILED, tiny_f=0.40, tiny_r=0.10), EAGER)
    before = _record(root)
    r = _build(root, timer)
    try:
        assert timer.stages == [("tiny_r", "compiled")] * 2 and built == ["tiny_r"] and r.profile.name == "tiny_r"
    finally:
        r.close()
    assert _record(root) == before, "the remembered winner was kept: nothing new to write"

    # And if tiny_r now misses badly (0.9 s), nothing fits and the remembered miss tiny_f (0.40) is the fastest: it
    # is built and timed before it is kept, never kept unbuilt.
    torch._dynamo.reset()
    built.clear()
    timer = FakeTimer(dict(COMPILED, tiny_f=0.40, tiny_r=0.90), EAGER)
    r = _build(root, timer)
    try:
        assert timer.stages == [("tiny_r", "compiled")] * 2 + [("tiny_f", "compiled")] * 2
        assert r.profile.name == "tiny_f" and built == ["tiny_r", "tiny_f"] and r.profile_choice.fits is False
    finally:
        r.close()


@pytest.mark.timeout(900)
def test_another_gpu_or_decoder_runs_the_full_search(room) -> None:
    root, built = room
    _first_search(root, built)
    _rewrite_record(root, lambda r: r["fingerprint"].update(device="NVIDIA H200"))  # the folder of another card
    for extra, changed in (((), ["device"]), (('model.decoder="taehv"',), ["decoder"])):
        torch._dynamo.reset()
        timer = FakeTimer(COMPILED, EAGER)
        buf = capture_logs()
        r = _build(root, timer, *extra)
        try:
            assert r.profile.name == "tiny_f" and built == ["tiny_q", "tiny_f"]
            assert timer.stages == [("tiny_q", "eager")] * 2 + [("tiny_f", "eager")] * 2 + [("tiny_f", "compiled")] * 2
            assert log_lines(buf, "auto_memory_stale")[0]["changed"] == changed
            assert not log_lines(buf, "auto_remembered") and r.drift()["auto"]["remembered"] is False
        finally:
            r.close()
        assert _record(root)["fingerprint"]["device"] == "cpu"  # rewritten for this machine and settings
        assert _record(root)["fingerprint"]["decoder"] == ("taehv" if extra else "wan")
        built.clear()


@pytest.mark.timeout(900)
def test_a_corrupt_record_gives_the_full_search_a_warning_and_a_new_record(room) -> None:
    root, built = room
    folder = root / "state" / "compile-cache"
    folder.mkdir(parents=True)
    (folder / AUTO_MEMORY_FILE).write_text('{"fingerprint": {"device": "cpu"}, "eager": {"tiny_f": [0.3')  # cut off
    timer = FakeTimer(COMPILED, EAGER)
    buf = capture_logs()
    r = _build(root, timer)
    try:
        assert r.profile.name == "tiny_f" and built == ["tiny_q", "tiny_f"]
        assert [s for s in timer.stages if s[1] == "eager"] == [("tiny_q", "eager")] * 2 + [("tiny_f", "eager")] * 2
        warned = log_lines(buf, "auto_memory_unreadable")
        assert len(warned) == 1 and warned[0]["level"] == "warning"
    finally:
        r.close()
    assert _record(root)["choice"] == "tiny_f"  # replaced by a good one


@pytest.mark.timeout(300)
def test_without_compile_nothing_is_remembered(room) -> None:
    """A plain (uncompiled) room measures as it runs and stops at the first fit: no record, no cache folder."""
    root, built = room
    timer = FakeTimer({"tiny_q": 0.40, "tiny_f": 0.10, "tiny_r": 0.05}, {})
    for _ in range(2):
        r = _build(root, timer, "model.compile=false")
        try:
            assert r.profile.name == "tiny_f" and r.drift()["auto"]["remembered"] is False
        finally:
            r.close()
    assert timer.stages == ([("tiny_q", "plain")] * 2 + [("tiny_f", "plain")] * 2) * 2
    assert not (root / "state" / "compile-cache").exists()


@pytest.mark.timeout(900)
def test_a_record_that_can_be_neither_read_nor_written_costs_only_the_trials(room) -> None:
    """A directory where the record belongs: reading and the atomic rename both fail; the room still starts."""
    root, built = room
    (root / "state" / "compile-cache" / AUTO_MEMORY_FILE).mkdir(parents=True)
    timer = FakeTimer(COMPILED, EAGER)
    buf = capture_logs()
    r = _build(root, timer)
    try:
        assert r.ready() and r.profile.name == "tiny_f" and built == ["tiny_q", "tiny_f"]
        assert [w["level"] for w in log_lines(buf, "auto_memory_unreadable")] == ["warning"]
        assert [w["level"] for w in log_lines(buf, "auto_memory_not_saved")] == ["warning"]
    finally:
        r.close()
    assert [p.name for p in (root / "state" / "compile-cache").glob(f".{AUTO_MEMORY_FILE}*")] == []  # no leftovers


def test_the_code_digest_follows_the_code_that_runs_inside_a_chunk(tmp_path) -> None:
    """An upgrade that changes model/engine/quant code re-measures even under the same package version; other code
    (the console, say) does not."""
    import shutil

    pkg = Path(auto_memory.__file__).parents[1]
    copy = tmp_path / "flashtalk_live"
    for folder in (*auto_memory.SPEED_CODE, "console"):
        shutil.copytree(pkg / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "static"))
    base = auto_memory.code_digest(copy)
    assert base == auto_memory.code_digest(pkg) and len(base) == 16
    (copy / "console" / "app.py").write_text("# changed\n")
    assert auto_memory.code_digest(copy) == base
    sampler = copy / "engine" / "sampler.py"
    sampler.write_text(sampler.read_text() + "\n# a faster sampler\n")
    assert auto_memory.code_digest(copy) != base
    assert _fingerprint()["code"] == auto_memory.code_digest(pkg)
