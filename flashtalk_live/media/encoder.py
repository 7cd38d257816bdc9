"""Encode once: RGB frames + float audio -> H.264 (libx264 / h264_nvenc) and AAC-LC packets, no network I/O.

The encoders live in an in-memory FLV "host" container, so their streams carry the global headers
(SPS/PPS, AudioSpecificConfig) that every output copies with ``add_stream_from_template``. Timestamps
are two integer counters that never reset: video frame ``k`` is at ``k/fps``, audio sample ``n`` at
``n/audio_rate``, so audio and video cannot drift apart however long the encoder runs.
"""

from __future__ import annotations

import io
import threading
from fractions import Fraction
from typing import Any, cast

import av
import numpy as np
from av.video.frame import PictureType
from av.video.stream import VideoStream
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from flashtalk_live.log import get_logger
from flashtalk_live.media.nvenc_probe import nvenc_missing
from flashtalk_live.settings import X264_PRESETS, EncoderSettings

log = get_logger("encoder")

_LAYOUTS = {1: "mono", 2: "stereo"}
# H.264 VUI codes for BT.709 (colour primaries, transfer, matrix): players then decode the colours we encoded.
_BT709 = 1


class EncoderError(RuntimeError):
    """The encoder could not be opened or was fed something it cannot encode."""


class Encoder:
    """One H.264 + AAC encode shared by every output."""

    def __init__(self, enc: EncoderSettings, width: int, height: int, fps: int) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"width and height must be positive and even for yuv420p, got {width}x{height}")
        if not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        if enc.audio_rate % fps:
            raise ValueError(f"audio_rate {enc.audio_rate} is not a whole number of samples per frame at {fps} fps")
        self.settings = enc
        self.width, self.height, self.fps = width, height, fps
        self.samples_per_frame = enc.audio_rate // fps
        self.channels = enc.audio_channels
        self.gop_frames = max(1, round(enc.gop_seconds * fps))
        self.fallback_reason: str | None = None

        self._host: Any = None
        if enc.video_codec == "h264_nvenc":
            self.fallback_reason = nvenc_missing()  # milliseconds; a failed open costs a CUDA context (~0.6 s)
            if self.fallback_reason is None:
                try:
                    self._open("h264_nvenc")
                except Exception as e:  # noqa: BLE001 - any failure to open NVENC means "use x264"
                    self.fallback_reason = f"{type(e).__name__}: {e}"
                    self._close_host()
            if self.fallback_reason is not None:
                log.warning("nvenc_unavailable_falling_back", codec="libx264", reason=self.fallback_reason)
        if self._host is None:
            try:
                self._open("libx264")
            except Exception as e:
                self._close_host()
                raise EncoderError(f"cannot open libx264 ({type(e).__name__}: {e})") from e

        self._reformatter = VideoReformatter()
        self._resampler = av.AudioResampler(
            format="fltp", layout=_LAYOUTS[self.channels], rate=enc.audio_rate,
            frame_size=self._a.codec_context.frame_size or 1024,
        )
        self._lock = threading.Lock()  # encode() vs request_keyframe() from another thread
        self._want_idr = False
        self._flushed = False
        self.frames = 0  # video frames encoded = next video pts (1/fps)
        self.audio_samples_in = 0  # samples handed to encode()
        self.audio_samples = 0  # samples sent to the AAC encoder = next audio pts (1/audio_rate)
        self.video_bytes = 0
        self.audio_bytes = 0
        self.keyframes_requested = 0
        log.info("encoder_open", video_codec=self.video_codec, size=f"{width}x{height}", fps=fps,
                 gop_frames=self.gop_frames, video_bitrate=enc.video_bitrate, audio_rate=enc.audio_rate,
                 audio_channels=self.channels)

    # -- set-up ------------------------------------------------------------------------------
    def _video_options(self, codec: str) -> dict[str, str]:
        s = self.settings
        rate = str(s.video_bitrate)
        bufsize = str(s.bufsize or 2 * s.video_bitrate)
        common = {"b": rate, "maxrate": rate, "bufsize": bufsize, "g": str(self.gop_frames), "bf": str(s.bframes)}
        if codec == "libx264":
            params = (f"keyint={self.gop_frames}:min-keyint={self.gop_frames}:scenecut=0:bframes={s.bframes}"
                      ":nal-hrd=cbr:force-cfr=1")
            preset = s.preset if s.preset in X264_PRESETS else "veryfast"  # an NVENC p1..p7 after a fallback
            opts = {**common, "preset": preset, "x264-params": params, "forced-idr": "1"}
            if s.tune:
                # zerolatency is always on (no lookahead, no frame threading delay); other tunes add to it.
                tunes = {t for t in s.tune.split(",") if t} | {"zerolatency"}
                opts["tune"] = ",".join(sorted(tunes))
            else:
                opts["tune"] = "zerolatency"
            if s.threads:
                opts["threads"] = str(s.threads)
            return opts
        # h264_nvenc: presets are p1..p7 there; map x264 names to a low-latency equivalent.
        preset = s.preset if s.preset.startswith("p") and s.preset[1:].isdigit() else "p4"
        return {**common, "preset": preset, "tune": "ll", "rc": "cbr", "zerolatency": "1", "forced-idr": "1",
                "no-scenecut": "1", "strict_gop": "1"}

    def _open(self, codec: str) -> None:
        s = self.settings
        host = av.open(io.BytesIO(), "w", format="flv")
        self._host = host
        v = cast(VideoStream, host.add_stream(codec, rate=self.fps, options=self._video_options(codec)))
        v.width, v.height, v.pix_fmt = self.width, self.height, "yuv420p"
        cc = v.codec_context
        cc.gop_size = self.gop_frames
        cc.max_b_frames = s.bframes
        cc.colorspace = cc.color_primaries = cc.color_trc = _BT709
        cc.color_range = int(ColorRange.MPEG)
        a = host.add_stream("aac", rate=s.audio_rate, layout=_LAYOUTS[s.audio_channels])
        a.bit_rate = s.audio_bitrate
        host.start_encoding()  # opens both encoders; codecpar now holds the global headers
        self._v, self._a = v, a
        self.video_codec = codec

    def _close_host(self) -> None:
        if self._host is not None:
            try:
                self._host.close()
            except Exception:  # noqa: BLE001 - only ever the in-memory container
                pass
            self._host = None

    # -- public --------------------------------------------------------------------------------
    @property
    def video_stream(self) -> Any:
        """The encoder's video stream: the template every output copies."""
        return self._v

    @property
    def audio_stream(self) -> Any:
        return self._a

    @property
    def video_time_base(self) -> Fraction:
        return Fraction(1, self.fps)

    @property
    def audio_time_base(self) -> Fraction:
        return Fraction(1, self.settings.audio_rate)

    def request_keyframe(self) -> None:
        """Make the next encoded frame an IDR (thread-safe); outputs call this when they (re)connect."""
        with self._lock:
            self._want_idr = True
            self.keyframes_requested += 1

    def encode(self, frame_rgb: np.ndarray, audio: np.ndarray | None = None) -> list[Any]:
        """Encode one video frame and its audio (``samples_per_frame`` x channels float32; None = silence)."""
        if self._flushed:
            raise EncoderError("encode() after flush()")
        frame_rgb = self._check_frame(frame_rgb)
        audio = self._check_audio(audio)

        vf = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
        # Explicit BT.709 limited-range conversion matching the VUI tags set on the stream.
        vf = self._reformatter.reformat(vf, format="yuv420p", dst_colorspace=Colorspace.ITU709,
                                        dst_color_range=ColorRange.MPEG, interpolation=Interpolation.POINT,
                                        threads=1)
        vf.pts = self.frames
        vf.time_base = self.video_time_base
        with self._lock:
            if self._want_idr:
                vf.pict_type = PictureType.I
                self._want_idr = False
        self.frames += 1
        packets = list(self._v.encode(vf))
        packets += self._encode_audio(audio)
        for p in packets:
            if p.stream is self._v:
                self.video_bytes += p.size
            else:
                self.audio_bytes += p.size
        return packets

    def flush(self) -> list[Any]:
        """Drain both encoders (resampler remainder, delayed frames); the encoder is finished afterwards."""
        if self._flushed:
            return []
        self._flushed = True
        packets: list[Any] = []
        for rf in self._resampler.resample(None):
            packets += self._encode_audio_frame(rf)
        packets += list(self._v.encode(None))
        packets += list(self._a.encode(None))
        return packets

    def close(self) -> None:
        """Release the encoders (call flush() first to keep the tail)."""
        self._flushed = True
        self._close_host()

    @property
    def bytes(self) -> int:
        return self.video_bytes + self.audio_bytes

    def stats(self) -> dict[str, Any]:
        return {
            "video_codec": self.video_codec, "frames": self.frames, "audio_samples": self.audio_samples,
            "video_bytes": self.video_bytes, "audio_bytes": self.audio_bytes,
            "keyframes_requested": self.keyframes_requested, "fallback_reason": self.fallback_reason,
            # audio still inside the resampler/encoder is not yet on air; skew is measured on what was fed
            "av_skew_s": self.audio_samples_in / self.settings.audio_rate - self.frames / self.fps,
        }

    # -- helpers ----------------------------------------------------------------------------------
    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.shape != (self.height, self.width, 3):
            raise ValueError(f"frame shape {frame.shape} != expected {(self.height, self.width, 3)} (H, W, RGB)")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame dtype must be uint8, got {frame.dtype}")
        return np.ascontiguousarray(frame)

    def _check_audio(self, audio: np.ndarray | None) -> np.ndarray:
        n, ch = self.samples_per_frame, self.channels
        if audio is None:
            return np.zeros((n, ch), np.float32)
        if not isinstance(audio, np.ndarray):
            raise TypeError(f"audio must be a numpy array, got {type(audio).__name__}")
        if audio.ndim == 1:
            audio = audio[:, None]
        if audio.ndim != 2 or audio.shape[0] != n or audio.shape[1] not in (1, 2):
            raise ValueError(f"audio shape {audio.shape} != expected ({n}, {ch}) (samples_per_frame, channels)")
        if audio.dtype.kind != "f":
            raise ValueError(f"audio must be float in [-1, 1], got dtype {audio.dtype}")
        if audio.shape[1] != ch:  # mono <-> stereo: duplicate or average
            audio = np.repeat(audio, ch, axis=1) if ch == 2 else audio.mean(axis=1, keepdims=True)
        return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)

    def _encode_audio(self, audio: np.ndarray) -> list[Any]:
        af = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout=_LAYOUTS[self.channels])
        af.sample_rate = self.settings.audio_rate
        self.audio_samples_in += audio.shape[0]
        packets: list[Any] = []
        for rf in self._resampler.resample(af):
            packets += self._encode_audio_frame(rf)
        return packets

    def _encode_audio_frame(self, rf: Any) -> list[Any]:
        rf.pts = self.audio_samples
        rf.time_base = self.audio_time_base
        self.audio_samples += rf.samples
        return list(self._a.encode(rf))
