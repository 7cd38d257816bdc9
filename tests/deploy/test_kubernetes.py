"""Issue 20: the Kubernetes manifests (deploy/kubernetes/) render, validate and keep the room's invariants.

* `kubectl kustomize` renders the fleet (the shared objects and three rooms);
* every core object validates against the Kubernetes schemas of a current release (kubernetes-validate, strict);
  the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) have no core schema, so their structure is checked
  here: what they select and scrape exists, every rule is well formed;
* each room's StatefulSet against its own room.toml, read back from the rendered ConfigMap and loaded by the
  daemon's settings: replicas 1, OnDelete, GPUs = model.gpus, probes at the paths of flashtalk_live.probes on the
  port of metrics.port, the control port of ingest.control with CURVE, secrets only from Secrets, a PDB with
  maxUnavailable 0 selecting the pod;
* the Grafana dashboard is well-formed dashboard JSON, and every metric its PromQL and the alert rules name appears
  in a live /metrics scrape of a real daemon started on the embedded default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flashtalk_live.client import Client, ClientError
from flashtalk_live.probes import PROBES
from flashtalk_live.secrets import mask_text
from flashtalk_live.config import load_settings

from support.paths import child_env

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
DASHBOARD = KUBE / "fleet" / "flashtalk-fleet.json"
ROOMS = ("room-a", "room-b", "room-c")
# Prometheus' own series a rule may name besides the daemon's (a room that is down exports nothing).
PROMETHEUS_SERIES = {"up"}


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI")
        pytest.skip(f"{tool} is not installed")


def kustomize(path: Path) -> list[dict[str, Any]]:
    _need("kubectl")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, Any]]:
    return kustomize(KUBE)


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_the_fleet_renders_with_three_rooms(fleet):
    kinds = sorted(o["kind"] for o in fleet)
    assert kinds.count("StatefulSet") == 3 and kinds.count("PodDisruptionBudget") == 3
    assert {o["metadata"]["name"] for o in of_kind(fleet, "StatefulSet")} == set(ROOMS)
    assert all(o["metadata"].get("namespace") == "flashtalk-live" for o in fleet if o["kind"] != "Namespace")
    names = [(o["kind"], o["metadata"]["name"]) for o in fleet]
    assert len(names) == len(set(names))


def test_core_objects_validate_against_kubernetes(fleet):
    kv = pytest.importorskip("kubernetes_validate")  # in the `test` extra
    version = kv.latest_version()
    checked = 0
    for o in fleet:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: structure checked below
        try:
            kv.validate(o, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']} against Kubernetes {version}: {e}")
        checked += 1
    assert checked == len(fleet) - 2


def room_objects(fleet: list[dict[str, Any]], room: str) -> dict[str, Any]:
    sts = next(o for o in of_kind(fleet, "StatefulSet") if o["metadata"]["name"] == room)
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    cm = next(o for o in of_kind(fleet, "ConfigMap") if o["metadata"]["name"] == vols["config"]["configMap"]["name"])
    return {"sts": sts, "pod_labels": pod_labels, "volumes": vols, "configmap": cm,
            "services": [s for s in of_kind(fleet, "Service") if selects(s["spec"]["selector"], pod_labels)],
            "pdbs": [p for p in of_kind(fleet, "PodDisruptionBudget")
                     if selects(p["spec"]["selector"]["matchLabels"], pod_labels)]}


@pytest.fixture(scope="module", params=ROOMS)
def room(request, fleet, tmp_path_factory) -> dict[str, Any]:
    r = room_objects(fleet, request.param)
    # The room's config as the daemon will read it (the environment left out: the pod's comes from its Secret).
    path = tmp_path_factory.mktemp(request.param) / "room.toml"
    path.write_text(r["configmap"]["data"]["room.toml"])
    r["settings"] = load_settings(path, environ={})
    r["name"] = request.param
    return r


def container(r: dict[str, Any]) -> dict[str, Any]:
    (c,) = r["sts"]["spec"]["template"]["spec"]["containers"]
    return c


def mounts(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container(r)["volumeMounts"]}


def test_one_daemon_per_room_never_restarted_by_a_rollout(room):
    spec = room["sts"]["spec"]
    assert spec["replicas"] == 1 and spec["updateStrategy"] == {"type": "OnDelete"}
    assert room["pod_labels"]["room"] == room["name"]
    assert spec["selector"]["matchLabels"]["room"] == room["name"]  # a room's Service/PDB never select another
    pdb, = room["pdbs"]
    assert pdb["spec"]["maxUnavailable"] == 0
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


def test_gpus_match_the_room_config(room):
    s, c = room["settings"], container(room)
    gpus = s.model.gpus if isinstance(s.model.gpus, int) else len(s.model.gpus)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert "nvidia.com/gpu" not in c["resources"].get("requests", {})  # requested by its limit
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    podspec = room["sts"]["spec"]["template"]["spec"]
    terms = podspec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert any(e["key"] == "nvidia.com/gpu.product" for t in terms for e in t["matchExpressions"])
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in podspec["tolerations"])
    shm = room["volumes"]["dshm"]["emptyDir"]
    assert shm["medium"] == "Memory" and mounts(room)["/dev/shm"]["name"] == "dshm"
    if gpus > 1:  # NCCL between the ranks
        assert shm["sizeLimit"].endswith("Gi") and int(shm["sizeLimit"][:-2]) >= 8


def test_probes_point_at_the_daemons_paths_and_port(room):
    c, s = container(room), room["settings"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == s.metrics.port and s.metrics.enabled
    assert s.metrics.host not in ("127.0.0.1", "::1", "localhost")  # the kubelet comes from the node
    by_kubelet = {p.kubelet: p.path for p in PROBES.values()}
    for kind, path in by_kubelet.items():
        get = c[kind]["httpGet"]
        assert get["path"] == path, kind
        assert ports.get(get["port"], get["port"]) == s.metrics.port, kind
    # a slow model load is the startup probe's: it must allow several minutes before the liveness probe starts
    st = c["startupProbe"]
    assert st["periodSeconds"] * st["failureThreshold"] >= 600
    lv = c["livenessProbe"]
    assert lv["failureThreshold"] * lv["periodSeconds"] >= s.probes.live_stall_s


def test_control_is_curve_on_the_service_port(room):
    c, s = container(room), room["settings"]
    tcp = [e for e in s.ingest.control if e.startswith("tcp://")]
    assert len(tcp) == 1 and s.ingest.tcp_auth == "curve"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert int(tcp[0].rsplit(":", 1)[1]) == ports["control"]
    svc, = room["services"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert {p["name"] for p in svc["spec"]["ports"]} == {"control", "events", "http"}
    assert room["sts"]["spec"]["serviceName"] == svc["metadata"]["name"]


def test_files_and_volumes_are_where_the_config_says(room):
    c, s, m, v = container(room), room["settings"], mounts(room), room["volumes"]
    # the image's ENTRYPOINT (tini -- flashtalk-live) runs it: tini stays PID 1 and forwards SIGTERM
    assert "command" not in c and c["args"] == ["run", "-c", "/etc/flashtalk-live/room.toml"]
    room_env = next(e for e in c["env"] if e["name"] == "FLASHTALK_LIVE_ROOM")
    assert room_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert m["/etc/flashtalk-live/room.toml"]["subPath"] == "room.toml"
    state, = room["sts"]["spec"]["volumeClaimTemplates"]
    assert m[s.state_dir]["name"] == state["metadata"]["name"]
    weights = next(mt for mt in m.values() if mt["name"] == "weights")
    assert weights["readOnly"] and v["weights"]["persistentVolumeClaim"]["readOnly"]
    assert s.model.weights_dir.startswith(weights["mountPath"] + "/")

    def secret_file(path: str) -> tuple[str, str]:
        """(Secret name, key) of the file at `path` in the container."""
        mt = m[os.path.dirname(path)]
        sec = v[mt["name"]]["secret"]
        key = next(i["key"] for i in sec["items"] if i["path"] == os.path.basename(path))
        return sec["secretName"], key

    secret = f"{room['name']}-secrets"
    assert secret_file(s.ingest.server_key) == (secret, "server.key_secret")
    assert secret_file(s.console.token_file)[0] == secret
    assert v[m[s.ingest.client_keys_dir]["name"]]["secret"]["secretName"] == secret
    env = {e["name"]: e for e in c["env"]}
    assert env["FLASHTALK_LIVE_OUTPUTS"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "outputs"}


def test_no_secret_in_a_configmap(fleet):
    for cm in of_kind(fleet, "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            assert mask_text(text) == text, f"{cm['metadata']['name']}/{key} holds a URL with a secret"
            assert not re.search(r"(?m)^\s*(token|secret-key|stream_key)\s*=", text), cm["metadata"]["name"]
            assert "[[outputs]]" not in text  # stream keys: FLASHTALK_LIVE_OUTPUTS from the Secret


def test_the_monitoring_crds_are_well_formed(fleet):
    sm, = of_kind(fleet, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    svcs = [s for s in of_kind(fleet, "Service") if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert len(svcs) == len(ROOMS)
    for s in svcs:
        assert s["metadata"]["labels"][sm["spec"]["jobLabel"]] == "flashtalk-live"
        assert s["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["path"] == "/metrics" and all(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in svcs)
    assert sm["spec"]["podTargetLabels"] == ["room"]
    rule, = of_kind(fleet, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"FlashtalkRoomOffAir", "FlashtalkUnderrunsRising", "FlashtalkEndpointDown",
                           "FlashtalkDiskDegraded", "FlashtalkRendererOnFallback"}
    for name, r in alerts.items():
        assert re.fullmatch(r"\d+[smh]", r["for"]) and r["labels"]["severity"] in ("warning", "critical"), name
        assert r["expr"].strip() and r["annotations"]["summary"], name
    assert of_kind(fleet, "NetworkPolicy")[0]["spec"]["podSelector"]["matchLabels"] == {
        k: v for k, v in svcs[0]["metadata"]["labels"].items() if k.startswith("app.kubernetes.io/")}
    dash = next(cm for cm in of_kind(fleet, "ConfigMap") if "flashtalk-fleet.json" in cm.get("data", {}))
    assert json.loads(dash["data"]["flashtalk-fleet.json"]) == json.loads(DASHBOARD.read_text())


# -- the dashboard and the rules against a live scrape ------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers that are not functions, keywords, label names,
    Grafana variables, durations or strings."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    e = re.sub(r"\$\w+", "", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word, rest = m.group(), e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_names_are_parsed_from_promql():
    assert metric_names('sum by (room, where) (rate(flashtalk_underrun_frames_total{room=~"$room"}[$__rate_interval]))') \
        == {"flashtalk_underrun_frames_total"}
    assert metric_names('max by (room) (flashtalk_state{state="on_air"}) < 1 or up{job="x"} == 0') == {"flashtalk_state", "up"}
    assert metric_names("count(flashtalk_endpoint_up == 0) or vector(0)") == {"flashtalk_endpoint_up"}


def dashboard_exprs(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_grafana_dashboard_json():
    d = json.loads(DASHBOARD.read_text())
    assert isinstance(d["title"], str) and re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"])
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert isinstance(d["templating"]["list"], list) and {"datasource", "room"} <= {v["name"] for v in d["templating"]["list"]}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    for p in d["panels"]:
        assert p["type"] in {"stat", "timeseries", "state-timeline", "gauge", "table", "bargauge"}, p["title"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy") and g["x"] + g["w"] <= 24, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"]), p["title"]
    # panels do not overlap
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for topic in ("on air", "underrun", "chunk time", "push -> air", "endpoint", "disk", "spool", "gpu memory"):
        assert topic in titles


def scraped_names(text: str) -> set[str]:
    """Every sample name of a Prometheus text page, plus the names of families declared without samples (a gauge
    with no sample yet, like GPU memory without CUDA)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for fam in text_string_to_metric_families(text):
        names |= {s.name for s in fam.samples}
        if not fam.samples and fam.type in ("gauge", "untyped"):
            names.add(fam.name)
    return names


@pytest.fixture(scope="module")
def live_scrape(tmp_path_factory) -> str:
    """/metrics of a real daemon on the embedded default: `flashtalk-live run` with no config file."""
    xdg = tmp_path_factory.mktemp("xdg")
    env = child_env(XDG_STATE_HOME=str(xdg))
    log = open(xdg / "daemon.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "flashtalk_live", "run", "--set", "metrics.port=0"],
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sock = f"ipc://{xdg}/flashtalk-live/control.sock"
        deadline = time.monotonic() + 60
        with Client(sock, timeout_s=1.0) as c:
            while True:
                assert p.poll() is None, (xdg / "daemon.log").read_text()[-3000:]
                try:
                    st = c.status()
                    if st["state"] == "on_air" and st.get("metrics_port"):
                        break
                except ClientError:
                    pass
                assert time.monotonic() < deadline, "the daemon did not go on air"
                time.sleep(0.2)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{st['metrics_port']}/metrics", timeout=10) as r:
            return r.read().decode()
    finally:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_every_metric_in_the_dashboard_and_rules_is_exported(fleet, live_scrape):
    exported = scraped_names(live_scrape)
    rule, = of_kind(fleet, "PrometheusRule")
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text())) + [
        r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    named = set().union(*(metric_names(e) for e in exprs))
    assert len(named) >= 15
    missing = named - exported - PROMETHEUS_SERIES
    assert not missing, f"named in PromQL but not in a live /metrics scrape: {sorted(missing)}"
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            assert metric_names(re.sub(r"label_values\((\w+),.*\)", r"\1", var["definition"])) <= exported


def test_the_fleet_doc_names_every_probe_alert_and_fleet_metric(fleet):
    doc = (ROOT / "docs" / "fleet.md").read_text()
    for p in PROBES.values():
        assert f"`{p.path}`" in doc and p.kubelet in doc, p.path
    rule, = of_kind(fleet, "PrometheusRule")
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        assert f"`{r['alert']}`" in doc, r["alert"]
    for metric in ("flashtalk_push_to_air_seconds", "flashtalk_renderer_on_fallback",
                   "flashtalk_gpu_memory_allocated_bytes"):
        assert metric in doc
    assert "docs/fleet.md" in (ROOT / "README.md").read_text()
