"""Ingest: the ZeroMQ wire protocol, audio decoding and the request server."""
