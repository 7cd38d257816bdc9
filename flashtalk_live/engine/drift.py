"""Drift measures against the reference, and the policy that decides when to re-anchor the motion context.

Two cheap measures per chunk, on its last new frame:
  identity  cosine of CLIP image embeddings (all blocks, post-norm, head) of the shown frame and the reference;
  colour    Lab distance (delta-E of the mean colour plus the per-channel contrast mismatch) of the *raw*
            decoded frame, before colour correction, which would otherwise hide exactly this drift.
`RecalibrationPolicy` turns measures and the output clock into a decision: re-anchor early after
`patience` drifting measures in a row, or on schedule at the next idle chunk (or anyway once the
schedule is `max_wait_s` overdue). `start_drift` only queues the measures on the device; the renderer reads
them (`PendingDrift.result`) after its host work on the frames, so the two overlap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from flashtalk_live.engine.engine import ChunkOutput, HostCopy
from flashtalk_live.engine.session import AvatarSession
from flashtalk_live.model.colour import lab_distance
from flashtalk_live.settings import ModelSettings


@dataclass(frozen=True)
class DriftMeasure:
    chunk: int
    identity: float | None  # cosine in [-1, 1]; None without a CLIP model
    colour: float  # Lab units

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class PendingDrift:
    """A drift measure queued on the device: `result()` reads it (the only host wait), so the caller can do
    host work first while the GPU computes it."""

    def __init__(self, chunk: int, values: torch.Tensor, has_identity: bool) -> None:
        self.chunk, self.has_identity = chunk, has_identity
        self._copy = HostCopy(values)

    def result(self) -> DriftMeasure:
        identity, colour = self._copy.wait().tolist()
        return DriftMeasure(chunk=self.chunk, identity=identity if self.has_identity else None, colour=colour)


@torch.no_grad()
def start_drift(session: AvatarSession, out: ChunkOutput, clip: torch.nn.Module | None) -> PendingDrift:
    """Queue the identity and colour measures of a chunk's last frame; nothing waits for the device here."""
    colour = lab_distance(out.raw_frame.float(), session.ref_lab).mean().float()
    identity = torch.zeros_like(colour)
    has_identity = clip is not None and session.ref_identity is not None
    if has_identity:
        emb = clip.image_features(out.out_frame[:, :, 0])
        identity = (emb.float() @ session.ref_identity.float().T).reshape(()).to(colour.device)
    return PendingDrift(out.index, torch.stack([identity, colour]).double(), has_identity)


def measure_drift(session: AvatarSession, out: ChunkOutput, clip: torch.nn.Module | None) -> DriftMeasure:
    return start_drift(session, out, clip).result()


@dataclass
class RecalibrationPolicy:
    identity_min: float = 0.80
    colour_max: float = 12.0
    patience: int = 2
    interval_s: float = 600.0  # 0 disables the schedule
    max_wait_s: float = 60.0
    min_gap_s: float = 10.0  # drift re-anchors no closer than this, so a bad threshold cannot flicker the picture

    def __post_init__(self) -> None:
        if self.patience < 1 or self.interval_s < 0 or self.max_wait_s < 0:
            raise ValueError(f"bad recalibration policy {self}")
        self.last_s = 0.0  # output time of the last anchor (session start counts)
        self.strikes = 0

    @classmethod
    def from_settings(cls, model: ModelSettings) -> "RecalibrationPolicy":
        m = model
        return cls(identity_min=m.drift_identity_min, colour_max=m.drift_colour_max, patience=m.drift_patience_chunks,
                   interval_s=m.recalibrate_interval_s, max_wait_s=m.recalibrate_max_wait_s)

    def drifting(self, m: DriftMeasure) -> bool:
        bad_id = m.identity is not None and (math.isnan(m.identity) or m.identity < self.identity_min)
        bad_colour = math.isnan(m.colour) or m.colour > self.colour_max
        return bad_id or bad_colour

    def observe(self, m: DriftMeasure) -> bool:
        """Record a measure; True when it is drifting."""
        bad = self.drifting(m)
        self.strikes = self.strikes + 1 if bad else 0
        return bad

    def due(self, now_s: float, idle: bool) -> str | None:
        """'drift' or 'schedule' when the chunk starting at output time `now_s` should re-anchor, else None."""
        if self.strikes >= self.patience and now_s - self.last_s + 1e-9 >= self.min_gap_s:
            return "drift"
        if self.interval_s > 0:
            overdue = now_s - self.last_s - self.interval_s + 1e-9  # output times are sums of chunk lengths
            if overdue >= 0 and (idle or overdue >= self.max_wait_s):
                return "schedule"
        return None

    def anchored(self, now_s: float) -> None:
        self.last_s = now_s
        self.strikes = 0
