"""ingest/audio.StreamDecoder: a streamed clip's pieces, cut at any byte, decode to what the whole payload decodes to."""

from __future__ import annotations

import numpy as np
import pytest

from flashtalk_live.audio import AudioError, StreamDecoder, decode_audio

from support.audiogen import encode


def feed_all(dec: StreamDecoder, data: bytes, step: int) -> tuple[np.ndarray, np.ndarray]:
    bc, md = [], []
    for i in range(0, len(data), step):
        b, m = dec.feed(data[i:i + step])
        bc.append(b)
        md.append(m)
    b, m = dec.flush()
    return np.concatenate(bc + [b]), np.concatenate(md + [m])


@pytest.mark.parametrize("rate,channels", [(22050, 1), (48000, 2), (16000, 1)])
def test_raw_pcm_in_odd_pieces_is_the_whole_payload(rate, channels):
    t = np.arange(rate * 2) / rate
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * channels, axis=1)
    data = (x * 32767).astype("<i2").tobytes()
    bc, md = feed_all(StreamDecoder("pcm_s16le", rate, channels), data, 1237)  # pieces end mid-sample
    whole = decode_audio(data, format="pcm_s16le", sample_rate=rate, channels=channels)
    assert bc.shape == whole.broadcast.shape and np.array_equal(bc, whole.broadcast)
    assert abs(md.shape[0] - whole.model.shape[0]) <= 1
    n = min(md.shape[0], whole.model.shape[0])
    assert np.abs(md[:n] - whole.model[:n]).max() < 1e-6


def test_mp3_frames_split_anywhere_with_an_id3_tag_decode():
    data = encode("mp3", seconds=2.0, freq=440.0)
    assert data[:3] == b"ID3"
    bc, _ = feed_all(StreamDecoder("mp3", None, None), data, 777)
    whole = decode_audio(data)
    # the container path trims the encoder's priming samples; a stream of frames cannot know them (< 2 frames)
    assert 0 <= bc.shape[0] - whole.broadcast.shape[0] <= 2 * 1152 * 48000 // 44100 + 1200
    spectrum = np.abs(np.fft.rfft(bc[48000:96000, 0]))
    assert abs(np.argmax(spectrum) * 48000 / 48000 - 440) < 3


@pytest.mark.parametrize("seconds", [0.5, 3.37])
@pytest.mark.parametrize("step", [1, 777, 1 << 16])
def test_ogg_opus_pages_split_anywhere_decode_to_exactly_what_the_container_path_gives(seconds, step):
    """The decoder drops Opus's pre-skip and the last page's granule position cuts the codec's padding, as FFmpeg's
    Ogg demuxer does: sample for sample the same audio (an offset or a tail would show here)."""
    data = encode("opus", seconds=seconds, freq=440.0)
    assert data[:4] == b"OggS"
    bc, md = feed_all(StreamDecoder("ogg", None, None), data, step)
    whole = decode_audio(data)
    assert bc.shape == whole.broadcast.shape and np.array_equal(bc, whole.broadcast)
    assert abs(md.shape[0] - whole.model.shape[0]) <= 1


def test_ogg_that_is_not_opus_or_is_damaged_is_refused():
    data = bytearray(encode("opus", seconds=0.5))
    with pytest.raises(AudioError, match="checksum"):
        damaged = data.copy()
        damaged[200] ^= 0xFF  # inside the first audio page
        feed_all(StreamDecoder("opus", None, None), bytes(damaged), 4096)
    with pytest.raises(AudioError, match="no Ogg page"):
        StreamDecoder("ogg", None, None).feed(b"RIFF" + bytes(40))
    with pytest.raises(AudioError, match="not Opus"):
        StreamDecoder("ogg", None, None).feed(_ogg_page(b"\x01vorbis" + bytes(22)))


def _ogg_page(packet: bytes) -> bytes:
    """One Ogg page holding one packet (< 255 bytes), its checksum right."""
    from flashtalk_live.audio import _ogg_crc

    head = b"OggS" + bytes([0, 2]) + (0).to_bytes(8, "little") + (7).to_bytes(4, "little") + bytes(4)
    page = head + bytes(4) + bytes([1, len(packet)]) + packet
    return page[:22] + _ogg_crc(page).to_bytes(4, "little") + page[26:]


def test_formats_it_cannot_stream_are_refused():
    with pytest.raises(AudioError, match="pcm_s16le, mp3"):
        StreamDecoder("wav", None, None)
    with pytest.raises(AudioError, match="sample_rate"):
        StreamDecoder("pcm_s16le", None, 1)
