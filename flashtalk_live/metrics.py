"""Prometheus text endpoint: a collector that turns the daemon's status dict into metrics at scrape time."""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from flashtalk_live.secrets import mask_obj

STATES = ("starting", "on_air", "stopping")
ENDPOINT_STATES = ("up", "connecting", "down")


class StatusCollector:
    """Reads `status_provider()` on every scrape, so metrics and the `status` reply can never disagree."""

    def __init__(self, status_provider: Callable[[], dict[str, Any]]) -> None:
        self._status = status_provider

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        s = mask_obj(self._status())  # label values (output and renderer names) never carry a key
        state = GaugeMetricFamily("flashtalk_state", "Daemon state (1 for the current one)", labels=["state"])
        for name in STATES:
            state.add_metric([name], 1.0 if s.get("state") == name else 0.0)
        yield state
        b = s.get("broadcast", {})
        q = s.get("queue", {})
        yield GaugeMetricFamily("flashtalk_queue_clips", "Clips waiting in the queue", value=q.get("clips", 0))
        yield GaugeMetricFamily("flashtalk_queue_seconds", "Audio waiting in the queue, seconds", value=q.get("queued_seconds", 0.0))
        yield GaugeMetricFamily("flashtalk_spool_bytes", "Bytes in the spool", value=q.get("spool_bytes", 0))
        yield GaugeMetricFamily("flashtalk_av_skew_seconds", "Encoded audio end minus video end", value=b.get("av_skew_s", 0.0))
        yield GaugeMetricFamily("flashtalk_render_rtf", "Render time / chunk duration (below 1 keeps up)", value=b.get("render_rtf", 0.0))
        yield GaugeMetricFamily("flashtalk_lookahead_frames", "Frames rendered ahead of the encoder", value=b.get("buffered_frames", 0))
        yield CounterMetricFamily("flashtalk_frames", "Frames broadcast", value=b.get("frames_out", 0))
        under = CounterMetricFamily("flashtalk_underrun_frames", "Frames repeated because the renderer was late, "
                                    "while a clip was on air (clip: speech stalled) or not (idle)", labels=["where"])
        for where in ("clip", "idle"):
            under.add_metric([where], float(b.get(f"underrun_frames_{where}", 0)))
        yield under
        yield CounterMetricFamily("flashtalk_underruns", "Underrun episodes", value=b.get("underrun_episodes", 0))
        yield GaugeMetricFamily("flashtalk_process_rss_bytes", "Resident memory of the daemon", value=s.get("rss_bytes", 0))
        r = s.get("renderer", {})
        rend = GaugeMetricFamily("flashtalk_renderer_active", "Active renderer (1 for the current one)", labels=["renderer"])
        if r.get("active"):
            rend.add_metric([r["active"]], 1.0)
        yield rend
        drift = r.get("drift") or {}
        for key in ("identity", "colour"):
            if key in drift:
                yield GaugeMetricFamily(f"flashtalk_drift_{key}", f"Avatar drift measure: {key}", value=drift[key])
        est = GaugeMetricFamily("flashtalk_endpoint_up", "Endpoint state (1 for the current one)", labels=["output", "state"])
        bps = GaugeMetricFamily("flashtalk_endpoint_bitrate_bps", "Bits per second sent", labels=["output"])
        rec = CounterMetricFamily("flashtalk_endpoint_reconnects", "Reconnects", labels=["output"])
        drop = CounterMetricFamily("flashtalk_endpoint_dropped_packets", "Packets dropped while down", labels=["output"])
        for o in s.get("outputs", []):
            for st in ENDPOINT_STATES:
                est.add_metric([o["name"], st], 1.0 if o.get("state") == st else 0.0)
            bps.add_metric([o["name"]], float(o.get("bitrate_bps", 0)))
            rec.add_metric([o["name"]], float(o.get("reconnects", 0)))
            drop.add_metric([o["name"]], float(o.get("dropped_packets", 0)))
        yield from (est, bps, rec, drop)


def metrics_registry(status_provider: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry holding only the status collector (the console mounts it with make_wsgi_app)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status_provider))
    return registry


def serve_metrics(host: str, port: int, status_provider: Callable[[], dict[str, Any]]):
    """Start the HTTP endpoint in a daemon thread; returns (server, thread). Port 0 picks a free port."""
    return start_http_server(port, addr=host, registry=metrics_registry(status_provider))
