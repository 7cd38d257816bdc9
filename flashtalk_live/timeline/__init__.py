"""The audio-clocked timeline: queue clips, the programme and idle silence cut into render chunks."""
