"""The streaming FlashTalk engine: avatar session, chunk generation, recalibration; the production renderer."""
