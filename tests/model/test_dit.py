"""DiT port: exact 14B state-dict manifest, golden parity with the reference (float32, CPU), attention backends."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flashtalk_live.model import attention as attn_mod
from flashtalk_live.model.attention import AttentionBackendError, attention
from flashtalk_live.model.dit import DiTConfig, DiTInputError, DiTInputs, FlashTalkDiT, TokenSplit

from support.parity import parity_dit, parity_dit_inputs
from support.tensors import assert_close, errors as _err

FIX = Path(__file__).resolve().parents[1] / "fixtures"
DIT = FIX / "parity" / "dit"
MANIFEST = FIX / "reference" / "dit_14b.keys"
# README "Determinism and tolerances": single-module fixtures.
REL_L2_TOL, MAX_ABS_TOL = 1e-5, 1e-4

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> FlashTalkDiT:
    return parity_dit()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return parity_dit_inputs()


def _seq_len() -> int:
    with safe_open(DIT / "inputs.safetensors", "pt") as f:
        return int(f.metadata()["seq_len"])


def _batched(inp: dict[str, torch.Tensor], case: dict[str, torch.Tensor]) -> DiTInputs:
    """The reference call model([x], t=t, context=[context], seq_len, clip_fea, y=[y], audio)[0] as the DiT's one
    input form: (x, t, context, clip_fea, y, audio), batched tensors."""
    return DiTInputs(case["x"][None], case["t"], inp["context"][None], inp["clip_fea"], inp["y"][None], inp["audio"])


def _run_case(model: FlashTalkDiT, inp: dict[str, torch.Tensor], case: dict[str, torch.Tensor], **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(*_batched(inp, case), **kw)[0]


# ------------------------------------------------------------------------------------------ manifest


def test_14b_on_meta_has_exactly_the_manifest_keys_and_shapes():
    with torch.device("meta"):
        model = FlashTalkDiT(DiTConfig.flashtalk_14b())
    got = [f"{k}\t{list(v.shape)}" for k, v in model.state_dict().items()]
    want = MANIFEST.read_text().splitlines()
    gk = dict(line.split("\t") for line in got)
    wk = dict(line.split("\t") for line in want)
    missing = sorted(set(wk) - set(gk))
    unexpected = sorted(set(gk) - set(wk))
    misshaped = sorted(f"{k}: ours {gk[k]} manifest {wk[k]}" for k in set(gk) & set(wk) if gk[k] != wk[k])
    report = "\n".join(
        [f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected] + [f"shape: {s}" for s in misshaped]
    )
    assert not report, report
    assert got == want, "same keys and shapes but a different order"
    assert sum(v.numel() for v in model.state_dict().values()) == 18_882_046_784


def test_14b_meta_forward_at_default_geometry():
    # 768x448, 33 frames -> latent 16 x 9 x 96 x 56, 12,096 tokens: shapes flow through all 40 blocks.
    with torch.device("meta"):
        model = FlashTalkDiT(DiTConfig.flashtalk_14b()).to(torch.bfloat16)
        out = model(
            torch.empty(1, 16, 9, 96, 56), torch.tensor([1000.0]), torch.empty(1, 37, 4096),
            torch.empty(1, 257, 1280), torch.empty(1, 20, 9, 96, 56), torch.empty(1, 33, 5, 12, 768),
        )
    assert out.shape == (1, 16, 9, 96, 56) and out.dtype == torch.float32


# ------------------------------------------------------------------------------------------ config


def test_config_from_fixture_and_released_style_json():
    cfg = DiTConfig.from_dict(json.loads((DIT / "config.json").read_text()))
    assert (cfg.dim, cfg.num_heads, cfg.head_dim, cfg.num_layers, cfg.ffn_dim, cfg.text_dim) == (256, 2, 128, 2, 384, 32)
    assert (cfg.intermediate_dim, cfg.output_dim, cfg.context_tokens) == (6, 64, 32)
    released = {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 5120, "eps": 1e-06, "ffn_dim": 13824,
        "freq_dim": 256, "in_dim": 36, "model_type": "i2v", "num_heads": 40, "num_layers": 40, "out_dim": 16,
        "text_len": 512,
    }
    assert DiTConfig.from_dict(released) == DiTConfig.flashtalk_14b()
    with pytest.raises(ValueError, match="unknown keys.*'dimm'"):
        DiTConfig.from_dict({**released, "dimm": 3})
    with pytest.raises(ValueError, match="window_size"):
        DiTConfig(window_size=(4, 4))
    with pytest.raises(ValueError, match="not divisible"):
        DiTConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="i2v"):
        DiTConfig.from_dict({**released, "model_type": "t2v"})


# ------------------------------------------------------------------------------------------ parity


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case_name", ["case_a", "case_b"])
def test_parity_output_and_intermediates(tiny, inputs, case_name):
    case = load_file(DIT / f"{case_name}.safetensors")
    assert_close(f"{case_name} out", _run_case(tiny, inputs, case, seq_len=_seq_len()), case["out"])

    with torch.no_grad():
        emb = tiny.embed(_batched(inputs, case))
        assert_close(f"{case_name} patch_embedding_out", emb.tokens.transpose(1, 2).reshape(1, -1, *emb.grid),
                     case["inter.patch_embedding_out"])
        assert_close(f"{case_name} block_in", emb.tokens, case["inter.block_in"])
        from flashtalk_live.model.dit import timestep_sinusoid
        assert_close(f"{case_name} time_embedding_in", timestep_sinusoid(case["t"], 256), case["inter.time_embedding_in"])
        assert_close(f"{case_name} time_embedding_out", emb.e, case["inter.time_embedding_out"])
        assert_close(f"{case_name} time_projection_out", emb.e0.flatten(1), case["inter.time_projection_out"])
        if case_name == "case_a":
            assert_close("img_emb_out", emb.context[:, :257], case["inter.img_emb_out"])
            assert_close("text_embedding_out_first_rows", emb.context[:, 257:257 + 18], case["inter.text_embedding_out_first_rows"])
            assert torch.equal(emb.context[:, 257 + 17], emb.context[:, -1])  # padding rows = text_embedding(0)
            assert_close("audio_proj_out", emb.audio, case["inter.audio_proj_out"])
            first, later = tiny.audio_proj.window_index(3)
            assert torch.equal(first[None].float(), case["inter.audio_index_first_frame"])
            assert torch.equal(later.float(), case["inter.audio_index_latter_frames"])
        inp = emb.block_inputs()
        x = tiny.blocks[0](emb.tokens, inp)
        assert_close(f"{case_name} block0_out", x, case["inter.block0_out"])
        x = tiny.blocks[1](x, inp)
        assert_close(f"{case_name} block1_out", x, case["inter.block1_out"])
        assert_close(f"{case_name} head_out", tiny.head(x, emb.e), case["inter.head_out"])


@pytest.mark.timeout(120)
def test_padding_does_not_change_the_result(tiny, inputs):
    case = load_file(DIT / "case_b.safetensors")
    padded = _run_case(tiny, inputs, case, seq_len=_seq_len() + 7)  # extra tokens are masked keys
    assert_close("case_b padded seq_len", padded, case["out"])
    with torch.no_grad():  # t as one scalar tensor for the batch
        out = tiny(*_batched(inputs, case)[:1], case["t"].reshape(()), *_batched(inputs, case)[2:])[0]
    assert_close("case_b scalar t", out, case["out"])


class ThreadRankSplit(TokenSplit):
    """A simulated rank (a thread) of a sequence-parallel forward: its slice of the tokens, self-attention over
    every rank's keys/values, head outputs joined in rank order: the hooks a real split (UlyssesSplit) fills."""

    def __init__(self, rank: int, ranks: int, barrier: threading.Barrier, shared: dict):
        super().__init__(self._attention)
        self.rank, self.ranks, self.barrier, self.shared = rank, ranks, barrier, shared

    def _exchange(self, key: str, value):
        self.shared[(key, self.rank)] = value
        self.barrier.wait()
        got = [self.shared[(key, r)] for r in range(self.ranks)]
        self.barrier.wait()
        return got

    def _attention(self, q, k, v, *, k_lens=None):
        kv = self._exchange("kv", (k, v))
        return attention(q, torch.cat([a for a, _ in kv], dim=1), torch.cat([b for _, b in kv], dim=1), k_lens=k_lens)

    def bounds(self, seq_len: int) -> tuple[int, int]:
        return self.rank * seq_len // self.ranks, (self.rank + 1) * seq_len // self.ranks

    def gather(self, local):
        return torch.cat(self._exchange("out", local), dim=1)


@pytest.mark.timeout(120)
def test_sequence_parallel_slices_reproduce_the_full_forward(tiny, inputs):
    """Two simulated ranks (threads) run the DiT's own forward with a TokenSplit whose slices split latent frames.

    This is the contract a real sequence-parallel split relies on: the forward's hooks, in order.
    """
    case = load_file(DIT / "case_a.safetensors")
    ranks, seq_len = 2, 40  # 36 tokens padded to 40: rank 0 [0, 20), rank 1 [20, 40); 12 tokens per frame
    barrier = threading.Barrier(ranks)
    shared: dict = {}
    outs: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def run(rank):
        try:
            with torch.no_grad():
                outs[rank] = tiny(*_batched(inputs, case), seq_len=seq_len,
                                  split=ThreadRankSplit(rank, ranks, barrier, shared))[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    tiny.set_input_cache(False)  # the two threads share one model: no cache filled by both at once
    try:
        threads = [threading.Thread(target=run, args=(r,)) for r in range(ranks)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        tiny.set_input_cache(True)
    assert not errors, errors
    for rank in range(ranks):
        assert_close(f"case_a two-rank slices, rank {rank}", outs[rank], case["out"])
    with torch.no_grad():
        emb = tiny.embed(_batched(inputs, case), seq_len=seq_len)
    assert [r[0] for r in emb.block_inputs(0, 20).frame_runs] == [0, 1]
    assert emb.block_inputs(20, 40).frame_runs == ((1, 0, 4), (2, 4, 16))


@pytest.mark.timeout(120)
def test_bf16_runs_and_stays_close(tiny, inputs):
    case = load_file(DIT / "case_a.safetensors")
    model = FlashTalkDiT(tiny.cfg)
    model.load_state_dict(tiny.state_dict())
    model = model.to(torch.bfloat16)
    out = _run_case(model, inputs, case)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    mx, rel = _err(out, case["out"])
    print(f"bf16 vs float32 golden: max_abs {mx:.3e} rel_l2 {rel:.3e}")
    assert rel < 0.1  # bf16 differs at the 1e-2 level (README); a dtype bug would be far off


def test_bad_inputs_are_rejected_with_clear_errors(tiny, inputs):
    case = load_file(DIT / "case_a.safetensors")
    x, t, ctx, clip, y, audio = _batched(inputs, case)
    with pytest.raises(DiTInputError, match="audio: expected"):
        tiny(x, t, ctx, clip, y, audio[:, :8])
    with pytest.raises(DiTInputError, match="in_dim"):
        tiny(x, t, ctx, clip, y[:, :19], audio)
    with pytest.raises(DiTInputError, match="seq_len 10"):
        tiny(x, t, ctx, clip, y, audio, seq_len=10)
    with pytest.raises(DiTInputError, match=r"context: expected \[B, L <= 512, 32\]"):
        tiny(x, t, torch.zeros(1, 513, 32), clip, y, audio)
    with pytest.raises(DiTInputError, match="not divisible"):
        tiny(x[:, :, :, :7], t, ctx, clip, y[:, :, :, :7], audio)
    with pytest.raises(DiTInputError, match="clip_fea"):
        tiny(x, t, ctx, clip[..., :1000], y, audio)
    # One input form: unbatched tensors, lists and plain numbers are refused, not guessed at.
    with pytest.raises(DiTInputError, match=r"x: expected a 5-D tensor \[B, out_dim, T, H, W\], got shape"):
        tiny(x[0], t, ctx, clip, y, audio)
    with pytest.raises(DiTInputError, match="context: expected a 3-D tensor"):
        tiny(x, t, [ctx[0]], clip, y, audio)
    with pytest.raises(DiTInputError, match="t: expected a tensor"):
        tiny(x, 500.0, ctx, clip, y, audio)


# ------------------------------------------------------------------------------------------ attention


def _naive(q, k, v, lens=None):
    out = []
    for i in range(q.shape[0]):
        n = k.shape[1] if lens is None else lens[i]
        s = torch.einsum("qhd,khd->hqk", q[i].double(), k[i, :n].double()) / q.shape[-1] ** 0.5
        out.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v[i, :n].double()))
    return torch.stack(out)


def test_attention_sdpa_matches_naive_with_and_without_key_lengths():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 4, 16, generator=g) for n in (5, 7, 7))
    assert _err(attention(q, k, v), _naive(q, k, v))[0] < 1e-5
    assert _err(attention(q, k, v, k_lens=[7, 3, 1]), _naive(q, k, v, [7, 3, 1]))[0] < 1e-5
    assert _err(attention(q, k, v, k_lens=torch.tensor([4, 4, 4])), _naive(q, k, v, [4, 4, 4]))[0] < 1e-5
    with pytest.raises(ValueError, match="k_lens entry 8"):
        attention(q, k, v, k_lens=[8, 1, 1])
    with pytest.raises(ValueError, match=r"\[B, L, H, D\]"):
        attention(q[0], k[0], v[0])


def test_attention_backend_selection():
    assert attn_mod.get_default_backend() == "sdpa"
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'xformers'"):
        attn_mod.set_default_backend("xformers")
    q = torch.randn(1, 3, 2, 8)
    if attn_mod.flash_available():
        pytest.skip("flash-attn installed here; the not-installed error path cannot be exercised")
    with pytest.raises(AttentionBackendError, match="flash-attn is not usable"):
        attn_mod.set_default_backend("flash")
    assert attn_mod.get_default_backend() == "sdpa"  # unchanged after the failed switch
    with pytest.raises(AttentionBackendError, match="flash-attn is not usable"):
        attention(q, q, q, backend="flash")


def test_flash_dtype_keeps_half_inputs_where_the_build_has_their_kernels():
    # fa3-fwd has no fp16 kernels: on the H100 (6b4d463) CLIP's fp16 attention failed in it ("does not support FP16")
    assert attn_mod.flash_dtype("flash_attn_interface", torch.float16) == torch.float16
    assert attn_mod.flash_dtype("flash_attn", torch.bfloat16) == torch.bfloat16
    assert attn_mod.flash_dtype("flash_attn", torch.float32) == torch.bfloat16
    assert attn_mod.flash_dtype("fa3_fwd_interface", torch.float16) == torch.bfloat16
    assert attn_mod.flash_dtype("fa3_fwd_interface", torch.bfloat16) == torch.bfloat16


def test_cudnn_backend_matches_sdpa_and_traces_whole():
    """`cudnn` only reorders SDPA's kernels: same numbers, and torch.compile keeps it in one graph (no break at the
    context manager), so compiled DiT blocks can use it."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 9, 2, 8) for _ in range(3))
    for lens in (None, [9, 9], [9, 4]):
        ref = _naive(q, k, v, lens or [9, 9])
        assert _err(attention(q, k, v, k_lens=lens, backend="cudnn"), ref)[0] < 1e-5
    compiled = torch.compile(lambda a, b, c: attention(a, b, c, backend="cudnn"), fullgraph=True, backend="eager")
    assert _err(compiled(q, k, v), _naive(q, k, v, [9, 9]))[0] < 1e-5

