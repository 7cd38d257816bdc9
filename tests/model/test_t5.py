"""umT5 encoder and its tokenizer wrapper: released key manifest, reference parity, cleaning, padding."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashtalk_live.model.t5 import UMT5_XXL, T5Config, T5Encoder, relative_position_bucket, trim_to_mask
from flashtalk_live.model.text import TokenizerError, UMT5Tokenizer, clean_text, encode_prompts

from support.tensors import assert_close

FIX = Path(__file__).resolve().parents[1] / "fixtures"
PARITY = FIX / "parity" / "t5"
MANIFEST = FIX / "reference" / "t5_umt5_xxl_encoder.keys"
TINY = T5Config(vocab_size=512, dim=64, dim_attn=64, dim_ffn=160, num_heads=2, num_layers=2)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    cfg = json.loads((PARITY / "config.json").read_text())["overrides"]
    assert (cfg["dim"], cfg["dim_ffn"], cfg["num_heads"], cfg["encoder_layers"]) == (64, 160, 2, 2)
    model = T5Encoder(TINY).eval()
    model.load_state_dict(load_file(PARITY / "weights.safetensors"), strict=True)
    return model, load_file(PARITY / "io.safetensors")


def test_full_size_keys_and_shapes_match_manifest():
    want = []
    for line in MANIFEST.read_text().splitlines():
        key, shape = line.split("\t")
        want.append((key, [int(x) for x in shape.strip("[]").split(",")]))
    with torch.device("meta"):
        model = T5Encoder(UMT5_XXL)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336


def test_position_bias_is_exact(tiny):
    model, io = tiny
    bias = model.blocks[0].position_bias(160)
    print(f"t5 block0_pos_bias: max_abs={(bias - io['block0_pos_bias']).abs().max().item():.3e}")
    assert torch.equal(bias, io["block0_pos_bias"])


def test_bucket_scheme():
    rel = torch.tensor([-200, -128, -9, -8, -7, -1, 0, 1, 7, 8, 9, 127, 128, 1000])
    b = relative_position_bucket(rel, 32, 128)
    # keys before the query use buckets 0..15, after it 16..31; exact below 8, log up to 128, then clamped.
    assert b.tolist() == [15, 15, 8, 8, 7, 1, 0, 17, 23, 24, 24, 31, 31, 31]


@torch.no_grad()
def test_encoder_parity(tiny):
    model, io = tiny
    assert io["ids"].dtype == torch.int64 and io["mask"].dtype == torch.int64
    assert_close("hidden_full", model(io["ids"], io["mask"]), io["hidden_full"])
    (context,) = model.encode(io["ids"], io["mask"])
    assert_close("context", context, io["context"])
    # The mask really matters: without it the padded positions leak into the real ones.
    unmasked = model(io["ids"])[0, :137]
    assert ((unmasked - io["context"]).norm() / io["context"].norm()) > 1e-3


@torch.no_grad()
def test_half_precision_paths_run_close(tiny):
    model, io = tiny
    for dtype in (torch.bfloat16, torch.float16):
        half = T5Encoder(TINY).eval()
        half.load_state_dict(model.state_dict())
        half = half.to(dtype)
        out = half(io["ids"], io["mask"])[0, :137]
        assert out.dtype == dtype
        rel = ((out.double() - io["context"].double()).norm() / io["context"].double().norm()).item()
        print(f"t5 {dtype} vs fp32 reference: rel_l2={rel:.3e}")
        assert rel < 5e-2


def test_trim_to_mask():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    out = trim_to_mask(h, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]))
    assert [t.shape[0] for t in out] == [2, 3]


def test_bad_inputs(tiny):
    model, io = tiny
    with pytest.raises(ValueError, match="integer tensor"):
        model(io["ids"].float())
    with pytest.raises(ValueError, match="mask shape"):
        model(io["ids"], io["mask"][:, :10])


# ---- text cleaning and the tokenizer wrapper -------------------------------------------------


def test_clean_text():
    assert clean_text("  A person\n\tis   talking.  ") == "A person is talking."
    assert clean_text("fish &amp;amp; chips") == "fish & chips"  # unescaped twice, as the reference
    assert clean_text("\u201cHi\u201d she said, \u2018ok\u2019") == "\"Hi\" she said, 'ok'"
    assert clean_text("\u4f60\u597d\uff0c\u4e16\u754c\uff01") == "\u4f60\u597d,\u4e16\u754c!"  # full-width punctuation
    assert clean_text("\ufb01ne\u3000day") == "fine day"
    with pytest.raises(TypeError):
        clean_text(None)


def _make_tokenizer_folder(path: Path) -> None:
    """A small real fast tokenizer with umT5's conventions: pad 0, </s> 1, unk 2, '</s>' appended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a person is talking . only the foreground characters are moving , background remains static".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(path))


def test_tokenizer_pads_to_512_with_mask(tmp_path):
    _make_tokenizer_folder(tmp_path)
    tok = UMT5Tokenizer(tmp_path)
    ids, mask = tok(["a   person\nis talking .", "a " * 600])
    assert ids.shape == mask.shape == (2, 512) and ids.dtype == mask.dtype == torch.int64
    assert ids[0, :6].tolist() == [3, 4, 5, 6, 7, 1] and ids[0, 6:].eq(0).all()
    assert mask[0].sum().item() == 6 and mask[0, :6].eq(1).all()
    assert mask[1].sum().item() == 512 and ids[1, -1].item() == 1  # truncated, </s> kept


def test_encode_prompts_trims_to_true_length(tmp_path, tiny):
    model, _ = tiny
    _make_tokenizer_folder(tmp_path)
    (ctx,) = encode_prompts(model, UMT5Tokenizer(tmp_path), "a person is talking .")
    assert ctx.shape == (6, TINY.dim)


def test_missing_tokenizer_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="umT5 tokenizer folder not found"):
        UMT5Tokenizer(tmp_path / "google" / "umt5-xxl")
    with pytest.raises(TokenizerError, match="cannot load the umT5 tokenizer"):
        UMT5Tokenizer(tmp_path)  # exists but empty
