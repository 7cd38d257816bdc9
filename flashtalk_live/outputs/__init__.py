"""Outputs: encoded packets fanned out to RTMP endpoints and local recordings that heal themselves."""
