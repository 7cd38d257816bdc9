"""Outputs: encoded packets fanned out to RTMP endpoints and local recordings that heal themselves."""

from flashtalk_live.outputs.manager import OutputManager, output_kind

__all__ = ["OutputManager", "output_kind"]
