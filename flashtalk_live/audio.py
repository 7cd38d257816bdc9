"""Audio decoding, a shared leaf: clip bytes in any accepted format (WAV, MP3, AAC/M4A, FLAC, OGG/Opus, raw s16le) to the broadcast and model rates. The spool, the programme and ingest all use it.

The container is chosen from the payload's magic bytes (the client's format hint only breaks ties), and the demuxer
is always named explicitly: FFmpeg's free probing would also accept playlists (hls, concat) that open other files.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext

from flashtalk_live.errors import Rejection
from flashtalk_live.settings import EncoderSettings, IngestSettings

MODEL_RATE = 16_000

# hint -> FFmpeg demuxer
_HINT_DEMUXER = {
    "wav": "wav", "mp3": "mp3", "m4a": "mov", "mp4": "mov", "aac": "aac",
    "flac": "flac", "ogg": "ogg", "opus": "ogg",
}


class AudioError(Rejection):
    """A payload that cannot become a clip: code is undecodable_audio, empty_audio, too_long or too_short."""


@dataclass
class ClipAudio:
    """A decoded clip. broadcast: float32 [n, channels] at `rate`; model: float32 [round(n*16000/rate)] mono 16 kHz."""

    broadcast: np.ndarray
    model: np.ndarray
    rate: int
    channels: int
    source: str  # e.g. "mp3 44100 Hz 2 ch"

    @property
    def duration_s(self) -> float:
        return self.broadcast.shape[0] / self.rate


def sniff_demuxer(data: bytes, hint: str | None = None) -> str | None:
    """The FFmpeg demuxer for these bytes, from magic numbers; the hint decides only when the bytes don't."""
    head = data[:16]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mov"
    if head[:3] == b"ID3":
        return "aac" if hint == "aac" else "mp3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        layer = (head[1] >> 1) & 0x3
        return "aac" if layer == 0 else "mp3"  # ADTS has layer bits 00, MPEG audio never does
    return _HINT_DEMUXER.get(hint or "")


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}[channels]


class _Resampled:
    """Feeds frames to two resamplers (broadcast and model) and collects float32 output.

    Mono and stereo sources are resampled in their own layout and mapped here: mono goes to both sides at full
    level and stereo folds to mono as the mean (swresample would mix to the centre at -3 dB / +3 dB). Other layouts
    use swresample's downmix.
    """

    def __init__(self, rate: int, channels: int) -> None:
        self.rate, self.channels = rate, channels
        self.bc: av.AudioResampler | None = None  # made on the first frame, when the source layout is known
        self.md: av.AudioResampler | None = None
        self.mid_channels = channels
        self.bc_parts: list[np.ndarray] = []
        self.md_parts: list[np.ndarray] = []
        self.in_samples = 0
        self.in_rate = 0

    def _map(self, x: np.ndarray, want: int) -> np.ndarray:
        if x.shape[1] == want:
            return x
        if want == 1:
            return x.mean(axis=1, keepdims=True, dtype=np.float32)
        return np.repeat(x, want, axis=1)

    def push(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            self.in_samples += frame.samples
            self.in_rate = frame.sample_rate
            frame.pts = None  # timestamps are irrelevant here; a gap in them must not insert silence
            if self.bc is None:
                src = frame.layout.nb_channels
                self.mid_channels = src if src <= 2 else self.channels
                self.bc = av.AudioResampler(format="flt", layout=_layout(self.mid_channels), rate=self.rate)
                self.md = av.AudioResampler(format="flt", layout=_layout(min(src, 2) if src <= 2 else 1),
                                            rate=MODEL_RATE)
        if self.bc is None or self.md is None:
            return
        for out in self.bc.resample(frame):
            x = out.to_ndarray().reshape(-1, self.mid_channels)
            self.bc_parts.append(self._map(x, self.channels))
        for out in self.md.resample(frame):
            x = out.to_ndarray()
            x = x.reshape(-1, out.layout.nb_channels)
            self.md_parts.append(self._map(x, 1).reshape(-1))

    @property
    def in_seconds(self) -> float:
        return self.in_samples / self.in_rate if self.in_rate else 0.0

    def result(self, source: str) -> ClipAudio:
        self.push(None)
        bc = np.concatenate(self.bc_parts) if self.bc_parts else np.zeros((0, self.channels), np.float32)
        md = np.concatenate(self.md_parts) if self.md_parts else np.zeros(0, np.float32)
        m = round(bc.shape[0] * MODEL_RATE / self.rate)
        if md.shape[0] >= m:
            md = md[:m]
        else:
            md = np.concatenate([md, np.zeros(m - md.shape[0], np.float32)])
        return ClipAudio(np.ascontiguousarray(bc, np.float32), np.ascontiguousarray(md, np.float32),
                         self.rate, self.channels, source)


def _decode_raw(data: bytes, sample_rate: int, channels: int, res: _Resampled, max_seconds: float) -> str:
    if not 1 <= channels <= 8:
        raise AudioError("undecodable_audio", f"raw pcm_s16le with {channels} channels: 1..8 supported")
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        raise AudioError("undecodable_audio",
                         f"raw pcm_s16le payload of {len(data)} bytes is not a whole number of {channels}-channel frames")
    pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
    if pcm.shape[0] / sample_rate > max_seconds:
        raise AudioError("too_long", f"clip is {pcm.shape[0] / sample_rate:.1f} s, limit {max_seconds:g} s")
    step = 1 << 15
    for i in range(0, pcm.shape[0], step):
        block = np.ascontiguousarray(pcm[i:i + step]).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="s16", layout=_layout(channels))
        frame.sample_rate = sample_rate
        res.push(frame)
    return f"pcm_s16le {sample_rate} Hz {channels} ch"


def _decode_container(data: bytes, demuxer: str, res: _Resampled, max_seconds: float) -> str:
    try:
        container = av.open(io.BytesIO(data), mode="r", format=demuxer)
    except (av.FFmpegError, ValueError, OSError) as e:
        raise AudioError("undecodable_audio", f"not a readable {demuxer} file: {_why(e)}") from None
    with container:
        if not container.streams.audio:
            raise AudioError("undecodable_audio", f"{demuxer} file has no audio stream")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        try:
            for frame in container.decode(stream):
                if frame.samples == 0:
                    continue
                res.push(frame)
                if res.in_seconds > max_seconds:
                    raise AudioError("too_long", f"clip is longer than the limit of {max_seconds:g} s")
        except AudioError:
            raise
        except (av.FFmpegError, ValueError, OSError) as e:
            where = f" after {res.in_seconds:.2f} s" if res.in_samples else ""
            raise AudioError("undecodable_audio", f"{demuxer}/{codec} decode error{where}: {_why(e)}") from None
        return f"{demuxer}/{codec} {stream.codec_context.sample_rate} Hz {stream.codec_context.channels} ch"


def decode_audio(
    data: bytes,
    *,
    format: str | None = None,
    sample_rate: int | None = None,
    channels: int | None = None,
    rate: int = 48_000,
    out_channels: int = 2,
    max_seconds: float = math.inf,
    min_seconds: float = 0.0,
) -> ClipAudio:
    """Decode `data` (any supported container, or raw s16le with sample_rate/channels) into a ClipAudio.

    rate/out_channels: the broadcast track (settings.encoder.audio_rate / audio_channels). Raises AudioError.
    """
    if not data:
        raise AudioError("empty_audio", "the payload is zero bytes")
    res = _Resampled(rate, out_channels)
    if format == "pcm_s16le":
        if not sample_rate or not channels:
            raise AudioError("undecodable_audio", "raw pcm_s16le needs sample_rate and channels")
        source = _decode_raw(data, sample_rate, channels, res, max_seconds)
    else:
        demuxer = sniff_demuxer(data, format)
        if demuxer is None:
            raise AudioError("undecodable_audio",
                             f"unrecognised audio (first bytes {bytes(data[:8]).hex()}); supported: WAV, MP3, "
                             "AAC (ADTS or M4A), FLAC, Ogg/Opus, or raw pcm_s16le with sample_rate and channels")
        source = _decode_container(data, demuxer, res, max_seconds)
    try:
        clip = res.result(source)
    except (av.FFmpegError, ValueError) as e:
        raise AudioError("undecodable_audio", f"resampling failed: {_why(e)}") from None
    if clip.broadcast.shape[0] == 0:
        raise AudioError("empty_audio", f"{source}: the file holds no audio samples")
    if not (np.isfinite(clip.broadcast).all() and np.isfinite(clip.model).all()):
        raise AudioError("undecodable_audio", f"{source}: samples contain NaN or infinity")
    if clip.duration_s > max_seconds:
        raise AudioError("too_long", f"clip is {clip.duration_s:.2f} s, limit {max_seconds:g} s")
    if clip.duration_s < min_seconds:
        raise AudioError("too_short", f"clip is {clip.duration_s * 1000:.1f} ms, minimum {min_seconds * 1000:g} ms")
    return clip


def decode_for_settings(data: bytes, encoder: EncoderSettings, ingest: IngestSettings, *, format: str | None = None,
                        sample_rate: int | None = None, channels: int | None = None,
                        enforce_limits: bool = True) -> ClipAudio:
    """decode_audio with the broadcast format (encoder) and clip limits (ingest) of the settings."""
    return decode_audio(
        data, format=format, sample_rate=sample_rate, channels=channels,
        rate=encoder.audio_rate, out_channels=encoder.audio_channels,
        max_seconds=ingest.max_clip_seconds if enforce_limits else math.inf,
        min_seconds=ingest.min_clip_seconds if enforce_limits else 0.0,
    )


STREAM_FORMATS = ("pcm_s16le", "mp3", "ogg", "opus")  # a streamed clip's formats: decodable from any byte boundary


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (RFC 3533: CRC-32, polynomial 0x04C11DB7, MSB first, no reflection, zero start)."""
    crc = 0
    for b in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[(crc >> 24) ^ b]
    return crc


class OggPackets:
    """Ogg pages fed in pieces cut anywhere -> the packets of its one logical stream, in order (RFC 3533). A page
    that does not start where one must, fails its checksum or belongs to a second stream is an AudioError; between
    pieces only an unfinished page (<= 65,307 bytes) and an unfinished packet are kept."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._packet = bytearray()  # a packet continued on the next page
        self._serial: int | None = None
        self.granule = -1  # the granule position of the last page that ended a packet (-1: none yet)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 27:
            if self._buf[:4] != b"OggS" or self._buf[4] != 0:
                raise AudioError("undecodable_audio", "ogg stream: no Ogg page where the next one should start")
            head = 27 + self._buf[26]
            if len(self._buf) < head:
                break
            lacing = bytes(self._buf[27:head])
            size = head + sum(lacing)
            if len(self._buf) < size:
                break
            page = bytes(self._buf[:size])
            del self._buf[:size]
            if _ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != int.from_bytes(page[22:26], "little"):
                raise AudioError("undecodable_audio", "ogg stream: a page fails its checksum")
            serial = int.from_bytes(page[14:18], "little")
            if self._serial is None:
                self._serial = serial
            elif serial != self._serial:
                raise AudioError("undecodable_audio", "ogg stream: a second logical stream (one Opus stream only)")
            granule = int.from_bytes(page[6:14], "little", signed=True)
            if granule >= 0:
                self.granule = granule
            if not page[5] & 1:  # not a continuation: nothing is carried over
                self._packet.clear()
            pos = head
            for n in lacing:
                self._packet += page[pos:pos + n]
                pos += n
                if n < 255:
                    out.append(bytes(self._packet))
                    self._packet.clear()
        return out


class _OpusPackets:
    """The packets of an Ogg Opus stream (RFC 7845) -> decoded frames. OpusHead sets up the decoder, which drops
    the encoder's priming samples (its pre-skip) itself; OpusTags is skipped; the last frame is held back until
    the next one or the end, where it is cut to the final page's granule position (the codec's padding goes, as
    the container path cuts it)."""

    def __init__(self) -> None:
        self.ogg = OggPackets()
        self.codec: AudioCodecContext | None = None
        self.pre_skip = 0
        self.tags = True  # the OpusTags packet is still to come
        self.samples = 0  # decoded so far (after the pre-skip)
        self.held: av.AudioFrame | None = None

    def frames(self, data: bytes) -> list[av.AudioFrame]:
        out: list[av.AudioFrame] = []
        for packet in self.ogg.feed(data):
            if self.codec is None:
                if packet[:8] != b"OpusHead" or len(packet) < 19:
                    raise AudioError("undecodable_audio", "ogg stream: not Opus (a streamed Ogg clip carries Opus: "
                                                          "its first packet is OpusHead)")
                self.codec = AudioCodecContext.create("opus", "r")
                self.codec.extradata = packet
                self.pre_skip = int.from_bytes(packet[10:12], "little")
            elif self.tags and packet[:8] == b"OpusTags":
                self.tags = False
            else:
                self.tags = False
                out += self._hold(self.codec.decode(av.Packet(packet)))
        return out

    def _hold(self, frames: list[av.AudioFrame]) -> list[av.AudioFrame]:
        out = []
        for f in frames:
            if f.samples:
                self.samples += f.samples
                if self.held is not None:
                    out.append(self.held)
                self.held = f
        return out

    def flush(self) -> list[av.AudioFrame]:
        if self.codec is None:
            return []
        out = self._hold(list(self.codec.decode(None)))
        f, self.held = self.held, None
        if f is None:
            return out
        excess = self.samples - (self.ogg.granule - self.pre_skip) if self.ogg.granule >= 0 else 0
        if 0 < excess < f.samples:
            x: Any = f.to_ndarray()
            keep = f.samples - excess
            x = x[:, :keep] if f.format.is_planar else x[:, : keep * len(f.layout.channels)]
            g = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format=f.format.name, layout=f.layout.name)
            g.sample_rate = f.sample_rate
            f = g
        return out + [f]


class StreamDecoder:
    """A streamed clip's bytes, piece by piece, into broadcast-rate and 16 kHz model audio (queue/streams.py).

    Raw s16le is cut at whole frames (a piece may end mid-sample: the rest waits for the next piece); MP3 goes
    through FFmpeg's frame parser, Ogg Opus through the page reader here (OggPackets), so pieces need not end on
    frame or page boundaries. The same pieces always give the same
    samples, so a restart rebuilds a stream from its stored parts exactly. `feed` raises AudioError."""

    def __init__(self, format: str, sample_rate: int | None, channels: int | None, *, rate: int = 48_000,
                 out_channels: int = 2) -> None:
        if format not in STREAM_FORMATS:
            raise AudioError("undecodable_audio", f"a streamed clip carries one of {', '.join(STREAM_FORMATS)}, "
                                                  f"not {format!r}")
        if format == "pcm_s16le" and (not sample_rate or not channels):
            raise AudioError("undecodable_audio", "raw pcm_s16le needs sample_rate and channels")
        self.format, self.sample_rate, self.channels = format, sample_rate, channels
        self._res = _Resampled(rate, out_channels)
        self._carry = b""
        self._codec = av.CodecContext.create("mp3", "r") if format == "mp3" else None
        self._opus = _OpusPackets() if format in ("ogg", "opus") else None
        self.flushed = False
        self._id3: int | None = None  # MP3: bytes of a leading ID3v2 tag still to skip (None: header not seen yet)

    def _drain(self) -> tuple[np.ndarray, np.ndarray]:
        r = self._res
        bc = np.concatenate(r.bc_parts) if r.bc_parts else np.zeros((0, r.channels), np.float32)
        md = np.concatenate(r.md_parts) if r.md_parts else np.zeros(0, np.float32)
        r.bc_parts, r.md_parts = [], []
        if not (np.isfinite(bc).all() and np.isfinite(md).all()):
            raise AudioError("undecodable_audio", "samples contain NaN or infinity")
        return np.ascontiguousarray(bc, np.float32), np.ascontiguousarray(md, np.float32)

    def feed(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """The audio this piece completes: (broadcast [n, channels], model [m])."""
        try:
            if self._opus is not None:
                for frame in self._opus.frames(data):
                    self._res.push(frame)
            elif self._codec is None:
                assert self.channels is not None and self.sample_rate is not None  # raw PCM: checked at open
                ch = int(self.channels)
                buf = self._carry + data
                whole = len(buf) - len(buf) % (2 * ch)
                self._carry = buf[whole:]
                if whole:
                    pcm = np.frombuffer(buf[:whole], dtype="<i2").reshape(1, -1)
                    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=_layout(ch))
                    frame.sample_rate = int(self.sample_rate)
                    self._res.push(frame)
            else:
                data = self._skip_id3(data)
                for packet in self._codec.parse(data):
                    for frame in self._codec.decode(packet):
                        if frame.samples:
                            self._res.push(frame)
        except AudioError:
            raise
        except (av.FFmpegError, ValueError, OSError) as e:
            raise AudioError("undecodable_audio", f"{self.format} stream decode error: {_why(e)}") from None
        return self._drain()

    def _skip_id3(self, data: bytes) -> bytes:
        """Drop a leading ID3v2 tag (the MP3 parser would hand it to the decoder as a bad frame)."""
        if self._id3 is None:  # not decided yet: need the 10-byte header
            self._carry += data
            if len(self._carry) < 10:
                return b""
            head, data, self._carry = self._carry[:10], self._carry, b""
            if head[:3] == b"ID3":
                size = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F))
                self._id3 = size + (10 if head[5] & 0x10 else 0)
            else:
                self._id3 = 0
        if self._id3:
            n = min(self._id3, len(data))
            self._id3 -= n
            data = data[n:]
        return data

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """The end of the stream: what the codec and resamplers still hold (call once)."""
        if self.flushed:
            return self._drain()
        self.flushed = True
        try:
            if self._opus is not None:
                for frame in self._opus.flush():
                    self._res.push(frame)
            if self._codec is not None:
                for packet in self._codec.parse(b""):
                    for frame in self._codec.decode(packet):
                        if frame.samples:
                            self._res.push(frame)
                for frame in self._codec.decode(None):
                    if frame.samples:
                        self._res.push(frame)
            self._res.push(None)
        except (av.FFmpegError, ValueError, OSError) as e:
            raise AudioError("undecodable_audio", f"{self.format} stream decode error at its end: {_why(e)}") from None
        return self._drain()
