"""The encoder alone: its packets decoded back (H.264 + AAC), GOP, no B-frames, A/V alignment, IDR requests."""

from __future__ import annotations

import time
from fractions import Fraction

import av
import numpy as np
import pytest

from flashtalk_live.media.encoder import Encoder
from flashtalk_live.settings import EncoderSettings

W, H, FPS, RATE = 256, 192, 25, 48000
PALETTE = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 210, 40), (200, 60, 200), (40, 200, 210)]


def _inputs(i: int, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    sec = i // FPS
    img = np.empty((H, W, 3), np.uint8)
    img[:] = PALETTE[sec % len(PALETTE)]
    n = RATE // FPS
    t = (np.arange(n) + i * n) / RATE
    a = (0.3 * np.sin(2 * np.pi * (300 + 100 * sec) * t)).astype(np.float32)
    return img, np.repeat(a[:, None], channels, axis=1)


def _encoder(**kw: object) -> Encoder:
    return Encoder(EncoderSettings(**{"preset": "ultrafast", "video_bitrate": 500_000, **kw}), W, H, FPS)


def _run(enc: Encoder, frames: int, idr_at: tuple[int, ...] = ()) -> tuple[list, list, float]:
    video, audio = [], []
    t0 = time.process_time()
    for i in range(frames):
        if i in idr_at:
            enc.request_keyframe()
        for p in enc.encode(*_inputs(i, enc.channels)):
            (video if p.stream is enc.video_stream else audio).append(p)
    cpu = (time.process_time() - t0) / frames
    for p in enc.flush():
        (video if p.stream is enc.video_stream else audio).append(p)
    return video, audio, cpu


@pytest.mark.timeout(60)
def test_packets_decode_back_to_h264_aac_with_2s_gop_and_aligned_ends() -> None:
    enc = _encoder()
    assert enc.video_codec == "libx264"
    frames = 6 * FPS
    video, audio, cpu = _run(enc, frames)
    print(f"encode cost {cpu * 1000:.2f} ms CPU/frame at {W}x{H} ultrafast")

    # video: one packet per frame, pts = frame index in 1/fps, no reordering (no B-frames)
    assert [p.time_base for p in video[:1]] == [Fraction(1, FPS)]
    assert [p.pts for p in video] == list(range(frames))
    assert all(p.dts == p.pts for p in video)
    keyframes = [p.pts for p in video if p.is_keyframe]
    assert keyframes == [0, 50, 100]  # GOP = 2 s at 25 fps, nothing else

    # audio: 1024-sample AAC frames with running sample-count timestamps in 1/48000
    assert audio[0].time_base == Fraction(1, RATE)
    steps = {b.pts - a.pts for a, b in zip(audio, audio[1:])}
    assert steps == {1024}
    audio_end = Fraction(audio[-1].pts + 1024, RATE)
    video_end = Fraction(frames, FPS)
    print(f"video end {float(video_end):.4f} s, audio end {float(audio_end):.4f} s")
    assert abs(audio_end - video_end) <= Fraction(1024, RATE)  # within one AAC frame after flush

    # decode both back with decoders built from the stream headers every output copies
    vdec = av.CodecContext.create("h264", "r")
    vdec.extradata = enc.video_stream.codec_context.extradata
    decoded = []
    for p in video:
        decoded += vdec.decode(p)
    decoded += vdec.decode(None)
    assert len(decoded) == frames
    assert (decoded[0].width, decoded[0].height) == (W, H)
    assert decoded[0].format.name == "yuv420p"
    # the colours come back (BT.709 limited range, tagged in the stream): one mid-second frame per second
    for sec in range(6):
        f = decoded[sec * FPS + FPS // 2]
        rgb = f.to_ndarray(format="rgb24", dst_colorspace="itu709", src_colorspace="itu709")
        got = rgb[H // 2, W // 2].astype(int)
        want = np.array(PALETTE[sec % len(PALETTE)])
        assert np.abs(got - want).max() <= 12, (sec, got, want)

    adec = av.CodecContext.create("aac", "r")
    adec.extradata = enc.audio_stream.codec_context.extradata
    pcm = []
    for p in audio:
        for fr in adec.decode(p):
            assert (fr.sample_rate, fr.layout.name, len(fr.layout.channels)) == (RATE, "stereo", 2)
            pcm.append(fr.to_ndarray())
    x = np.concatenate(pcm, axis=1)[0]
    # AAC priming delays the decoded audio by 1024 samples; check the tone of each second's middle
    for sec in range(1, 5):
        mid = 1024 + sec * RATE + RATE // 4
        seg = x[mid : mid + RATE // 2] * np.hanning(RATE // 2)
        peak_hz = np.argmax(np.abs(np.fft.rfft(seg))) * 2  # 0.5 s window -> 2 Hz bins
        assert abs(peak_hz - (300 + 100 * sec)) <= 4, (sec, peak_hz)
    assert enc.frames == frames and enc.bytes > 0
    enc.close()


@pytest.mark.timeout(60)
def test_request_keyframe_forces_an_idr_on_the_next_frame() -> None:
    enc = _encoder()
    video, _, _ = _run(enc, 3 * FPS, idr_at=(30,))
    keyframes = [p.pts for p in video if p.is_keyframe]
    # the GOP restarts at the forced IDR: 30 and then 2 s later
    assert keyframes == [0, 30]
    assert enc.keyframes_requested == 1
    enc.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("preset", "tune"), [("ultrafast", None), ("veryfast", "zerolatency"), ("medium", "film")])
def test_each_frame_leaves_the_encoder_with_its_own_call(preset: str, tune: str | None) -> None:
    """No encoder buffering on the path to air (issue 23): the packet of frame i comes out of the encode() call
    that took frame i (zerolatency, added to any tune the operator sets: no lookahead, no frame-thread delay, no
    B-frames; x264's film tune alone holds 41 frames at medium)."""
    enc = _encoder(preset=preset, tune=tune)
    for i in range(2 * FPS):
        pts = [p.pts for p in enc.encode(*_inputs(i, enc.channels)) if p.stream is enc.video_stream]
        assert pts == [i], f"frame {i} at {preset}: packets {pts}"
    assert not [p for p in enc.flush() if p.stream is enc.video_stream]  # nothing was held back
    enc.close()


@pytest.mark.timeout(60)
def test_cbr_bitrate_is_close_to_the_setting() -> None:
    enc = _encoder(video_bitrate=300_000)
    video, _, _ = _run(enc, 4 * FPS)
    bps = sum(p.size for p in video) * 8 / 4.0
    print(f"measured video bitrate {bps:.0f} b/s for a 300000 b/s CBR setting")
    # nal-hrd=cbr pads with filler: a flat picture still costs the configured rate
    assert 0.7 * 300_000 <= bps <= 1.3 * 300_000
    enc.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preset", ["ultrafast", "p1"])  # an NVENC preset must not break the x264 fallback
def test_nvenc_falls_back_to_libx264_when_it_cannot_open(preset: str) -> None:
    enc = _encoder(video_codec="h264_nvenc", preset=preset)
    if enc.video_codec == "h264_nvenc":  # a machine with a working NVENC
        assert enc.fallback_reason is None
    else:
        assert enc.video_codec == "libx264"
        assert enc.fallback_reason, "the reason for the fallback is kept for status and logs"
    video, audio, _ = _run(enc, FPS)
    assert len(video) == FPS and audio
    enc.close()


@pytest.mark.timeout(30)
def test_mono_input_is_upmixed_and_silence_is_default() -> None:
    enc = _encoder(audio_channels=2)
    img, _ = _inputs(0)
    mono = np.zeros((RATE // FPS, 1), np.float32)
    assert enc.encode(img, mono) is not None
    enc.encode(img, None)
    assert enc.audio_samples_in == 2 * RATE // FPS
    assert enc.stats()["av_skew_s"] == 0.0
    enc.close()


@pytest.mark.timeout(30)
def test_bad_inputs_get_clear_errors() -> None:
    enc = _encoder()
    img, audio = _inputs(0)
    with pytest.raises(ValueError, match="frame shape"):
        enc.encode(img[:, :-2], audio)
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(img.astype(np.float32), audio)
    with pytest.raises(ValueError, match="audio shape"):
        enc.encode(img, audio[:-1])
    with pytest.raises(ValueError, match="float"):
        enc.encode(img, (audio * 1000).astype(np.int16))
    with pytest.raises(ValueError, match="even"):
        Encoder(EncoderSettings(), 255, 256, 25)
    with pytest.raises(ValueError, match="samples per frame"):
        Encoder(EncoderSettings(audio_rate=44100), 256, 256, 24)
    enc.flush()
    from flashtalk_live.media.encoder import EncoderError

    with pytest.raises(EncoderError, match="after flush"):
        enc.encode(img, audio)
    enc.close()


def test_nvml_answers_skip_nvenc_only_when_no_gpu_has_an_encoder() -> None:
    from flashtalk_live.media.nvenc_probe import NVML_ERROR_NOT_SUPPORTED, NVML_SUCCESS, GpuAnswer, no_encoder_reason

    # What an H100 answered (6b4d463): success, capacity 100, yet FFmpeg cannot open NVENC there. Its name decides.
    h100 = GpuAnswer("NVIDIA H100 80GB HBM3", NVML_SUCCESS, 100)
    assert "NVIDIA H100 80GB HBM3" in (no_encoder_reason([h100, h100]) or "")
    for name in ("NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA A30", "NVIDIA H20", "NVIDIA GH200 480GB"):
        assert no_encoder_reason([GpuAnswer(name, NVML_SUCCESS, 100)]) is not None, name
    unknown_without = GpuAnswer("NVIDIA Future X", NVML_ERROR_NOT_SUPPORTED, 0)  # the documented answer
    assert no_encoder_reason([unknown_without]) is not None
    # A GPU with an encoder (a whole word, not a prefix: the RTX A3000 has one), beside them or alone; a busy
    # encoder (capacity 0); no GPU listed or no NVML: FFmpeg tries as before.
    for other in ("NVIDIA L40S", "NVIDIA RTX A3000 Laptop GPU", "NVIDIA GeForce RTX 4090"):
        assert no_encoder_reason([h100, GpuAnswer(other, NVML_SUCCESS, 100)]) is None, other
    assert no_encoder_reason([GpuAnswer("NVIDIA L4", NVML_SUCCESS, 0)]) is None
    assert no_encoder_reason([]) is None
    assert no_encoder_reason(None) is None
