"""Sequence-parallel FlashTalk on several GPUs of one host (Ulysses all-to-all over torch.distributed)."""
