"""The durable queue (spool) of acknowledged clips."""
