"""Quantisation of loaded models (kept apart from the pure model code in flashtalk_live.model)."""
