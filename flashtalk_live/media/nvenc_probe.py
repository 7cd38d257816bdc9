"""Whether the box has a GPU with an H.264 hardware encoder, asked of NVML before FFmpeg tries NVENC.

The data-centre GPUs these rooms run on (A100, H100, H200) have no NVENC. FFmpeg finds that out only after it has
created a CUDA context, which took 0.54-0.66 s of the still renderer's first frame on an H100. NVML answers from
the driver in milliseconds without a context: `nvmlDeviceGetEncoderCapacity` is documented to return NOT_SUPPORTED
on a GPU without an encoder (not yet seen on one of those GPUs here). Only NOT_SUPPORTED from every GPU skips the
attempt; no NVML, no GPU listed or any other answer leaves it to FFmpeg, as before. NVML is called through ctypes
(the driver ships it; no Python binding needed).
"""

from __future__ import annotations

import ctypes
from typing import Sequence

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ENCODER_QUERY_H264 = 0

# Per GPU: (NVML return code, capacity) of nvmlDeviceGetEncoderCapacity(H.264).
EncoderAnswers = Sequence[tuple[int, int]]


def no_encoder_reason(answers: EncoderAnswers | None) -> str | None:
    """Why NVENC cannot open when NVML's answers say so for every GPU; None where it may (or NVML did not say)."""
    if not answers:
        return None
    if all(code == NVML_ERROR_NOT_SUPPORTED for code, _ in answers):
        return f"no GPU on this box has an H.264 encoder (NVML: {len(answers)} GPU(s), encoder not supported)"
    return None


def nvml_encoder_answers() -> list[tuple[int, int]] | None:
    """Ask NVML each GPU's H.264 encoder capacity; None where NVML is missing or does not start."""
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
            if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(handle)) != NVML_SUCCESS:
                return None
            code = nvml.nvmlDeviceGetEncoderCapacity(handle, ctypes.c_int(NVML_ENCODER_QUERY_H264),
                                                     ctypes.byref(capacity))
            answers.append((int(code), int(capacity.value)))
        return answers
    finally:
        nvml.nvmlShutdown()


def nvenc_missing() -> str | None:
    """The reason NVENC cannot open on this box, or None where FFmpeg should try."""
    return no_encoder_reason(nvml_encoder_answers())
