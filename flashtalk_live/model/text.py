"""Prompt text -> umT5 token ids: the reference's text cleaning, the tokenizer folder wrapper, 512-token padding.

The tokenizer is transformers' ``AutoTokenizer`` loaded from the released ``google/umt5-xxl`` folder,
strictly offline. Cleaning follows the reference's ``clean='whitespace'``: ``ftfy.fix_text`` (or a
documented subset of it when ftfy is not installed), HTML unescape twice, strip, collapse whitespace.
"""

from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path
from typing import Callable

import torch

__all__ = [
    "DEFAULT_PROMPT",
    "TEXT_LEN",
    "TokenizerError",
    "UMT5Tokenizer",
    "clean_text",
    "encode_prompts",
]

TEXT_LEN = 512
DEFAULT_PROMPT = (
    "A person is talking. Only the foreground characters are moving, the background remains static."
)

_ftfy_fix_text: Callable[[str], str] | None
try:  # the reference uses ftfy; it is optional here (see _fix_text_subset)
    from ftfy import fix_text as _ftfy_fix_text
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy_fix_text = None

_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
# C0/C1 controls except tab, newline, form feed, carriage return; plus a few invisible format chars.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufeff\ufff9-\ufffc]")
_WIDTH_OR_LIGATURE = re.compile("[\ufb00-\ufb06\uff01-\uff5e\uff61-\uffee\u3000]")


def _fix_text_subset(text: str) -> str:
    """The parts of ``ftfy.fix_text``'s defaults that matter for typed prompts (no mojibake repair):
    NFC, Latin ligatures and full/half-width forms folded (NFKC on those characters, U+3000 -> space),
    curly quotes straightened, control characters removed."""
    text = unicodedata.normalize("NFC", text)
    text = _WIDTH_OR_LIGATURE.sub(
        lambda m: " " if m.group() == "\u3000" else unicodedata.normalize("NFKC", m.group()), text
    )
    text = _SINGLE_QUOTES.sub("'", text)
    text = _DOUBLE_QUOTES.sub('"', text)
    return _CONTROL.sub("", text)


def clean_text(text: str) -> str:
    """The reference's ``whitespace_clean(basic_clean(text))``."""
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    text = _ftfy_fix_text(text) if _ftfy_fix_text is not None else _fix_text_subset(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TokenizerError(RuntimeError):
    """The tokenizer folder is missing or unusable."""


class UMT5Tokenizer:
    """``google/umt5-xxl`` tokenizer from a local folder; pads/truncates to ``text_len`` with a mask."""

    def __init__(self, folder: str | Path, text_len: int = TEXT_LEN) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerError(
                f"umT5 tokenizer folder not found: {folder} (expected the released 'google/umt5-xxl' folder "
                "inside the FlashTalk weights directory)"
            )
        if text_len < 2:
            raise ValueError("text_len must be >= 2")
        # transformers takes seconds to import: only when the tokenizer loads
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # transformers raises OSError/ValueError with varied messages
            raise TokenizerError(f"cannot load the umT5 tokenizer from {folder}: {exc}") from exc
        if self.tokenizer.pad_token_id is None:
            raise TokenizerError(f"tokenizer in {folder} defines no pad token")
        self.folder = folder
        self.text_len = text_len

    def __call__(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned, tokenised with special tokens (``</s>``), padded to ``text_len``.

        Returns ``(ids, mask)``, both int64 [B, text_len]; mask is 1 on real tokens.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("no prompt given")
        out = self.tokenizer(
            [clean_text(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return out.input_ids.long(), out.attention_mask.long()


@torch.no_grad()
def encode_prompts(encoder, tokenizer: UMT5Tokenizer, texts: str | list[str]) -> list[torch.Tensor]:
    """Prompts -> the DiT text context, one [true_len, dim] tensor per prompt (the reference's
    ``T5EncoderModel.__call__``). ``encoder`` is a :class:`flashtalk_live.model.t5.T5Encoder`."""
    ids, mask = tokenizer(texts)
    device = encoder.token_embedding.weight.device
    return encoder.encode(ids.to(device), mask.to(device))
