"""The FlashTalk-14B DiT (Wan2.1-I2V-14B + InfiniteTalk audio adapter) in pure PyTorch: config and module, no I/O.

State-dict keys, shapes and order equal the released checkpoint (tests/fixtures/reference/dit_14b.keys).

Forward (see `FlashTalkDiT.forward`; one input form, batched tensors):

    out = model(x, t, context, clip_fea, y, audio, seq_len=None)   # -> float32 [B, out_dim, T, H, W]

The forward is written once, as named stages: `embed` (validates: DiTInputError) -> `DiTEmbeddings.padded` ->
`DiTEmbeddings.block_inputs(start, end)` -> `run_blocks` -> `head` -> `unpatchify`. A `TokenSplit` decides the
padding, the token slice, the self-attention call and how the slices are gathered, so a sequence-parallel
caller (parallel/ulysses.py) passes `split=` and the same forward runs its rank's slice.

Numerics follow the reference: norms, modulation, residual adds, time embedding, head and the audio
output norm in float32; linears and attention in the parameter dtype; the residual stream is stored in
the parameter dtype between sub-layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .rope import apply_rope, rope_bands, rope_cos_sin

# The reference constructor's defaults (WanModel.__init__); a config.json omits what it leaves at these.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "model_type": "i2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "audio_window": 5,
    "intermediate_dim": 512,
    "output_dim": 768,
    "context_tokens": 32,
    "vae_scale": 4,
    "norm_input_visual": True,
    "norm_output_audio": True,
}
_IGNORED_KEYS = {"weight_init"}  # constructor switch, not architecture


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of the audio DiT. Defaults are the FlashTalk-14B values."""

    model_type: str = "i2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 36
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 40
    num_layers: int = 40
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    audio_window: int = 5
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    vae_scale: int = 4
    norm_input_visual: bool = True
    norm_output_audio: bool = True
    # Fixed in the reference (not constructor arguments): CLIP width, wav2vec layers and width, RoPE base.
    clip_dim: int = 1280
    audio_layers: int = 12
    audio_channels: int = 768
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "window_size", tuple(int(p) for p in self.window_size))
        if self.model_type != "i2v":
            raise ValueError(f"model_type must be 'i2v' (the audio DiT is image-to-video), got {self.model_type!r}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        if self.patch_size[0] != 1:
            raise ValueError(f"patch_size[0] must be 1 (audio tokens are per latent frame), got {self.patch_size}")
        if self.window_size != (-1, -1):
            raise ValueError(f"only full attention is supported, window_size must be (-1, -1), got {self.window_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        rope_bands(self.head_dim)
        if self.vae_scale < 2 or self.audio_window < 1:
            raise ValueError(f"need vae_scale >= 2 and audio_window >= 1, got {self.vae_scale}, {self.audio_window}")
        for name in ("in_dim", "out_dim", "dim", "ffn_dim", "freq_dim", "text_dim", "text_len", "num_layers",
                     "intermediate_dim", "output_dim", "context_tokens", "clip_dim", "audio_layers", "audio_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def flashtalk_14b(cls) -> "DiTConfig":
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DiTConfig":
        """From a released config.json (flat, diffusers style) or a parity fixture config.json (`constructor_kwargs`).

        Keys starting with '_' (diffusers bookkeeping) and `weight_init` are ignored; an absent key takes the
        reference constructor's default (REFERENCE_DEFAULTS), exactly as the reference would build it.
        Unknown keys are an error.
        """
        if "constructor_kwargs" in data:
            data = data["constructor_kwargs"]
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = dict(REFERENCE_DEFAULTS)
        unknown = []
        for k, v in data.items():
            if k.startswith("_") or k in _IGNORED_KEYS:
                continue
            if k not in known:
                unknown.append(k)
                continue
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        if unknown:
            raise ValueError(f"DiT config: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- layers


def _linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A linear in float32 whatever the weight dtype (the reference runs these under fp32 autocast)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32, scaled in the input dtype (WanRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input dtype (WanLayerNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


SelfAttentionFn = Callable[..., torch.Tensor]


@dataclass
class BlockInputs:
    """Everything a block needs besides the token stream x [B, L_local, dim]."""

    e0: torch.Tensor  # [B, 6, dim] float32 modulation input (time_projection output)
    context: torch.Tensor  # [B, n_img + text_len, dim]: image tokens first, then text
    n_img: int  # leading image tokens in context (257)
    audio: torch.Tensor  # [B, N_t, context_tokens, output_dim] audio tokens per latent frame
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin float32 [L_local, head_dim // 2]
    k_lens: list[int] | None  # valid self-attention keys per sample over the full sequence; None: all
    frame_runs: tuple[tuple[int, int, int], ...]  # (latent frame, local start, local end) of the local tokens
    tokens_per_frame: int
    self_attention: SelfAttentionFn = attention  # the one self-attention call: (q, k, v, k_lens=) on [B, L, H, D]
    context_kv: tuple["CrossKV", ...] | None = None  # per block, from `FlashTalkDiT.context_kv`; None: project per call


class CrossKV(NamedTuple):
    """One block's text and image keys/values [B, L, H, D]: a function of the session's context alone."""

    k: torch.Tensor
    v: torch.Tensor
    k_img: torch.Tensor
    v_img: torch.Tensor


class QKVO(nn.Module):
    """The q, k, v, o projections and full-width q/k RMSNorms both attentions of a block share (as Wan's
    cross-attention subclasses its self-attention); state-dict keys in the released order."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()


class SelfAttention(QKVO):
    """Self-attention with full-width q/k RMSNorm and 3-D RoPE (WanSelfAttention)."""

    def forward(self, x: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        b, s = x.shape[:2]
        shape = (b, s, self.num_heads, self.head_dim)
        q = apply_rope(self.norm_q(self.q(x)).view(shape), *inp.rope)
        k = apply_rope(self.norm_k(self.k(x)).view(shape), *inp.rope)
        v = self.v(x).view(shape)
        out = inp.self_attention(q, k, v, k_lens=inp.k_lens)
        return self.o(out.type_as(x).flatten(2))


class ImageTextCrossAttention(QKVO):
    """Cross-attention to text and CLIP image tokens: two attentions, outputs summed before `o` (WanI2VCrossAttention)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def project_context(self, context: torch.Tensor, n_img: int) -> CrossKV:
        """Keys and values of the context [B, n_img + text_len, dim]; constant for a session, so cacheable."""
        b, n, d = context.shape[0], self.num_heads, self.head_dim
        ctx_img, ctx_txt = context[:, :n_img], context[:, n_img:]
        return CrossKV(
            k=self.norm_k(self.k(ctx_txt)).view(b, -1, n, d),
            v=self.v(ctx_txt).view(b, -1, n, d),
            k_img=self.norm_k_img(self.k_img(ctx_img)).view(b, -1, n, d),
            v_img=self.v_img(ctx_img).view(b, -1, n, d),
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor, n_img: int, kv: CrossKV | None = None) -> torch.Tensor:
        """`kv` (from project_context of this same context) skips the context projections; same numbers."""
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        if kv is None:
            kv = self.project_context(context, n_img)
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        # Text padding rows are attended to on purpose (reference: context_lens=None).
        out = attention(q, kv.k, kv.v).flatten(2) + attention(q, kv.k_img, kv.v_img).flatten(2)
        return self.o(out)


class AudioCrossAttention(nn.Module):
    """Each latent frame's visual tokens attend only to that frame's audio tokens (single-speaker path).

    No norm, RoPE or mask: the reference's multi-speaker RoPE is unused by FlashTalk (one speaker).
    """

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, dim * 2)

    def forward(self, x: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        b, s, c = x.shape
        n, d = self.num_heads, self.head_dim
        kv = self.kv_linear(inp.audio)  # [B, N_t, M, 2*dim]
        m = kv.shape[2]
        kv = kv.view(b, kv.shape[1], m, 2, n, d)
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]  # [B, N_t, M, H, D]
        q = self.q_linear(x).view(b, s, n, d)
        runs = inp.frame_runs
        per = inp.tokens_per_frame
        n_run_tokens = len(runs) * per
        uniform = (
            runs
            and all(e - st == per for _, st, e in runs)
            and all(runs[i][1] == i * per and runs[i][0] == runs[0][0] + i for i in range(len(runs)))
        )
        if uniform:
            # Common case (whole frames from token 0): batch the frames as (B * frames) sequences.
            f0, nf = runs[0][0], len(runs)
            qq = q[:, :n_run_tokens].reshape(b * nf, per, n, d)
            kk = k[:, f0:f0 + nf].reshape(b * nf, m, n, d)
            vv = v[:, f0:f0 + nf].reshape(b * nf, m, n, d)
            out = attention(qq, kk, vv).reshape(b, n_run_tokens, n, d)
            if n_run_tokens < s:  # sequence padding: no audio
                out = torch.cat([out, out.new_zeros(b, s - n_run_tokens, n, d)], dim=1)
        else:
            # Partial frames (a sequence-parallel slice): one attention per run of tokens of one frame.
            out = q.new_zeros(b, s, n, d)
            for frame, st, e in runs:
                out[:, st:e] = attention(q[:, st:e], k[:, frame], v[:, frame])
        return self.proj(out.flatten(2))


class DiTBlock(nn.Module):
    """Modulated self-attention, text+image cross-attention, audio cross-attention, modulated FFN (WanAttentionBlock)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm1 = LayerNorm32(dim, eps)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        self.norm3 = LayerNorm32(dim, eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = ImageTextCrossAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        self.norm2 = LayerNorm32(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.audio_cross_attn = AudioCrossAttention(dim, cfg.output_dim, cfg.num_heads)
        self.norm_x = LayerNorm32(dim, eps, affine=True) if cfg.norm_input_visual else nn.Identity()

    def forward(self, x: torch.Tensor, inp: BlockInputs, context_kv: CrossKV | None = None) -> torch.Tensor:
        """`context_kv`: this block's entry of `inp.context_kv` (run_blocks passes it; a compiled block sees tensors)."""
        dtype = x.dtype
        e = (self.modulation.float() + inp.e0).chunk(6, dim=1)  # 6 x [B, 1, dim] float32
        y = self.self_attn((self.norm1(x).float() * (1 + e[1]) + e[0]).to(dtype), inp)
        x = (x + y * e[2]).to(dtype)
        x = x + self.cross_attn(self.norm3(x), inp.context, inp.n_img, context_kv)
        x = x + self.audio_cross_attn(self.norm_x(x), inp)
        y = self.ffn((self.norm2(x).float() * (1 + e[4]) + e[3]).to(dtype))
        return (x + y * e[5]).to(dtype)


class Head(nn.Module):
    """Final modulated norm and projection to patch values; modulated by `e` (time_embedding output), not e0."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)
        self.norm = LayerNorm32(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], e [B, dim] float32 -> float32 [B, L, prod(patch) * out_dim]."""
        m = (self.modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
        return _linear32(self.head, self.norm(x).float() * (1 + m[1]) + m[0])


class ImageProjection(nn.Module):
    """CLIP features [B, 257, 1280] -> context tokens [B, 257, dim] (MLPProj: LN, Linear, GELU, Linear, LN)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim)
        )

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        return self.proj(clip_fea)


class AudioProjection(nn.Module):
    """Per-video-frame wav2vec windows -> `context_tokens` audio tokens per latent frame (AudioProjModel).

    Latent frame 0 takes video frame 0's whole window (audio_window vectors); latent frame n >= 1 takes its
    `vae_scale` video frames regrouped to audio_window + vae_scale - 1 vectors: first frame window slots
    0..mid, middle frames slot mid, last frame slots mid..end (mid = audio_window // 2).
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.window, self.vae_scale = cfg.audio_window, cfg.vae_scale
        self.context_tokens, self.output_dim = cfg.context_tokens, cfg.output_dim
        per_vec = cfg.audio_layers * cfg.audio_channels
        self.proj1 = nn.Linear(cfg.audio_window * per_vec, cfg.intermediate_dim)
        self.proj1_vf = nn.Linear((cfg.audio_window + cfg.vae_scale - 1) * per_vec, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.output_dim)
        self.norm = nn.LayerNorm(cfg.output_dim) if cfg.norm_output_audio else nn.Identity()
        self._index_cache: dict[tuple[int, torch.device | None], tuple[torch.Tensor, torch.Tensor]] = {}

    def window_index(self, n_latent: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(video frame, window slot) pairs: first latent frame [window, 2]; later ones [n_latent-1, window+vae_scale-1, 2].

        Kept per (n_latent, device): building them is a host->device copy, which would stall a CUDA queue.
        """
        key = (n_latent, None if device is None else torch.device(device))
        if key not in self._index_cache:
            first, later = self._window_index(n_latent)
            self._index_cache[key] = (first, later) if device is None else (first.to(device), later.to(device))
        return self._index_cache[key]

    def _window_index(self, n_latent: int) -> tuple[torch.Tensor, torch.Tensor]:
        w, sc, mid = self.window, self.vae_scale, self.window // 2
        first = torch.tensor([[0, j] for j in range(w)], dtype=torch.long)
        rows = []
        for n in range(1, n_latent):
            base = 1 + sc * (n - 1)
            pairs = [(base, j) for j in range(mid + 1)]
            pairs += [(base + i, mid) for i in range(1, sc - 1)]
            pairs += [(base + sc - 1, j) for j in range(mid, w)]
            rows.append(pairs)
        later = torch.tensor(rows, dtype=torch.long).view(n_latent - 1, w + sc - 1, 2)
        return first, later

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, 1 + vae_scale*(N_t-1), window, layers, channels] -> [B, N_t, context_tokens, output_dim].

        The output norm runs in float32; the result is in audio's dtype.
        """
        b, frames = audio.shape[:2]
        if (frames - 1) % self.vae_scale:
            raise ValueError(f"audio has {frames} video frames; expected 1 + {self.vae_scale} * (latent frames - 1)")
        n_latent = 1 + (frames - 1) // self.vae_scale
        first, later = self.window_index(n_latent, audio.device)
        a_first = audio[:, first[:, 0], first[:, 1]].reshape(b, 1, -1)
        a_later = audio[:, later[..., 0], later[..., 1]].reshape(b, n_latent - 1, -1)
        h = torch.cat([torch.relu(self.proj1(a_first)), torch.relu(self.proj1_vf(a_later))], dim=1)
        h = self.proj3(torch.relu(self.proj2(h)))
        h = h.view(b, n_latent, self.context_tokens, self.output_dim)
        if isinstance(self.norm, nn.LayerNorm):
            h = F.layer_norm(h.float(), self.norm.normalized_shape, self.norm.weight.float(), self.norm.bias.float(), self.norm.eps)
        return h.to(audio.dtype)


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] timesteps -> float32 [B, dim]: cos half first, then sin; computed in float64 from float32 t."""
    half = dim // 2
    pos = t.float().double()
    sinusoid = torch.outer(pos, torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).float()


# --------------------------------------------------------------------------------------------- model


class DiTInputs(NamedTuple):
    """The tensors of one DiT call, in `forward`'s order (shapes: `forward`'s docstring)."""

    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    clip_fea: torch.Tensor
    y: torch.Tensor
    audio: torch.Tensor


@dataclass
class DiTEmbeddings:
    """The output of `FlashTalkDiT.embed`: tokens plus what every block and the head need."""

    tokens: torch.Tensor  # [B, seq_len, dim] patch tokens, zero rows after grid tokens
    grid: tuple[int, int, int]  # (N_t, N_h, N_w) patch grid
    seq_len: int
    e: torch.Tensor  # [B, dim] float32, time_embedding output (head modulation)
    e0: torch.Tensor  # [B, 6, dim] float32, time_projection output (block modulation)
    context: torch.Tensor  # [B, n_img + text_len, dim]
    n_img: int
    audio: torch.Tensor  # [B, N_t, context_tokens, output_dim]
    head_dim: int
    rope_theta: float = 10000.0
    context_kv: tuple[CrossKV, ...] | None = None  # per-block context K/V (the model's session cache); None: per call
    rope_cache: dict | None = None  # RoPE tables by slice, kept by the model across steps; None: recomputed

    @property
    def n_tokens(self) -> int:
        return math.prod(self.grid)

    def padded(self, seq_len: int) -> "DiTEmbeddings":
        """These embeddings with the token sequence zero-padded to `seq_len` (itself when already that long)."""
        extra = seq_len - self.tokens.shape[1]
        if extra < 0:
            raise DiTInputError(f"cannot pad {self.tokens.shape[1]} tokens to {seq_len}")
        if extra == 0:
            return self
        tok = self.tokens
        return replace(self, tokens=torch.cat([tok, tok.new_zeros(tok.shape[0], extra, tok.shape[2])], dim=1),
                       seq_len=seq_len)

    def block_inputs(
        self, start: int = 0, end: int | None = None, self_attention: SelfAttentionFn | None = None
    ) -> BlockInputs:
        """Block inputs for the tokens [start, end) of the padded sequence (default: all of it).

        A sequence-parallel rank passes its slice and an all-to-all self-attention; k_lens always refer to
        the full sequence, so that function must attend over the gathered sequence.
        """
        end = self.seq_len if end is None else end
        if not 0 <= start < end <= self.seq_len:
            raise ValueError(f"token slice [{start}, {end}) outside the sequence of {self.seq_len}")
        per = self.grid[1] * self.grid[2]
        n = self.n_tokens
        runs = []
        for frame in range(start // per, min(end, n) // per + 1):
            st, e = max(start, frame * per), min(end, n, (frame + 1) * per)
            if st < e:
                runs.append((frame, st - start, e - start))
        device = self.tokens.device
        b = self.tokens.shape[0]
        rope_key = (self.grid, self.head_dim, start, end - start, self.rope_theta, device)
        rope = None if self.rope_cache is None else self.rope_cache.get(rope_key)
        if rope is None:  # float64 on the host, then a host->device copy: once per geometry when cached
            rope = rope_cos_sin(self.grid, self.head_dim, start, end - start, theta=self.rope_theta, device=device)
            if self.rope_cache is not None:
                if len(self.rope_cache) >= 8:
                    self.rope_cache.clear()
                self.rope_cache[rope_key] = rope
        return BlockInputs(
            e0=self.e0,
            context=self.context,
            n_img=self.n_img,
            audio=self.audio,
            rope=rope,
            k_lens=None if n == self.seq_len else [n] * b,
            frame_runs=tuple(runs),
            tokens_per_frame=per,
            self_attention=attention if self_attention is None else self_attention,
            context_kv=self.context_kv,
        )


class TokenSplit:
    """Which tokens of the sequence this process computes, and how. This one: all of them, here.

    `FlashTalkDiT.forward` calls the hooks in this order: `padded_length` (the sequence length to pad to, e.g. a
    multiple of the ranks), `bounds` (the token slice this process runs through the blocks), `self_attention`
    (the blocks' one self-attention call, on the slice's q/k/v [B, L, H, D]; k_lens count over the whole
    sequence), `gather` (the slices' head outputs [B, L, C] -> the whole sequence's). A sequence-parallel
    split (parallel/ulysses.py) overrides them; the forward itself is written once, here.
    """

    def __init__(self, self_attention: SelfAttentionFn = attention):
        self.self_attention = self_attention

    def padded_length(self, seq_len: int) -> int:
        return seq_len

    def bounds(self, seq_len: int) -> tuple[int, int]:
        return 0, seq_len

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return local


WHOLE_SEQUENCE = TokenSplit()


def tensor_identity(v: torch.Tensor) -> tuple | None:
    """What identifies a tensor without reading it: address, layout and version counter.

    Equal identities mean the same data only while the first tensor is kept alive (so its memory cannot be
    reused); views of one storage share the version counter, so an in-place write changes it. None (never
    cached) for inference tensors, which keep no version counter, and tensors without an address (meta).
    """
    if not isinstance(v, torch.Tensor) or v.is_inference() or v.data_ptr() == 0:
        return None  # no version counter, or no address (meta, empty): nothing safe to compare
    return (v.device, v.data_ptr(), v._version, tuple(v.shape), v.stride(), v.dtype)


@dataclass(frozen=True)
class SessionContext:
    """The context side of every block for one avatar session: embedded tokens and each block's K/V."""

    context: torch.Tensor  # [B, n_img + text_len, dim]: image tokens first, then text
    n_img: int
    kv: tuple[CrossKV, ...] | None  # one per block; None when not precomputed


class InputCache:
    """Single-entry caches of what stays constant across sampling steps, keyed by the inputs' identity.

    session: SessionContext (per avatar session); audio: audio tokens (per chunk); rope: RoPE tables (per
    geometry and slice). Entries hold the tensors they were computed from, so an identity cannot be reused.
    """

    def __init__(self) -> None:
        self.session: tuple[Any, Any, SessionContext] | None = None  # (key, inputs held, value)
        self.audio: tuple[Any, Any, torch.Tensor] | None = None
        self.rope: dict = {}
        self.hits = {"session": 0, "audio": 0}
        self.misses = {"session": 0, "audio": 0}

    def get(self, slot: str, key: Any) -> Any:
        entry = getattr(self, slot)
        if key is not None and entry is not None and entry[0] == key:
            self.hits[slot] += 1
            return entry[2]
        self.misses[slot] += 1
        return None

    def put(self, slot: str, key: Any, held: Any, value: Any) -> Any:
        setattr(self, slot, None if key is None else (key, held, value))
        return value


class DiTInputError(ValueError):
    """The inputs do not fit the model. Raised by `FlashTalkDiT.embed`, before any token reaches a block, so a
    sequence-parallel forward fails the same way on every rank before any collective (the job stays usable)."""


def _batched(v: torch.Tensor, name: str, axes: str) -> torch.Tensor:
    """The one input form: a tensor whose dims are `axes` (comma-separated names), batch first."""
    want = len(axes.split(","))
    if not isinstance(v, torch.Tensor) or v.dim() != want:
        got = f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise DiTInputError(f"{name}: expected a {want}-D tensor [{axes}], got {got}")
    return v


class FlashTalkDiT(nn.Module):
    """The audio-driven DiT. Build on `meta` and load the released state dict with assign=True."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.img_emb = ImageProjection(cfg.clip_dim, dim)
        self.audio_proj = AudioProjection(cfg)
        # Context K/V once per session, audio tokens once per chunk, RoPE once per geometry (inference only).
        self.cache_inputs = True
        self.input_cache = InputCache()
        self.register_load_state_dict_pre_hook(FlashTalkDiT._weights_changing)

    # -- the step-constant cache ----------------------------------------------------------------------
    def set_input_cache(self, enabled: bool) -> None:
        """Turn the cache on (default) or off (everything recomputed every step: the uncached numbers)."""
        self.cache_inputs = bool(enabled)
        self.clear_input_cache()

    def clear_input_cache(self) -> None:
        """Drop cached K/V, audio tokens and RoPE tables (a new session frees the old one's memory at once).

        Loading a state dict and `.to()` clear it; call this after changing weights any other way.
        """
        self.input_cache = InputCache()

    @staticmethod
    def _weights_changing(module: "FlashTalkDiT", *args: Any, **kwargs: Any) -> None:
        module.clear_input_cache()

    def _apply(self, fn: Any, recurse: bool = True) -> "FlashTalkDiT":
        self.clear_input_cache()  # new dtype or device: cached tensors no longer match the weights
        return super()._apply(fn, recurse)

    def _caching(self) -> bool:
        return self.cache_inputs and not torch.is_grad_enabled()

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    # -- pieces ---------------------------------------------------------------------------------------
    def time_embed(self, t: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t (one value, or one per sample: [], [1] or [B]) -> (e [B, dim], e0 [B, 6, dim]), both float32."""
        if not isinstance(t, torch.Tensor):
            raise DiTInputError(f"t: expected a tensor of timesteps, got {type(t).__name__}")
        t = t.to(self.patch_embedding.weight.device).reshape(-1)
        if t.numel() == 1 and batch > 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise DiTInputError(f"t has {t.numel()} values for a batch of {batch}")
        s = timestep_sinusoid(t, self.cfg.freq_dim)
        te = self.time_embedding
        e = _linear32(cast(nn.Linear, te[2]), F.silu(_linear32(cast(nn.Linear, te[0]), s)))
        e0 = _linear32(cast(nn.Linear, self.time_projection[1]), F.silu(e)).unflatten(1, (6, self.cfg.dim))
        return e, e0

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """T5 output [B, L <= text_len, text_dim], zero-padded to text_len, then text_embedding."""
        tl, td = self.cfg.text_len, self.cfg.text_dim
        context = _batched(context, "context", "B, L, text_dim")
        if context.shape[2] != td or context.shape[1] > tl:
            raise DiTInputError(f"context: expected [B, L <= {tl}, {td}], got {tuple(context.shape)}")
        u = context.to(self.dtype)
        return self.text_embedding(torch.cat([u, u.new_zeros(u.shape[0], tl - u.shape[1], td)], dim=1))

    def precompute_context(self, context: torch.Tensor, clip_fea: torch.Tensor, *, with_kv: bool = True) -> SessionContext:
        """Embedded image + text context and (with_kv) every block's cross-attention K/V: once per session."""
        text = self.embed_text(context)
        img = self.img_emb(_batched(clip_fea, "clip_fea", "B, n_img, clip_dim").to(self.dtype))
        ctx = torch.cat([img, text], dim=1).to(self.dtype)
        n_img = img.shape[1]
        kv = tuple(block.cross_attn.project_context(ctx, n_img) for block in self.blocks) if with_kv else None
        return SessionContext(context=ctx, n_img=n_img, kv=kv)

    def _session_context(self, context: torch.Tensor, clip_fea: torch.Tensor) -> SessionContext:
        if not self._caching():
            return self.precompute_context(context, clip_fea, with_kv=False)
        c = self.input_cache
        parts = (tensor_identity(context), tensor_identity(clip_fea), self.dtype)
        key = None if None in parts else parts
        hit = c.get("session", key)
        if hit is not None:
            return hit
        c.put("session", None, None, None)  # free the old session's K/V before computing the new one
        return c.put("session", key, (context, clip_fea), self.precompute_context(context, clip_fea))

    def _audio_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        if not self._caching():
            return self.audio_proj(audio.to(self.dtype))
        key = tensor_identity(audio)
        key = None if key is None else (key, self.dtype)
        hit = self.input_cache.get("audio", key)
        if hit is not None:
            return hit
        return self.input_cache.put("audio", key, audio, self.audio_proj(audio.to(self.dtype)))

    # -- the forward's stages, in order -----------------------------------------------------------------
    def embed(self, inputs: DiTInputs, *, seq_len: int | None = None) -> DiTEmbeddings:
        """Validate inputs (DiTInputError) and compute tokens, time modulation, context and audio tokens.

        `inputs` are `forward`'s tensors; the tokens are zero-padded to `seq_len` (default: the latent's token count).
        """
        cfg = self.cfg
        x, t, context, clip_fea, y, audio = inputs
        x = _batched(x, "x", "B, out_dim, T, H, W")
        y = _batched(y, "y", "B, in_dim - out_dim, T, H, W")
        b, cx, nt, hh, ww = x.shape
        if y.shape[0] != b or y.shape[2:] != x.shape[2:] or cx + y.shape[1] != cfg.in_dim:
            raise DiTInputError(f"y {tuple(y.shape)} does not fit x {tuple(x.shape)}: need same B, T, H, W and "
                                f"x channels + y channels = in_dim {cfg.in_dim}")
        pt, ph, pw = cfg.patch_size
        if nt % pt or hh % ph or ww % pw:
            raise DiTInputError(f"latent T, H, W {(nt, hh, ww)} not divisible by patch_size {cfg.patch_size}")
        clip_fea = _batched(clip_fea, "clip_fea", "B, n_img, clip_dim")
        if clip_fea.shape[0] != b or clip_fea.shape[2] != cfg.clip_dim:
            raise DiTInputError(f"clip_fea: expected [{b}, n_img, {cfg.clip_dim}], got {tuple(clip_fea.shape)}")
        audio = _batched(audio, "audio", "B, video frames, window, layers, channels")
        want = (b, 1 + cfg.vae_scale * (nt - 1), cfg.audio_window, cfg.audio_layers, cfg.audio_channels)
        if tuple(audio.shape) != want:
            raise DiTInputError(f"audio: expected {want} ([B, 1 + {cfg.vae_scale}*(T-1) video frames, window, "
                                f"layers, channels]), got {tuple(audio.shape)}")
        n = (nt // pt) * (hh // ph) * (ww // pw)
        seq_len = n if seq_len is None else int(seq_len)
        if seq_len < n:
            raise DiTInputError(f"seq_len {seq_len} is shorter than the {n} tokens of the latent")
        e, e0 = self.time_embed(t, b)
        sc = self._session_context(context, clip_fea)
        if sc.context.shape[0] != b:
            raise DiTInputError(f"context has {sc.context.shape[0]} samples for a batch of {b}")

        tok = self.patch_embedding(torch.cat([x, y], dim=1).to(self.dtype))
        grid = tuple(tok.shape[2:])
        emb = DiTEmbeddings(
            tokens=tok.flatten(2).transpose(1, 2), grid=grid, seq_len=n, e=e, e0=e0, context=sc.context,
            n_img=sc.n_img, audio=self._audio_tokens(audio), head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
            context_kv=sc.kv, rope_cache=self.input_cache.rope if self._caching() else None,
        )
        return emb.padded(seq_len)

    def run_blocks(self, x: torch.Tensor, inp: BlockInputs,
                   between_blocks: Callable[[int], None] | None = None) -> torch.Tensor:
        """The transformer blocks in order; `between_blocks(i)` runs before block i >= 1 (the caller's point to
        stop a forward it no longer needs, by raising)."""
        kv = inp.context_kv
        if kv is not None and len(kv) != len(self.blocks):
            raise ValueError(f"context K/V for {len(kv)} blocks, the model has {len(self.blocks)}")
        for i, block in enumerate(self.blocks):
            if i and between_blocks is not None:
                between_blocks(i)
            x = block(x, inp) if kv is None else block(x, inp, kv[i])
        return x

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L >= prod(grid), prod(patch) * out_dim] -> [B, out_dim, N_t*pt, N_h*ph, N_w*pw]."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        u = x[:, : f * h * w].reshape(x.shape[0], f, h, w, pt, ph, pw, c)
        return u.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], c, f * pt, h * ph, w * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
        *,
        seq_len: int | None = None,
        split: TokenSplit = WHOLE_SEQUENCE,
        between_blocks: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity for one latent chunk. One input form: batched tensors.

        x:        noisy latent [B, out_dim(16), T, H, W]
        t:        timesteps on the 0..1000 scale, [B] (or one value for the batch: [] or [1]); rounded to float32
                  like the reference sampler
        context:  T5 output, unpadded [B, L <= text_len, text_dim]; zero-padded to text_len
        clip_fea: CLIP features [B, 257, clip_dim]
        y:        conditioning [B, in_dim - 16 (20: 4 mask + 16 latent), T, H, W]
        audio:    wav2vec windows [B, 1 + vae_scale*(T-1), audio_window, audio_layers, audio_channels]
        seq_len:  pad the token sequence to this length (padding keys are masked); default: no padding
        split:    which tokens this process computes and how (see TokenSplit); default: all of them here
        between_blocks: called with i before block i >= 1 (see run_blocks); it may raise to stop the forward
        Returns float32 [B, out_dim, T, H, W]. Inputs are cast to the parameter dtype. Inputs that do not fit
        raise DiTInputError before the first block.
        """
        emb = self.embed(DiTInputs(x, t, context, clip_fea, y, audio), seq_len=seq_len)
        emb = emb.padded(split.padded_length(emb.seq_len))
        start, end = split.bounds(emb.seq_len)
        inp = emb.block_inputs(start, end, self_attention=split.self_attention)
        local = self.head(self.run_blocks(emb.tokens[:, start:end], inp, between_blocks), emb.e)
        return self.unpatchify(split.gather(local), emb.grid).float()
