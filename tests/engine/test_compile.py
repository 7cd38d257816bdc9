"""model.compile: torch.compile of the DiT blocks keeps the state-dict keys and the golden output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.engine.engine import compile_dit_blocks
from flashtalk_live.engine.host_weights import park_context_projections
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT

DIT = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "dit"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("parked", [False, True], ids=["resident", "context-projections-parked"])
def test_compiled_blocks_match_the_golden_output_and_keep_keys(parked: bool):
    model = FlashTalkDiT(DiTConfig.from_dict(json.loads((DIT / "config.json").read_text())))
    model.load_state_dict(load_file(DIT / "weights.safetensors"), strict=True)
    model.eval()
    keys = list(model.state_dict())
    if parked:  # as the factory does on a GPU: parked before the blocks compile
        park_context_projections(model)
    compile_dit_blocks(model)
    if not parked:
        assert list(model.state_dict()) == keys  # released checkpoints still load strictly
    # room for every chunk shape (profile, lead-in lengths, auto's trials) x block kind before torch goes eager
    assert torch._dynamo.config.recompile_limit >= 64
    inp, case = load_file(DIT / "inputs.safetensors"), load_file(DIT / "case_a.safetensors")
    with torch.no_grad():
        out = model(case["x"][None], case["t"], inp["context"][None], inp["clip_fea"], inp["y"][None], inp["audio"])[0]
        again = model(case["x"][None], case["t"], inp["context"][None], inp["clip_fea"], inp["y"][None], inp["audio"])[0]
    err = (out - case["out"]).norm() / case["out"].norm()
    print(f"\ncompiled DiT vs golden: rel L2 {err:.2e}")
    assert err < 1e-5
    # The compiled blocks take the session's cached context K/V (computed once, outside the compiled graph).
    assert model.input_cache.hits["session"] == 1 and torch.equal(again, out)


def test_cuda_graphs_option_is_reduce_overhead_and_off_by_default():
    from flashtalk_live.engine.engine import dit_compile_options

    assert dit_compile_options() == {"dynamic": False, "mode": None}
    assert dit_compile_options(cuda_graphs=True) == {"dynamic": False, "mode": "reduce-overhead"}


@pytest.mark.timeout(900)
def test_cuda_graph_path_marks_a_step_per_dit_forward_and_keeps_the_chunk(monkeypatch):
    """model.cuda_graphs plumbing on the CPU (torch skips the graphs off CUDA, the blocks run compiled): the engine
    starts a graph-tree step before every DiT forward and the chunk equals the eager one."""
    import numpy as np

    from flashtalk_live.checkpoints.random_weights import random_engine_models
    from flashtalk_live.engine.engine import FlashTalkEngine, uses_cuda_graphs
    from flashtalk_live.engine.profile import resolve_profile

    torch.manual_seed(0)
    models = random_engine_models("tiny", "cpu", torch.float32)
    profile = resolve_profile("fast").replace(name="tiny", height=48, width=32)
    image = (np.random.default_rng(0).random((48, 32, 3)) * 255).astype(np.uint8)
    context = torch.randn(24, models.text.text_dim, generator=torch.Generator().manual_seed(0)) * 0.1
    window = (0.1 * np.sin(np.arange(profile.window_samples) / 30)).astype(np.float32)

    def chunk() -> np.ndarray:
        engine = FlashTalkEngine(models, profile, "cpu", torch.float32)
        engine.start_session(image, "p", context=context)
        return engine.generate(engine.audio_features(window)).frames

    eager = chunk()
    marks = []
    original = torch.compiler.cudagraph_mark_step_begin
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: (marks.append(1), original())[1])
    torch._dynamo.reset()
    compile_dit_blocks(models.dit, cuda_graphs=True)
    assert uses_cuda_graphs(models.dit)
    try:
        graphed = chunk()
    finally:
        torch._dynamo.reset()
    assert len(marks) == profile.sample_steps  # one graph-tree step per DiT forward
    assert np.abs(graphed.astype(int) - eager.astype(int)).max() <= 2  # compiled float32 vs eager: rounding
