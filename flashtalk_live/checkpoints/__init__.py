"""Loading, verifying and downloading the released checkpoints; parity checks against golden fixtures."""
