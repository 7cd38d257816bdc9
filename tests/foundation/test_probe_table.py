"""The probe table (flashtalk_live/probes.py): each probe's verdict on the room's vitals, and both HTTP servers
(the console's app and the bare metrics server, console off) answering the probe paths with one line of JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from flashtalk_live.metrics import serve_metrics
from flashtalk_live.probes import PROBES, RoomProbes, Vitals, live, ready, started
from flashtalk_live.settings import ProbeSettings

P = ProbeSettings(live_stall_s=30, ready_fallback_s=600)


def vitals(**kw) -> Vitals:
    base = dict(state="on_air", uptime_s=100.0, since_last_frame_s=0.04, renderer="flashtalk", fallback_s=None)
    return Vitals(**{**base, **kw})


def test_the_table_names_three_kubelet_probes():
    assert sorted(PROBES) == ["/livez", "/readyz", "/startupz"]
    assert {p.kubelet for p in PROBES.values()} == {"livenessProbe", "readinessProbe", "startupProbe"}


@pytest.mark.parametrize("v, ok", [
    (vitals(), True),
    (vitals(state="starting", since_last_frame_s=None, uptime_s=900), True),  # model load: never a restart
    (vitals(since_last_frame_s=29.9), True),
    (vitals(since_last_frame_s=30.5), False),
    (vitals(state="stopping", since_last_frame_s=300), True),  # draining: the kubelet is stopping it anyway
])
def test_live(v, ok):
    assert live(v, P)[0] is ok


@pytest.mark.parametrize("v, ok, words", [
    (vitals(), True, "on air with the flashtalk renderer"),
    (vitals(state="starting", since_last_frame_s=None), False, "not on air yet"),
    (vitals(fallback_s=599), False, "waiting for the flashtalk renderer"),
    (vitals(fallback_s=600), True, "on the still fallback for 600 s"),
    (vitals(since_last_frame_s=31), False, "stalled"),
    (vitals(state="stopping"), False, "stopping"),
])
def test_ready(v, ok, words):
    got, reason = ready(v, P)
    assert got is ok and words in reason


def test_started():
    assert started(vitals(state="starting", since_last_frame_s=None), P)[0] is False
    assert started(vitals(), P)[0] is True
    assert started(vitals(state="stopping"), P)[0] is True


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_bare_metrics_server_answers_the_probes():
    state = {"v": vitals(since_last_frame_s=None, state="starting")}
    probes = RoomProbes(P, lambda: state["v"])
    server, _ = serve_metrics("127.0.0.1", 0, lambda: {"state": "starting"}, probes=probes)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        code, body = _get(base + "/readyz")
        assert code == 503 and body.endswith(b"\n") and body.count(b"\n") == 1
        assert json.loads(body) == {"probe": "readyz", "ok": False, "reason": "starting for 100 s: not on air yet"}
        state["v"] = vitals(since_last_frame_s=45.0)
        code, body = _get(base + "/livez")
        assert code == 503 and "no frame for 45.0 s" in json.loads(body)["reason"]
        assert _get(base + "/metrics")[0] == 200 and b"flashtalk_state" in _get(base + "/metrics")[1]
    finally:
        server.shutdown()
        server.server_close()
