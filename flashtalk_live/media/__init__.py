"""Pacing and the one H.264/AAC encoder."""
