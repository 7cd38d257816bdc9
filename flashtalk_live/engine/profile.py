"""Generation profiles: the chunk geometry, step count and numerics of one FlashTalk configuration.

`quality` is the reference's `infer_params.yaml` (768x448, 33 frames with 5 motion frames, 4 steps,
shift 5, full colour correction, seed 9999, 8-s audio window).  `fast` is the low-latency variant
reported for 8x Ascend (704x416, 29 frames with 1 motion frame, 2 steps), which keeps 28 new frames
per chunk so the broadcast chunking does not change.  `native` is fast's chunking and steps at the output
geometry (448x768, the picture the model was distilled for): no upscale on air.  `realtime` keeps fast's chunking
and steps at a smaller picture (640x384): the one-GPU fallback (docs/performance.md has each one's chunk times).
`PROFILE_LADDER` orders the named profiles by quality, best first; `model.profile = "auto"` measures
candidates in that order at warm-up and `choose_profile` (pure: injected timings) picks the best-quality one
whose chunk time fits the real-time budget with a margin. With a compiled DiT, `next_auto_step` (pure too) times
the candidates eager first and compiles only the one it predicts to fit.  `split_vae_decode` only matters with several GPUs:
the VAE decode is then split by image height over the ranks (exact; a halo exchange per 3x3 conv).  `resolve_profile` accepts a name, a TOML file
(optionally `base = "<name>"` plus the fields to change) or overrides.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from flashtalk_live.settings import Settings, read_toml

if TYPE_CHECKING:  # model.audio imports torch: profiles are read before air, where torch is not needed yet
    from flashtalk_live.model.audio import AudioFeatureConfig

VAE_TEMPORAL = 4  # pixel frames per latent frame after the first
VAE_SPATIAL = 8
PATCH = 2  # DiT spatial patch: tokens are 16x16 pixel squares


class ProfileError(ValueError):
    """A profile name, file or field that cannot be used; the message names the field and the rule."""


@dataclass(frozen=True)
class Profile:
    """One generation configuration. `new_frames = frame_num - motion_frames` frames come out per chunk."""

    name: str = "custom"
    height: int = 768
    width: int = 448
    frame_num: int = 33
    motion_frames: int = 5
    sample_steps: int = 4
    shift: float = 5.0
    colour_correction_strength: float = 1.0
    seed: int = 9999
    audio_window_seconds: int = 8
    fps: int = 25
    sample_rate: int = 16000
    # Several GPUs only: decode split by height over the ranks (exact, costs a halo exchange per 3x3 conv).
    split_vae_decode: bool = False

    def __post_init__(self) -> None:
        def bad(field: str, rule: str) -> ProfileError:
            return ProfileError(f"profile {self.name!r}: {field} = {getattr(self, field)!r}: {rule}")

        for f in ("height", "width"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0 or v % (VAE_SPATIAL * PATCH):
                raise bad(f, f"must be a positive multiple of {VAE_SPATIAL * PATCH} (VAE stride 8 x DiT patch 2)")
        if not isinstance(self.frame_num, int) or self.frame_num < 1 + VAE_TEMPORAL or (self.frame_num - 1) % VAE_TEMPORAL:
            raise bad("frame_num", "must be 1 + 4k with k >= 1 (the causal VAE's frame grouping)")
        if (not isinstance(self.motion_frames, int) or self.motion_frames < 1
                or (self.motion_frames - 1) % VAE_TEMPORAL or self.motion_frames >= self.frame_num):
            raise bad("motion_frames", f"must be 1 + 4j and smaller than frame_num {self.frame_num}")
        if not isinstance(self.sample_steps, int) or self.sample_steps < 1:
            raise bad("sample_steps", "must be an integer >= 1")
        if not self.shift > 0:
            raise bad("shift", "must be > 0")
        if not 0.0 <= float(self.colour_correction_strength) <= 1.0:
            raise bad("colour_correction_strength", "must be in [0, 1]")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "must be a non-negative integer")
        if self.fps != 25 or self.sample_rate != 16000:
            raise ProfileError(f"profile {self.name!r}: the model is trained at 25 fps / 16 kHz, "
                               f"got fps {self.fps}, sample_rate {self.sample_rate}")
        if not isinstance(self.audio_window_seconds, int) or self.audio_window_seconds * self.fps < self.frame_num:
            raise bad("audio_window_seconds", f"must be a whole number of seconds covering frame_num {self.frame_num} frames")
        if not isinstance(self.split_vae_decode, bool):
            raise bad("split_vae_decode", "must be true or false")

    # -- derived geometry ----------------------------------------------------------------------------
    @property
    def new_frames(self) -> int:
        return self.frame_num - self.motion_frames

    @property
    def latent_frames(self) -> int:
        return 1 + (self.frame_num - 1) // VAE_TEMPORAL

    @property
    def motion_latent_frames(self) -> int:
        """Latent frames re-encoded from the last motion_frames of a chunk (1 on chunk 0, from the image)."""
        return 1 + (self.motion_frames - 1) // VAE_TEMPORAL

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // VAE_SPATIAL, self.width // VAE_SPATIAL

    @property
    def seq_len(self) -> int:
        h, w = self.latent_hw
        return self.latent_frames * (h // PATCH) * (w // PATCH)

    @property
    def chunk_seconds(self) -> float:
        return self.new_frames / self.fps

    @property
    def window_samples(self) -> int:
        return self.audio_window_seconds * self.sample_rate

    def audio_config(self) -> "AudioFeatureConfig":
        from flashtalk_live.model.audio import AudioFeatureConfig  # torch: only once the engine is built

        return AudioFeatureConfig(sample_rate=self.sample_rate, fps=self.fps, frame_num=self.frame_num,
                                  motion_frames=self.motion_frames, buffer_seconds=self.audio_window_seconds)

    def replace(self, **changes: Any) -> "Profile":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "quality": Profile(name="quality"),
    # The output geometry (448x768) with fast's chunking and 2 steps: the model's own picture, not upscaled.
    "native": Profile(name="native", frame_num=29, motion_frames=1, sample_steps=2),
    "fast": Profile(name="fast", height=704, width=416, frame_num=29, motion_frames=1, sample_steps=2),
    # fast's chunking and steps on 84% of its pixels (7680 instead of 9152 tokens): the one-GPU candidate.
    "realtime": Profile(name="realtime", height=640, width=384, frame_num=29, motion_frames=1, sample_steps=2),
}

# Named profiles by quality, best first: the default candidates of model.profile = "auto".
PROFILE_LADDER: tuple[str, ...] = ("quality", "native", "fast", "realtime")
AUTO = "auto"

_FIELDS = {f.name for f in fields(Profile)}


def _from_mapping(data: Mapping[str, Any], source: str) -> Profile:
    data = dict(data)
    base_name = data.pop("base", None)
    if base_name is not None and base_name not in PROFILES:
        raise ProfileError(f"{source}: base = {base_name!r} is not a profile; known: {sorted(PROFILES)}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ProfileError(f"{source}: unknown profile field(s) {unknown}; known: {sorted(_FIELDS)}")
    base = PROFILES[base_name] if base_name else Profile()
    data.setdefault("name", source)
    try:
        return base.replace(**data)
    except TypeError as e:
        raise ProfileError(f"{source}: {e}") from None


def resolve_profile(spec: str | Profile | Mapping[str, Any], **overrides: Any) -> Profile:
    """A profile from a name ('quality', 'fast'), a TOML file path, a mapping or a Profile, then `overrides`."""
    if isinstance(spec, Profile):
        prof = spec
    elif isinstance(spec, Mapping):
        prof = _from_mapping(spec, "profile mapping")
    elif spec in PROFILES:
        prof = PROFILES[spec]
    elif isinstance(spec, str) and spec.endswith(".toml"):
        path = Path(spec).expanduser()
        data = read_toml(path, "profile file", ProfileError)
        data.setdefault("name", path.stem)
        prof = _from_mapping(data, str(path))
    elif spec == AUTO:
        raise ProfileError('profile "auto" is chosen by measurement when the FlashTalk renderer warms up; '
                           f"name one of {sorted(PROFILES)} or a .toml file here")
    else:
        raise ProfileError(f"unknown profile {spec!r}: use one of {sorted(PROFILES)} or a .toml file")
    if overrides:
        unknown = sorted(set(overrides) - _FIELDS)
        if unknown:
            raise ProfileError(f"unknown profile field(s) {unknown}; known: {sorted(_FIELDS)}")
        prof = prof.replace(**overrides)
    return prof


def candidate_profiles(spec: str, candidates: Sequence[str] = PROFILE_LADDER) -> list[Profile]:
    """The profiles a `model.profile` setting may run: the one it names, or for "auto" every candidate
    (best quality first). All must make the same number of new frames per chunk: the broadcast's chunking
    (video.chunk_frames) is fixed before the choice is made."""
    if spec != AUTO:
        return [resolve_profile(spec)]
    if not candidates:
        raise ProfileError('model.profile = "auto" needs at least one entry in model.auto_candidates')
    if AUTO in candidates:
        raise ProfileError('model.auto_candidates cannot contain "auto"')
    profiles = [resolve_profile(c) for c in candidates]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ProfileError(f"model.auto_candidates must have distinct profile names, got {names}")
    frames = {p.name: p.new_frames for p in profiles}
    if len(set(frames.values())) != 1:
        raise ProfileError(f"model.auto_candidates must all make the same new frames per chunk "
                           f"(frame_num - motion_frames), got {frames}")
    return profiles


# ------------------------------------------------------------------------------- choice by measurement


@dataclass(frozen=True)
class ProfileTiming:
    """Measured wall seconds of a candidate's warm chunks, against its real-time budget with a margin."""

    profile: Profile
    seconds: tuple[float, ...]
    margin: float

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.seconds, 90))

    @property
    def budget_s(self) -> float:
        return self.profile.chunk_seconds

    @property
    def limit_s(self) -> float:
        return self.budget_s * (1.0 - self.margin)

    @property
    def fits(self) -> bool:
        """p90 rather than the median: a chunk slower than real time eats the look-ahead."""
        return self.p90 <= self.limit_s

    def to_dict(self) -> dict[str, Any]:
        p = self.profile
        return {"profile": p.name, "geometry": f"{p.width}x{p.height}", "frame_num": p.frame_num,
                "motion_frames": p.motion_frames, "steps": p.sample_steps, "chunks": len(self.seconds),
                "median_s": round(self.median, 4), "p90_s": round(self.p90, 4), "budget_s": round(self.budget_s, 4),
                "limit_s": round(self.limit_s, 4), "fits": self.fits}


@dataclass(frozen=True)
class ProfileChoice:
    """The chosen profile, whether it fits, and every measurement behind the choice (ladder order)."""

    profile: Profile
    fits: bool
    timings: tuple[ProfileTiming, ...]
    margin: float


def choose_profile(candidates: Sequence[Profile], timings: Mapping[str, Sequence[float]],
                   margin: float) -> ProfileChoice:
    """The first candidate (best quality first) whose measured p90 chunk time <= its budget * (1 - margin).

    Candidates without timings were not measured (measuring stops at the first that fits) and are skipped.
    If none fits, the fastest measured one (lowest p90) with `fits = False`: the caller must warn.
    """
    if not 0.0 <= margin < 1.0:
        raise ProfileError(f"auto margin must be in [0, 1), got {margin!r}")
    measured = tuple(ProfileTiming(p, tuple(float(x) for x in timings[p.name]), margin)
                     for p in candidates if timings.get(p.name))
    if not measured:
        raise ProfileError(f"no timings for any candidate profile {[p.name for p in candidates]}")
    for t in measured:
        if t.fits:
            return ProfileChoice(t.profile, True, measured, margin)
    fastest = min(measured, key=lambda t: t.p90)
    return ProfileChoice(fastest.profile, False, measured, margin)


def room_profiles(settings: Settings) -> list[Profile]:
    """The profiles a room may run (`candidate_profiles` of its model section), resolved once per process for a
    given setting: config load checks them, the renderer and the rank launcher take the same list."""
    return list(_room_profiles(settings.model.profile, tuple(settings.model.auto_candidates)))


@functools.lru_cache(maxsize=16)
def _room_profiles(spec: str, candidates: tuple[str, ...]) -> tuple[Profile, ...]:
    return tuple(candidate_profiles(spec, candidates))


# ------------------------------------------------------------------- auto with compile: eager first


@dataclass(frozen=True)
class AutoStep:
    """What "auto" does next when the DiT is compiled: time `profile` eager ("eager"), compile and time it
    ("compile"), or stop ("done", with `choice`)."""

    action: str
    profile: Profile
    choice: ProfileChoice | None = None


def compiled_ratio(eager: Mapping[str, Sequence[float]], compiled: Mapping[str, Sequence[float]],
                   default: float) -> float:
    """Compiled p90 / eager p90 over the candidates measured both ways (median of them), else `default`."""
    ratios = [float(np.percentile(compiled[n], 90)) / float(np.percentile(eager[n], 90))
              for n in compiled if eager.get(n) and compiled.get(n)]
    return float(np.median(ratios)) if ratios else default


def next_auto_step(candidates: Sequence[Profile], eager: Mapping[str, Sequence[float]],
                   compiled: Mapping[str, Sequence[float]], margin: float, ratio: float) -> AutoStep:
    """The next step of model.profile = "auto" with a compiled DiT: candidates are timed eager (no compile, cheap)
    best quality first, and the first whose eager p90 x ratio fits the budget is the only one compiled. Its
    compiled timing decides: it fits, done; it does not, the ratio is corrected from it (`compiled_ratio`) and the
    search goes on below it. When nothing fits, the fastest is kept (fits = False): a candidate predicted faster
    than every compiled one is compiled first. Pure: the timings are injected."""
    if not 0.0 <= margin < 1.0:
        raise ProfileError(f"auto margin must be in [0, 1), got {margin!r}")
    r = compiled_ratio(eager, compiled, ratio)
    for p in candidates:
        if compiled.get(p.name):
            t = ProfileTiming(p, tuple(compiled[p.name]), margin)
            if t.fits:
                return AutoStep("done", p, _auto_choice(candidates, compiled, margin, p, True))
            continue  # compiled and too slow: look further down
        if not eager.get(p.name):
            return AutoStep("eager", p)
        if ProfileTiming(p, tuple(x * r for x in eager[p.name]), margin).fits:
            return AutoStep("compile", p)
    # Nothing fits: the room runs the fastest profile, compiled; one not compiled yet that is predicted faster than
    # every compiled one is compiled first.
    def predicted(p: Profile) -> float:
        return float(np.percentile(eager[p.name], 90)) * r

    def measured(p: Profile) -> float:
        return ProfileTiming(p, tuple(compiled[p.name]), margin).p90

    done = [p for p in candidates if compiled.get(p.name)]
    rest = [p for p in candidates if eager.get(p.name) and not compiled.get(p.name)]
    best = min(rest, key=predicted) if rest else None
    if done:
        fastest = min(done, key=measured)
        if best is not None and predicted(best) < measured(fastest):
            return AutoStep("compile", best)
        return AutoStep("done", fastest, _auto_choice(candidates, compiled, margin, fastest, False))
    assert best is not None  # every candidate has an eager timing by now
    return AutoStep("compile", best)


def _auto_choice(candidates: Sequence[Profile], compiled: Mapping[str, Sequence[float]], margin: float,
                 chosen: Profile, fits: bool) -> ProfileChoice:
    measured = tuple(ProfileTiming(p, tuple(compiled[p.name]), margin) for p in candidates if compiled.get(p.name))
    return ProfileChoice(chosen, fits, measured, margin)


def splits_vae_decode(profiles: Sequence[Profile]) -> bool:
    """Whether any profile the room may run (room_profiles) splits the VAE decode over the ranks."""
    return any(p.split_vae_decode for p in profiles)
