"""Renderers turn a chunk of audio into frames: the still renderer and (engine/) FlashTalk."""
