"""Generate small test clips in every supported format with PyAV's real encoders (no files from elsewhere)."""

from __future__ import annotations

import io

import av
import numpy as np

# name -> (container format, codec, sample format, rate, channels, protocol format hint)
FORMATS: dict[str, tuple[str, str, str, int, int, str]] = {
    "wav_s16": ("wav", "pcm_s16le", "s16", 16000, 1, "wav"),
    "wav_s24": ("wav", "pcm_s24le", "s32", 44100, 2, "wav"),
    "wav_s32": ("wav", "pcm_s32le", "s32", 48000, 2, "wav"),
    "wav_flt": ("wav", "pcm_f32le", "flt", 22050, 1, "wav"),
    "mp3": ("mp3", "libmp3lame", "s16p", 44100, 2, "mp3"),
    "m4a": ("ipod", "aac", "fltp", 44100, 2, "m4a"),
    "adts": ("adts", "aac", "fltp", 24000, 1, "aac"),
    "flac": ("flac", "flac", "s16", 48000, 1, "flac"),
    "opus": ("ogg", "libopus", "s16", 48000, 2, "ogg"),
}


def tone(seconds: float, rate: int, channels: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    """float32 [n, channels] sine."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)


def encode(name: str, seconds: float = 1.0, freq: float = 440.0) -> bytes:
    """Encode a tone in one of FORMATS and return the file bytes."""
    fmt, codec, sfmt, rate, ch, _hint = FORMATS[name]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate, layout="mono" if ch == 1 else "stereo")
        st.format = sfmt
        pcm = tone(seconds, rate, ch, freq)
        src = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="flt", layout="mono" if ch == 1 else "stereo")
        src.sample_rate = rate
        src.pts = 0
        res = av.AudioResampler(format=sfmt, layout="mono" if ch == 1 else "stereo", rate=rate,
                                frame_size=st.codec_context.frame_size or None)
        for f in res.resample(src) + res.resample(None):
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


def pcm_s16le(seconds: float = 1.0, rate: int = 24000, channels: int = 2, freq: float = 440.0) -> bytes:
    return (tone(seconds, rate, channels, freq) * 32767).astype("<i2").tobytes()
