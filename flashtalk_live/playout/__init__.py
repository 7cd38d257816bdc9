"""Playout: what goes on air and when. The audio-clocked timeline (queue clips, the programme, idle silence) cut
into render chunks, admission and re-planning of clips against the measured render rate, the render-ahead buffer,
the idle bank, the frame store and the pacer that hands frames to the encoder in real time."""
