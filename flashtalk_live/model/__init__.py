"""The FlashTalk-14B model family in pure PyTorch (no I/O): DiT, VAE, CLIP visual, umT5, audio features, colour."""
