"""Whether the box has a GPU with an H.264 hardware encoder, asked of NVML before FFmpeg tries NVENC.

The data-centre GPUs these rooms run on (A100, H100, H200) have no NVENC. FFmpeg finds that out only after it has
created a CUDA context: 0.52 s of the still renderer's first frame on an H100 (6b4d463). NVML answers from the
driver in milliseconds without a context, but not through the encoder query: on that H100
`nvmlDeviceGetEncoderCapacity(H264)` returned success and a capacity of 100. So the GPU's name decides: the chips in
`NO_NVENC` have no encoder in NVIDIA's video encode/decode support matrix. A GPU whose encoder query answers
NOT_SUPPORTED counts as one too. Only when every GPU on the box is one of those is the attempt skipped; no NVML, no
GPU listed, or any other GPU leaves it to FFmpeg, as before. NVML is called through ctypes (the driver ships it; no
Python binding needed).
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from typing import Sequence

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ENCODER_QUERY_H264 = 0

# GPUs without NVENC (GA100 and GH100 chips), matched as whole words of NVML's name ("NVIDIA H100 80GB HBM3").
NO_NVENC = re.compile(r"\b(A100|A800|A30|H100|H800|H200|H20|GH200)\b")


@dataclass(frozen=True)
class GpuAnswer:
    """What NVML said of one GPU: its name and its H.264 encoder query (return code, capacity)."""

    name: str
    code: int
    capacity: int

    def lacks_encoder(self) -> bool:
        return bool(NO_NVENC.search(self.name)) or self.code == NVML_ERROR_NOT_SUPPORTED


def no_encoder_reason(answers: Sequence[GpuAnswer] | None) -> str | None:
    """Why NVENC cannot open when every GPU lacks an encoder; None where it may (or NVML did not say)."""
    if not answers or not all(a.lacks_encoder() for a in answers):
        return None
    names = sorted({a.name for a in answers})
    return f"no GPU on this box has an H.264 encoder (NVML: {len(answers)} GPU(s): {', '.join(names)})"


def nvml_answers() -> list[GpuAnswer] | None:
    """Ask NVML each GPU's name and H.264 encoder capacity; None where NVML is missing or does not start."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != NVML_SUCCESS:
        return None
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != NVML_SUCCESS:
            return None
        answers = []
        for i in range(count.value):
            handle, capacity = ctypes.c_void_p(), ctypes.c_uint()
            name = ctypes.create_string_buffer(96)
            if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(handle)) != NVML_SUCCESS \
                    or nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(len(name))) != NVML_SUCCESS:
                return None
            code = nvml.nvmlDeviceGetEncoderCapacity(handle, ctypes.c_int(NVML_ENCODER_QUERY_H264),
                                                     ctypes.byref(capacity))
            answers.append(GpuAnswer(name.value.decode(errors="replace"), int(code), int(capacity.value)))
        return answers
    finally:
        nvml.nvmlShutdown()


def nvenc_missing() -> str | None:
    """The reason NVENC cannot open on this box, or None where FFmpeg should try."""
    return no_encoder_reason(nvml_answers())
