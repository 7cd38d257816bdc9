"""flashtalk-live: a 24/7 talking-avatar live-stream daemon (ZeroMQ audio in, RTMP H.264/AAC out)."""

__version__ = "0.1.0"
