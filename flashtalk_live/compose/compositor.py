"""The compositor: draws the on-air layers over every aired frame, between the pacer and the encoder.

Layers are drawn in a fixed order: the configured layers (logo, watermark, cards) in their order, then uploaded ones,
then the clip's caption, and the AI label last so nothing covers it. Each layer's pixels are rasterised and
premultiplied once (a `Patch`, cropped to its visible box), off the broadcast thread; per frame only those boxes
are blended. Commands (show, hide, set) are queued and take effect at the next aired frame; captions follow the
clip on air (`segment_id` of the aired frame), one line at a time, timed evenly by characters or by the producer's
caption cues. A clip's overlay cues show named layers for spans of the clip, counted in the clip's aired frames.

What text costs is measured before anything is drawn (`text_size`): a clip's caption lines against
overlays.max_caption_pixels and, with every clip queued and not yet aired, overlays.caption_budget_bytes
(`check_captions`, called by the ingest server before the spool commits the clip); a text layer against
overlays.max_layer_pixels, and only its part inside the frame is rasterised. Caption lines are rasterised on the
compositor's own thread (`prepare` only asks for them), never on the render or broadcast thread: a clip whose lines
are not ready when it airs shows them from the first frame after they are.
"""

from __future__ import annotations

import collections
import threading
import time
from collections import OrderedDict
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from flashtalk_live.compose.text import BUNDLED_FONT, CJK_PROBE, TextStyle, covers, find_font, load_font, render_text, \
    text_size, wrap
from flashtalk_live.errors import Rejection
from flashtalk_live.images import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, decode_rgba_bytes
from flashtalk_live.settings import ConfigError, LayerSettings, OverlaySettings

AI_LABEL = "ai_label"
MAX_CAPTIONED_CLIPS = 4096  # clips whose caption text is remembered until they air (oldest forgotten first)
MAX_AIRED_CLIPS = 8  # clips that aired, kept (cues and lines) in case play_now cut them and they replay
MAX_PREPARED_CLIPS = 64  # clips whose caption lines are rasterised ahead (a cancelled one is forgotten in time)
# A caption line held ahead costs its patch (premultiplied rgb + alpha, float32: 16 bytes a pixel) and the blend
# cache beside it (as much again): the budget counts 32 bytes per measured pixel, an upper bound (patches are cropped).
CAPTION_BYTES_PER_PIXEL = 32


@dataclass
class Patch:
    """A layer's pixels ready to blend at (x, y): premultiplied RGB and alpha in [0, 1], float32."""

    x: int
    y: int
    prem: np.ndarray  # [h, w, 3] rgb * alpha
    alpha: np.ndarray  # [h, w, 1]
    _cache: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.prem.shape[0], self.prem.shape[1]

    def at(self, opacity: float) -> tuple[np.ndarray, np.ndarray]:
        """(premultiplied rgb + 0.5 for rounding, 1 - alpha) at this opacity; the layer's steady opacity is kept,
        fades are not."""
        hit = self._cache.get(opacity)
        if hit is not None:
            return hit
        pair = (self.prem * np.float32(opacity) + np.float32(0.5), 1.0 - self.alpha * np.float32(opacity))
        if len(self._cache) < 2:
            self._cache[opacity] = pair
        return pair


def place(anchor: str, margin: tuple[int, int], w: int, h: int, fw: int, fh: int,
          safe: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> tuple[int, int]:
    """Top-left corner of a w x h patch anchored in an fw x fh frame, `margin` (x, y) px from the anchored edges of
    the safe area: `safe` = (top, right, bottom, left) shares of the frame kept clear of the platform's own UI."""
    top, right, bottom, left = safe
    ax0, ay0 = round(left * fw), round(top * fh)
    ax1, ay1 = fw - round(right * fw), fh - round(bottom * fh)
    mx, my = margin
    vert, _, horiz = anchor.partition("_") if "_" in anchor else (anchor, "", anchor)
    x = ax0 + mx if horiz == "left" else ax1 - w - mx if horiz == "right" else ax0 + (ax1 - ax0 - w) // 2
    y = ay0 + my if vert == "top" else ay1 - h - my if vert == "bottom" else ay0 + (ay1 - ay0 - h) // 2
    return x, y


def make_patch(rgba: np.ndarray, x: int, y: int, fw: int, fh: int) -> Patch | None:
    """Clip straight-alpha RGBA at (x, y) to the frame and crop it to its non-transparent box; None if nothing shows."""
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + rgba.shape[1], fw), min(y + rgba.shape[0], fh)
    if x1 <= x0 or y1 <= y0:
        return None
    part = rgba[y0 - y:y1 - y, x0 - x:x1 - x]
    rows, cols = np.nonzero(part[..., 3].any(axis=1))[0], np.nonzero(part[..., 3].any(axis=0))[0]
    if rows.size == 0:
        return None
    part = part[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    alpha = part[..., 3:4].astype(np.float32) / 255.0
    prem = part[..., :3].astype(np.float32) * alpha
    return Patch(x0 + int(cols[0]), y0 + int(rows[0]), np.ascontiguousarray(prem), np.ascontiguousarray(alpha))


def blend(frame: np.ndarray, patch: Patch, opacity: float = 1.0) -> None:
    """frame = frame * (1 - a) + rgb * a over the patch's box, in place (uint8, rounded)."""
    h, w = patch.shape
    roi = frame[patch.y:patch.y + h, patch.x:patch.x + w]
    prem, inv = patch.at(opacity)
    out = roi * inv
    out += prem
    np.copyto(roi, out, casting="unsafe")


@dataclass(frozen=True)
class ClipCues:
    """What a queued clip shows while it airs: its transcript, and spans (text or layer name, start s, end s)."""

    text: str
    duration_s: float
    captions: tuple[tuple[str, float, float], ...] = ()
    overlays: tuple[tuple[str, float, float], ...] = ()
    cost_bytes: int = 0  # its caption lines, measured (check_captions), while they are held


def cue_level(pos: int, on: int, off: int, fade: int) -> float:
    """Visibility of a layer cued for clip frames [on, off) at clip frame `pos`: fading in from `on`, fully gone at
    `off` (as `overlay_show NAME seconds`)."""
    if not on <= pos < off:
        return 0.0
    return 1.0 if fade == 0 else min(1.0, (pos - on + 1) / fade, (off - pos) / fade)


@dataclass
class Layer:
    spec: LayerSettings
    patch: Patch | None
    fade_frames: int
    shown_at: int | None = None  # aired frame its fade-in began; None: off air
    hide_at: int | None = None  # aired frame its fade-out begins

    def level(self, n: int) -> float:
        """Visibility at aired frame n in [0, 1] (fades are linear); switches itself off after a fade-out."""
        if self.shown_at is None or n < self.shown_at:
            return 0.0
        f = self.fade_frames
        lv = 1.0 if f == 0 else min(1.0, (n - self.shown_at + 1) / f)
        if self.hide_at is not None and n >= self.hide_at:
            if n >= self.hide_at + f:
                self.shown_at = self.hide_at = None
                return 0.0
            lv = min(lv, (self.hide_at + f - n) / f)
        return lv


class Compositor:
    """Layers over frames; `compose` is called on the broadcast thread, everything else from any thread."""

    def __init__(self, settings: OverlaySettings, width: int, height: int, fps: int, log: Any = None, *,
                 max_image_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.s = settings
        self.max_image_pixels = max_image_pixels  # what an image layer may decode to (ingest.max_image_pixels)
        self.w, self.h, self.fps = width, height, fps
        self.log = log
        # Captions and text layers: the system font (overlays.font, else found in overlays.font_dirs); without one
        # the package's label font, which draws ASCII and the AI labels' characters only (the daemon warns).
        system = find_font(settings.font, settings.font_dirs)
        self.system_font = system is not None
        self.font_path, self.font_index = system or BUNDLED_FONT
        self.font_covers_cjk = covers(load_font(self.font_path, self.font_index, 24), CJK_PROBE)
        # The AI label must air on any box: the system font when it draws every glyph of it, else the bundled one.
        label_text = settings.ai_label.text or ""
        if system is not None and covers(load_font(*system, 24), label_text):
            self.label_font: tuple[str, int] = system
        else:
            self.label_font = BUNDLED_FONT
        self.label_covered = covers(load_font(*self.label_font, 24), label_text)
        self._lock = threading.Lock()
        self._pending: list[Callable[[int], None]] = []
        self._layers: dict[str, Layer] = {}  # drawing order = insertion order, AI label drawn last
        self._specs: dict[str, LayerSettings] = {}  # what commands see (updated at once, applied at air)
        self._clips: OrderedDict[str, ClipCues] = OrderedDict()  # segment_id -> what it shows on air
        self._captions: dict[str, list[tuple[int, int, Patch]]] = {}
        self._cap_sid: str | None = None
        self._cap_pos = 0  # frames of the clip on air aired before this one
        self._windows: list[tuple[str, int, int]] = []  # the clip on air's overlay cues: (layer, on, off) clip frames
        self._cued: list[str] = []  # layers its cues showed at the last frame
        self._frame = 0
        self._held_bytes = 0  # cost_bytes of the clips in _clips
        # Clips that left the air, newest last: one cut by play_now replays from its start under the same id.
        self._aired: OrderedDict[str, tuple[ClipCues, list[tuple[int, int, Patch]] | None]] = OrderedDict()
        self._asked: collections.deque[str] = collections.deque()  # clips whose lines the caption thread is to draw
        self._ask = threading.Condition(self._lock)
        self._caption_thread: threading.Thread | None = None
        self._closed = False
        for spec in settings.layers:
            try:
                patch = self._build(spec, _file_bytes(spec.image) if spec.image else None)
            except (Rejection, OSError) as e:  # the operator's configuration: exit 2 with one line
                raise ConfigError(f"overlays.layers {spec.name!r}: {getattr(e, 'reason', None) or e}") from None
            self._install(spec, patch, 0, spec.visible)
        if settings.ai_label_enabled:
            label = settings.ai_label.model_copy(update={"name": AI_LABEL, "visible": True})
            self._install(label, self._build(label, None), 0, True)

    # -- building patches (any thread) -------------------------------------------------------------
    def _font(self, size: int):
        return load_font(self.font_path, self.font_index, size)

    def _build(self, spec: LayerSettings, image: bytes | None) -> Patch | None:
        if spec.text is not None:
            font = load_font(*self.label_font, spec.font_size) if spec.name == AI_LABEL else self._font(spec.font_size)
            width = spec.width or self.w - 2 * spec.margin[0]
            text = "\n".join(wrap(font, spec.text, width))
            style = TextStyle(spec.font_size, spec.colour, spec.outline, box=spec.box)
            tw, th = text_size(text, font, style)
            if tw * th > self.s.max_layer_pixels:
                raise Rejection("text_too_large", f"layer {spec.name!r}: its text wrapped at {width} px renders "
                                f"{tw}x{th} = {tw * th} pixels, overlays.max_layer_pixels is "
                                f"{self.s.max_layer_pixels}", "text")
            safe = self.s.safe_area if spec.in_safe_area else (0.0, 0.0, 0.0, 0.0)
            x, y = place(spec.anchor, spec.margin, tw, th, self.w, self.h, safe)
            x0, y0 = max(x, 0), max(y, 0)  # crop to the frame before anything is drawn
            x1, y1 = min(x + tw, self.w), min(y + th, self.h)
            if x1 <= x0 or y1 <= y0:
                return None
            rgba = render_text(text, font, style, crop=(x0 - x, y0 - y, x1 - x0, y1 - y0))
            return make_patch(rgba, x0, y0, self.w, self.h)
        else:
            assert image is not None
            try:
                rgba = decode_rgba_bytes(image, f"overlay {spec.name}", spec.width, self.max_image_pixels)
            except ImageTooLarge as e:
                raise Rejection("image_too_many_pixels", str(e)) from None
            except ImageError as e:
                raise Rejection("undecodable_image", str(e)) from None
        safe = self.s.safe_area if spec.in_safe_area else (0.0, 0.0, 0.0, 0.0)
        x, y = place(spec.anchor, spec.margin, rgba.shape[1], rgba.shape[0], self.w, self.h, safe)
        return make_patch(rgba, x, y, self.w, self.h)

    def _install(self, spec: LayerSettings, patch: Patch | None, n: int, show: bool) -> None:
        fade = round(spec.fade_s * self.fps)
        old = self._layers.get(spec.name)
        layer = Layer(spec, patch, fade)
        if old is not None:  # new content keeps the layer's place in the order and its time on air
            layer.shown_at, layer.hide_at = old.shown_at, old.hide_at
        elif show:
            layer.shown_at = n - fade  # already fully in
        self._layers[spec.name] = layer
        self._specs[spec.name] = spec
        if AI_LABEL in self._layers and spec.name != AI_LABEL:
            self._layers[AI_LABEL] = self._layers.pop(AI_LABEL)

    # -- commands (ingest threads): checked now, applied at the next aired frame -------------------
    def names(self) -> list[str]:
        with self._lock:
            return list(self._specs)

    def _known(self, name: str) -> LayerSettings:
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(self._specs) or "none"
            raise Rejection("unknown_layer", f"no overlay layer named {name!r}; layers: {known}", "name")
        return spec

    def _queue(self, fn: Callable[[int], None]) -> None:
        self._pending.append(fn)

    def show(self, name: str, seconds: float | None = None) -> None:
        """Fade `name` in at the next aired frame; with `seconds`, fully gone that long after."""
        with self._lock:
            self._known(name)

            def apply(n: int) -> None:
                layer = self._layers[name]
                if layer.shown_at is None or layer.hide_at is not None:
                    lv = layer.level(n)  # a fade-out in progress turns back from where it is
                    layer.shown_at = n - round(lv * layer.fade_frames)
                layer.hide_at = None if seconds is None else n + max(0, round(seconds * self.fps) - layer.fade_frames)
            self._queue(apply)

    def hide(self, name: str) -> None:
        """Fade `name` out from the next aired frame."""
        with self._lock:
            self._known(name)

            def apply(n: int) -> None:
                layer = self._layers[name]
                if layer.shown_at is not None:
                    lv = layer.level(n)
                    layer.hide_at = n - round((1 - lv) * layer.fade_frames)
            self._queue(apply)

    def set(self, name: str, *, text: str | None = None, image: bytes | None = None,
            **placement: Any) -> dict[str, Any]:
        """Define or replace layer `name` with a text or an image (placement fields as in LayerSettings). A new
        layer starts off air (overlay_show puts it on); a shown layer keeps showing with the new content."""
        with self._lock:
            spec = self._specs.get(name)
            if spec is None and len(self._specs) >= self.s.max_layers:
                raise Rejection("too_many_layers", f"{len(self._specs)} overlay layers, overlays.max_layers is "
                                f"{self.s.max_layers}", "name")
        base = spec.model_dump() if spec is not None else {"name": name, "anchor": "center", "visible": False}
        base.update({k: v for k, v in placement.items() if v is not None})
        base.update(text=text, image="<upload>" if image is not None else None)
        try:
            new = LayerSettings(**base)
        except Exception as e:  # noqa: BLE001 - pydantic's message names the field
            raise Rejection("bad_request", f"overlay_set: {e}".splitlines()[0]) from None
        patch = self._build(new, image)  # rasterise/decode here, not on the broadcast thread
        with self._lock:
            if name not in self._specs and len(self._specs) >= self.s.max_layers:
                raise Rejection("too_many_layers", f"overlays.max_layers is {self.s.max_layers}", "name")
            self._specs[name] = new
            self._queue(lambda n: self._install(new, patch, n, False))
        return {"layer": name, "size": list(patch.shape[::-1]) if patch else [0, 0]}

    # -- captions --------------------------------------------------------------------------------------
    def _caption_texts(self, text: str | None, captions: list[dict[str, Any]] | None) -> list[str]:
        """The texts a clip's caption lines are wrapped from: its cues' texts when it has cues, else its `text`."""
        if not self.s.captions:
            return []
        return [c["text"] for c in captions] if captions else [text or ""]

    def _caption_wrap(self, font: Any, text: str) -> list[str]:
        size = self.s.caption_font_size
        return wrap(font, " ".join(text.split()), self.w - 2 * max(16, size // 2))

    def _caption_style(self) -> TextStyle:
        return TextStyle(self.s.caption_font_size, (255, 255, 255), 2, box=self.s.caption_box)

    def caption_pixels(self, text: str | None, captions: list[dict[str, Any]] | None = None,
                       limit: int | None = None) -> int:
        """Pixels of a clip's caption lines as they would be rendered, measured without drawing them. With `limit`,
        a quick lower bound comes first (every glyph's advance, spaces left out, times the line height: one layout
        per cue instead of one per character) and is returned as soon as it passes the limit."""
        font, style = self._font(self.s.caption_font_size), self._caption_style()
        texts = self._caption_texts(text, captions)
        if limit is not None:
            asc, desc = font.getmetrics()
            low = sum(font.getlength("".join(t.split())) for t in texts) * (asc + desc)
            if low > limit:
                return int(low)
        total = 0
        for t in texts:
            for ln in self._caption_wrap(font, t):
                w, h = text_size(ln, font, style)
                total += w * h
        return total

    def check_captions(self, text: str | None, captions: list[dict[str, Any]] | None = None) -> int:
        """Refuse a clip whose captions would cost too much: its lines over overlays.max_caption_pixels
        (`captions_too_large`), or with the lines of every clip held until it airs over
        overlays.caption_budget_bytes (`captions_over_budget`). Returns the bytes its lines will hold."""
        pixels = self.caption_pixels(text, captions, limit=self.s.max_caption_pixels)
        if pixels > self.s.max_caption_pixels:
            raise Rejection("captions_too_large", f"the clip's caption lines would render {pixels} pixels, "
                            f"overlays.max_caption_pixels is {self.s.max_caption_pixels}", "captions")
        cost = pixels * CAPTION_BYTES_PER_PIXEL
        with self._lock:
            held = self._held_bytes
        if cost and held + cost > self.s.caption_budget_bytes:
            raise Rejection("captions_over_budget", f"captions held for clips not yet aired take {held} bytes, this "
                            f"clip's {cost}, overlays.caption_budget_bytes is {self.s.caption_budget_bytes}",
                            "captions")
        return cost

    def note_clip(self, segment_id: str, text: str, duration_s: float, captions: list[dict[str, Any]] | None = None,
                  overlays: list[dict[str, Any]] | None = None) -> None:
        """Remember a queued clip's caption text and cues ({text|name, start, end}, seconds within the clip, already
        checked against it) until it airs. Caption cues, when given, replace `text` timed by characters."""
        caps = tuple((c["text"], float(c["start"]), float(c["end"])) for c in captions or ()) if self.s.captions else ()
        ovs = tuple((o["name"], float(o["start"]), float(o["end"])) for o in overlays or ())
        text = text if self.s.captions else ""
        if not text.strip() and not caps and not ovs:
            return
        cost = self.caption_pixels(text, captions) * CAPTION_BYTES_PER_PIXEL if (text.strip() or caps) else 0
        with self._lock:
            self._forget_locked(segment_id)
            self._clips[segment_id] = ClipCues(text, duration_s, caps, ovs, cost)
            self._held_bytes += cost
            while len(self._clips) > MAX_CAPTIONED_CLIPS:
                self._forget_locked(next(iter(self._clips)))

    def forget(self, segment_id: str) -> None:
        """A clip that will not air (cancelled, cleared): its captions leave the budget."""
        with self._lock:
            self._forget_locked(segment_id)
            self._aired.pop(segment_id, None)
        self._captions.pop(segment_id, None)

    def _forget_locked(self, segment_id: str) -> None:
        clip = self._clips.pop(segment_id, None)
        if clip is not None:
            self._held_bytes -= clip.cost_bytes

    def held_caption_bytes(self) -> int:
        with self._lock:
            return self._held_bytes

    def clip_length(self, segment_id: str, duration_s: float) -> None:
        """A streamed clip's final length (known at its close): its `text` is timed over it from now on (the lines
        are rasterised again at the next chunk, or at once if it is on air)."""
        with self._lock:
            c = self._clips.get(segment_id)
            if c is None:
                return
            self._clips[segment_id] = dataclasses.replace(c, duration_s=duration_s)
        if self._captions.pop(segment_id, None) is not None:
            self.prepare([segment_id])

    def prepare(self, segment_ids: list[str | None]) -> None:
        """Ask for the caption lines of clips about to air (the render thread calls this with each chunk's frames);
        the compositor's caption thread rasterises them, so the caller never waits for it."""
        with self._lock:
            asked = False
            for sid in dict.fromkeys(segment_ids):
                if sid is not None and sid not in self._captions and sid in self._clips and sid not in self._asked:
                    self._asked.append(sid)
                    asked = True
            if asked:
                if self._caption_thread is None and not self._closed:
                    self._caption_thread = threading.Thread(target=self._caption_loop, name="captions", daemon=True)
                    self._caption_thread.start()
                self._ask.notify()

    def _caption_loop(self) -> None:
        while True:
            with self._lock:
                while not self._asked and not self._closed:
                    self._ask.wait()
                if self._closed:
                    return
                sid = self._asked.popleft()
                clip = self._clips.get(sid)
            if clip is None or sid in self._captions:
                continue
            try:
                lines = self._caption_lines(clip)
            except Exception as e:  # noqa: BLE001 - a caption that cannot be drawn must not stop the others
                if self.log is not None:
                    self.log.error("caption_failed", segment_id=sid, error=repr(e)[:200])
                continue
            with self._lock:
                if sid not in self._clips:
                    continue  # aired or forgotten meanwhile
            for stale in list(self._captions)[:max(0, len(self._captions) - MAX_PREPARED_CLIPS + 1)]:
                self._captions.pop(stale, None)  # oldest first: one cancelled before it aired
            self._captions[sid] = lines

    def wait_prepared(self, segment_id: str, timeout_s: float = 10.0) -> bool:
        """Whether the clip's caption lines are ready (waiting up to timeout_s): for tests and tools, not the air."""
        deadline = time.monotonic() + timeout_s
        while segment_id not in self._captions and time.monotonic() < deadline:
            time.sleep(0.005)
        return segment_id in self._captions

    def close(self) -> None:
        """Stop the caption thread."""
        with self._lock:
            self._closed = True
            self._ask.notify_all()
        if self._caption_thread is not None:
            self._caption_thread.join(5)

    def _caption_lines(self, clip: ClipCues) -> list[tuple[int, int, Patch]]:
        """(first clip frame, end clip frame, patch) per line: each cue's span (or the whole clip for `text`) shared
        among its wrapped lines by characters."""
        font = self._font(self.s.caption_font_size)
        spans = [(t, round(a * self.fps), round(b * self.fps)) for t, a, b in clip.captions] if clip.captions else \
            [(clip.text, 0, max(1, round(clip.duration_s * self.fps)))]
        out = []
        style = self._caption_style()
        for text, first, end in spans:
            lines = self._caption_wrap(font, text)
            total, done, frames = sum(len(ln) for ln in lines) or 1, 0, end - first
            for ln in lines:
                start = first + frames * done // total
                done += len(ln)
                rgba = render_text(ln, font, style)
                x, y = place("bottom", (0, self.s.caption_margin), rgba.shape[1], rgba.shape[0], self.w, self.h,
                             self.s.safe_area)
                patch = make_patch(rgba, x, y, self.w, self.h)
                if patch is not None:
                    out.append((start, first + frames * done // total, patch))
        return out

    def _clip_frame(self, segment_id: str | None, held: bool = False) -> int | None:
        """The aired frame's place in its clip (clip frames aired before it); None between clips and for an underrun's
        held frame, which belongs to no clip (docs/overlays.md) and is not counted: the clip's audio is delayed, not
        skipped, so its captions and cues wait with it."""
        if segment_id is None or held:
            return None
        if segment_id != self._cap_sid:
            old, self._cap_sid, self._cap_pos = self._cap_sid, segment_id, 0
            with self._lock:
                if old is not None:  # out of the budget; kept aside in case it replays (cut by play_now)
                    gone = self._clips.get(old)
                    self._forget_locked(old)
                    if gone is not None:
                        self._aired[old] = (gone, self._captions.get(old))
                        while len(self._aired) > MAX_AIRED_CLIPS:
                            self._aired.popitem(last=False)
                back = self._aired.pop(segment_id, None)
                if back is not None and segment_id not in self._clips:  # a replay: what it showed the first time
                    self._clips[segment_id] = back[0]
                    self._held_bytes += back[0].cost_bytes
                clip = self._clips.get(segment_id)
            if old is not None:
                self._captions.pop(old, None)
            if back is not None and back[1] is not None and segment_id not in self._captions:
                self._captions[segment_id] = back[1]
            if segment_id not in self._captions:
                self.prepare([segment_id])  # not seen by the render thread (a restart): asked for now, not drawn here
            self._windows = [(name, round(a * self.fps), round(b * self.fps)) for name, a, b in clip.overlays] \
                if clip is not None else []
        else:
            self._cap_pos += 1
        return self._cap_pos

    def _caption(self, segment_id: str | None, pos: int | None) -> Patch | None:
        if pos is None:
            return None
        for start, end, patch in self._captions.get(segment_id or "", ()):
            if start <= pos < end:
                return patch
        return None

    def _cue_levels(self, pos: int | None) -> dict[str, float]:
        """Layer name -> visibility from the overlay cues of the clip on air at clip frame `pos`."""
        out: dict[str, float] = {}
        if pos is None:
            return out
        for name, on, off in self._windows:
            layer = self._layers.get(name)
            if layer is not None:
                lv = cue_level(pos, on, off, layer.fade_frames)
                if lv > out.get(name, 0.0):
                    out[name] = lv
        return out

    # -- per frame (broadcast thread) -----------------------------------------------------------------
    def compose(self, frame: np.ndarray, n: int, segment_id: str | None = None, held: bool = False) -> np.ndarray:
        """`frame` (uint8 [H, W, 3], not modified) with every layer on air at aired frame n drawn over it. `held`: the
        pacer's underrun filler (the last frame repeated), which is no frame of the clip on air."""
        self._frame = n
        if self._pending:
            with self._lock:
                pending, self._pending = self._pending, []
            for fn in pending:
                fn(n)
        draws: list[tuple[Patch, float]] = []
        pos = self._clip_frame(segment_id, held)
        caption = self._caption(segment_id, pos)
        cued = self._cue_levels(pos) if self._windows else {}
        self._cued = list(cued)
        for name, layer in self._layers.items():
            if name == AI_LABEL and caption is not None:
                draws.append((caption, 1.0))
                caption = None
            lv = max(layer.level(n), cued.get(name, 0.0))
            if lv > 0 and layer.patch is not None:
                draws.append((layer.patch, layer.spec.opacity * lv))
        if caption is not None:
            draws.append((caption, 1.0))
        if not draws:
            return frame
        out = np.array(frame)  # the look-ahead's frame may be repeated in an underrun: never draw on it twice
        for patch, opacity in draws:
            blend(out, patch, opacity)
        return out

    def status(self) -> dict[str, Any]:
        n = self._frame
        return {"ai_label": self.s.ai_label_enabled, "font": self.font_path, "label_font": self.label_font[0],
                "on_air": [name for name, ly in list(self._layers.items()) if ly.shown_at is not None
                           and (ly.hide_at is None or n < ly.hide_at + ly.fade_frames)],
                "cued": list(self._cued),
                "layers": self.names(),
                "placement": self.placement()}

    def placement(self) -> dict[str, dict[str, Any]]:
        """Each layer's kind (text or image), anchor, margin and the start of its text: the console's overlay rows."""
        with self._lock:
            specs = list(self._specs.values())
        return {sp.name: {"kind": "text" if sp.text is not None else "image", "anchor": sp.anchor,
                          "margin": list(sp.margin), **({"text": sp.text[:80]} if sp.text is not None else {})}
                for sp in specs}


def _file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
