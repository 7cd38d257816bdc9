"""Audio intake: every supported format decodes to the broadcast and model tracks; bad payloads get their code."""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest

from flashtalk_live.audio import AudioError, decode_audio, sniff_demuxer

from support.audiogen import encode, pcm_s16le, tone


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


ALL = ["wav_s16", "wav_s24", "wav_s32", "wav_flt", "mp3", "m4a", "adts", "flac", "opus", "pcm_s16le"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("rate, channels", [(48000, 2), (44100, 1)])
def test_decode_every_format(clips, name, rate, channels):
    data, fields = clips[name]
    clip = decode_audio(data, format=fields.get("format"), sample_rate=fields.get("sample_rate"),
                        channels=fields.get("channels"), rate=rate, out_channels=channels)
    n = clip.broadcast.shape[0]
    assert clip.broadcast.dtype == np.float32 and clip.broadcast.shape == (n, channels)
    assert clip.model.dtype == np.float32 and clip.model.ndim == 1
    assert clip.model.shape[0] == round(n * 16000 / rate)  # same instants on both tracks
    print(name, clip.source, f"{clip.duration_s:.4f} s")
    # lossy codecs add encoder delay/padding (AAC ~ 1-2 frames), never more than ~0.1 s here
    assert 0.58 <= clip.duration_s <= 0.70
    assert abs(dominant_hz(clip.model, 16000) - 440) < 5
    assert abs(dominant_hz(clip.broadcast[:, 0], rate) - 440) < 5
    peak = float(np.abs(clip.broadcast).max())
    assert 0.4 < peak < 0.6, peak  # 0.5 amplitude tone survives resampling and channel mapping


def test_hint_not_needed_when_bytes_say_it(clips):
    for name in ("wav_s16", "mp3", "m4a", "adts", "flac", "opus"):
        decode_audio(clips[name][0])  # sniffed from magic bytes


def test_sniff():
    assert sniff_demuxer(b"RIFF\0\0\0\0WAVEfmt ") == "wav"
    assert sniff_demuxer(b"\xff\xfb\x90\x00") == "mp3"
    assert sniff_demuxer(b"\xff\xf1\x50\x80") == "aac"
    assert sniff_demuxer(b"#EXTM3U\n") is None  # playlists are never opened
    assert sniff_demuxer(b"????", "flac") == "flac"


def test_raw_pcm_exact_length():
    data = pcm_s16le(0.5, 16000, 1)
    clip = decode_audio(data, format="pcm_s16le", sample_rate=16000, channels=1, rate=48000, out_channels=2)
    assert clip.broadcast.shape == (24000, 2) and clip.model.shape == (8000,)


@pytest.mark.parametrize("data, fields, code", [
    (b"", {}, "empty_audio"),
    (b"\x00" * 1000, {}, "undecodable_audio"),
    (bytes(range(256)) * 8, {"format": "mp3"}, "undecodable_audio"),
    (b"#EXTM3U\n#EXTINF:1,\n/etc/passwd\n", {}, "undecodable_audio"),
    (b"\x01\x02\x03", {"format": "pcm_s16le", "sample_rate": 16000, "channels": 1}, "undecodable_audio"),
    (b"\x01\x02", {"format": "pcm_s16le", "sample_rate": 16000, "channels": 2}, "undecodable_audio"),
])
def test_bad_payloads(data, fields, code):
    with pytest.raises(AudioError) as ei:
        decode_audio(data, **fields)
    assert ei.value.code == code, ei.value.reason
    print(code, ei.value.reason)


def test_corrupt_files(clips):
    wav, mp3, flac = clips["wav_s16"][0], clips["mp3"][0], clips["flac"][0]
    # a valid WAV with no samples
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    with pytest.raises(AudioError) as ei:
        decode_audio(buf.getvalue())
    assert ei.value.code == "empty_audio", ei.value
    for bad in (wav[:20], b"RIFF" + b"\x00" * 200, flac[:10], b"OggS" + b"\x07" * 300, b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 64):
        with pytest.raises(AudioError) as ei:
            decode_audio(bad)
        assert ei.value.code == "undecodable_audio", ei.value
    # a truncated MP3 still holds whole frames: it decodes to the shorter clip (what the bytes say)
    clip = decode_audio(mp3[: len(mp3) // 2])
    assert 0.1 < clip.duration_s < 0.5


def test_float_wav_with_nan_rejected():
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        st = out.add_stream("pcm_f32le", rate=16000, layout="mono")
        x = tone(0.2, 16000, 1)
        x[100] = np.nan
        f = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout="mono")
        f.sample_rate = 16000
        for p in st.encode(f):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    with pytest.raises(AudioError) as ei:
        decode_audio(buf.getvalue())
    assert ei.value.code == "undecodable_audio" and "NaN" in ei.value.reason


def test_too_long_and_too_short():
    long = encode("flac", 3.0)
    with pytest.raises(AudioError) as ei:
        decode_audio(long, max_seconds=2.0)
    assert ei.value.code == "too_long"
    with pytest.raises(AudioError) as ei:
        decode_audio(pcm_s16le(3.0, 16000, 1), format="pcm_s16le", sample_rate=16000, channels=1, max_seconds=2.0)
    assert ei.value.code == "too_long"
    short = pcm_s16le(0.01, 16000, 1)
    with pytest.raises(AudioError) as ei:
        decode_audio(short, format="pcm_s16le", sample_rate=16000, channels=1, min_seconds=0.02)
    assert ei.value.code == "too_short"


def test_multichannel_raw_downmix():
    x = (tone(0.3, 8000, 6) * 32767).astype("<i2").tobytes()
    clip = decode_audio(x, format="pcm_s16le", sample_rate=8000, channels=6, rate=48000, out_channels=2)
    assert clip.broadcast.shape == (14400, 2)
    assert abs(dominant_hz(clip.model, 16000) - 440) < 5


def test_wav_header_lies_about_length(clips):
    # data chunk size says more than is there (a streaming WAV writer that died): decode what exists
    wav = bytearray(clips["wav_s16"][0])
    idx = wav.index(b"data")
    wav[idx + 4: idx + 8] = struct.pack("<I", 0xFFFFFFF0)
    clip = decode_audio(bytes(wav))
    assert abs(clip.duration_s - 0.6) < 0.01
