"""The Helm chart, checked with Helm's own engine (helm-python-sdk), kubernetes-validate,
the CRD-generated schemas of prometheus-operator and Gateway API, and promtool."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from canvas_sync.devtools.dynamodb_local import cache_dir

from tests.helpers import (
    ROOT,
    Replica,
    http_text,
    missing,
)

CHART = ROOT / "helm" / "canvas-sync"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
RELEASE = "demo"
FULLNAME = "demo-canvas-sync"


def values_of(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


AUTH = {"auth": {"jwksUrl": "https://login.example.com/.well-known/jwks.json"}}
"""What every render needs unless a test says otherwise: the chart refuses to run open by default."""


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every rendered object (hooks and tests included)."""
    values = {**AUTH, **(values or {})}
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace="canvas", is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(values: dict[str, Any]) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render({**AUTH, **values}, name=RELEASE, namespace="canvas")["canvas-sync/templates/NOTES.txt"]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def app_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in by_kind(objects, "Deployment") if o["metadata"]["name"] == FULLNAME)


@pytest.fixture(params=CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def values(request: pytest.FixtureRequest) -> dict[str, Any]:
    return values_of(request.param)


def test_lint_strict_has_no_warnings(values: dict[str, Any]) -> None:
    for kube_version in ("v1.30.0", "v1.33.0"):
        report = helm.lint(str(CHART), values, strict=True, kube_version=kube_version)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_values_match_the_schema_and_typos_are_refused(values: dict[str, Any]) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        with pytest.raises(helm.HelmError):
            chart.validate_schema({**values, "replicaCont": 3})
        with pytest.raises(helm.HelmError):
            chart.validate_schema({"dynamodbLocal": {"mode": "sidecars"}})


@pytest.mark.parametrize("kube", ["1.30", "1.33"])
def test_every_builtin_object_validates_strictly(values: dict[str, Any], kube: str) -> None:
    objects = render(values)
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, kube, strict=True)


@pytest.fixture(scope="session")
def crd_validator() -> Path:
    """The validator script with its npm models, installed once into the cache."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        missing("node and npm are needed to validate custom resources against their CRD schemas")
    source = ROOT / "tests" / "system" / "crd"
    target = cache_dir() / "crd-check"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "validate.mjs"):
        shutil.copy(source / name, target / name)
    if not (target / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        result = subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            missing(f"npm install of the CRD models failed: {result.stderr[-500:]}")
    return target / "validate.mjs"


def test_custom_resources_validate_against_their_crd_schemas(crd_validator: Path) -> None:
    objects = [o for p in CI_VALUES for o in render(values_of(p)) if o["kind"] in CUSTOM_KINDS]
    assert {o["kind"] for o in objects} == CUSTOM_KINDS
    result = subprocess.run(
        ["node", str(crd_validator)], input=json.dumps(objects), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    broken = dict(monitor, spec={"selector": {}, "endpoints": [{"port": 8080, "interval": "soon"}]})  # it can fail
    result = subprocess.run(
        ["node", str(crd_validator)], input=json.dumps([broken]), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1


def test_pod_security_resources_probes_and_lifecycle(values: dict[str, Any]) -> None:
    objects = render(values)
    deployment = app_deployment(objects)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    app = next(c for c in pod["containers"] if c["name"] == "canvas-sync")
    sc = app["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"mountPath": "/tmp", "name": "tmp"} in app["volumeMounts"]
    assert app["resources"]["requests"]["cpu"] and app["resources"]["limits"]["memory"]
    assert app["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pause = int(app["lifecycle"]["preStop"]["exec"]["command"][1])
    config = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == FULLNAME)["data"]
    assert pod["terminationGracePeriodSeconds"] > pause + float(config["CANVAS_SHUTDOWN_TIMEOUT"])
    for container in pod["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]
    ports = {p["containerPort"] for c in pod["containers"] for p in c["ports"]}
    assert len(ports) == sum(len(c["ports"]) for c in pod["containers"])  # the app never shares DynamoDB Local's port


def test_no_replicas_field_when_the_hpa_is_on() -> None:
    objects = render({"autoscaling": {"enabled": True}})
    assert "replicas" not in app_deployment(objects)["spec"]
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert app_deployment(render({"replicaCount": 4}))["spec"]["replicas"] == 4


def test_connections_per_pod_metric_in_the_hpa() -> None:
    (hpa,) = by_kind(render(values_of(CHART / "ci" / "aws-values.yaml")), "HorizontalPodAutoscaler")
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods[0]["pods"]["metric"]["name"] == "canvas_websocket_connections"


def test_config_changes_roll_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        return app_deployment(render(values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"autosave": {"interval": 2}})


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2, "dynamodbLocal": {"enabled": True, "mode": "sidecar"}},
        {"replicaCount": 1, "autoscaling": {"enabled": True}, "dynamodbLocal": {"enabled": True, "mode": "sidecar"}},
    ],
)
def test_sidecar_mode_is_refused_with_several_replicas(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError) as info:
        render(values)
    assert "sidecar" in str(info.value) and "exactly one replica" in str(info.value)


def test_dynamodb_local_modes_point_the_app_at_it() -> None:
    def endpoint(values: dict[str, Any]) -> str | None:
        objects = render(values)
        return next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == FULLNAME)["data"].get(
            "CANVAS_DYNAMODB_ENDPOINT"
        )

    assert endpoint(values_of(CHART / "ci" / "sidecar-values.yaml")) == "http://127.0.0.1:8000"
    assert endpoint(values_of(CHART / "ci" / "shared-values.yaml")) == f"http://{FULLNAME}-dynamodb-local:8000"
    assert endpoint({}) is None
    shared = render(values_of(CHART / "ci" / "shared-values.yaml"))
    service = next(o for o in by_kind(shared, "Service") if o["metadata"]["name"] == FULLNAME)
    dynamo_pod = next(o for o in by_kind(shared, "Deployment") if o["metadata"]["name"] != FULLNAME)
    pod_labels = dynamo_pod["spec"]["template"]["metadata"]["labels"]
    assert not all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items()), (
        "app Service selects DynamoDB Local"
    )


def test_create_table_hook_job_and_irsa() -> None:
    objects = render(values_of(CHART / "ci" / "aws-values.yaml"))
    (job,) = by_kind(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["create-table"]
    (sa,) = by_kind(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    text = yaml.safe_dump_all(objects)
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text


def test_monitoring_resources_only_behind_their_switches() -> None:
    plain = {o["kind"] for o in render({})}
    assert not plain & {
        "ServiceMonitor",
        "PrometheusRule",
        "Ingress",
        "HTTPRoute",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
    }
    full = render(values_of(CHART / "ci" / "shared-values.yaml"))
    (monitor,) = by_kind(full, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = next(o for o in by_kind(full, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["canvas-sync.json"])["panels"]


def test_ingress_websocket_timeouts_and_hashing() -> None:
    (ingress,) = by_kind(render(values_of(CHART / "ci" / "aws-values.yaml")), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$uri"


def test_notes_tell_how_to_reach_it_and_warn_about_risky_settings() -> None:
    assert "port-forward svc/demo-canvas-sync" in notes({})
    risky = notes({"replicaCount": 1, "dynamodbLocal": {"enabled": True, "mode": "sidecar"}})
    assert "development and tests only" in risky and "loses every canvas" in risky and "one replica" in risky
    assert "WARNING" not in notes(values_of(CHART / "ci" / "aws-values.yaml"))


def test_helm_test_pod_probes_the_service() -> None:
    (pod,) = [o for o in by_kind(render({}), "Pod") if o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["canvas-sync"] and container["args"] == [
        "probe",
        f"ws://{FULLNAME}:80/ws/helm-test",
    ]


# --- alerts and dashboard -----------------------------------------------------------------


def rules(**values: Any) -> dict[str, Any]:
    (rule,) = by_kind(render({"metrics": {"prometheusRule": {"enabled": True}}, **values}), "PrometheusRule")
    return rule["spec"]


# The rules' promtool checks and unit tests: tests/system/test_alert_rules.py; in a real
# Prometheus scraping real replicas: tests/system/test_prometheus.py.


# --- the live relay ----------------------------------------------------------------------------


def env_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (config,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == FULLNAME]
    container = app_deployment(objects)["spec"]["template"]["spec"]["containers"][0]
    return {**config["data"], **{e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}}


def egress_ports(objects: list[dict[str, Any]]) -> set[int]:
    (policy,) = by_kind(objects, "NetworkPolicy")
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def test_in_chart_valkey_for_the_relay() -> None:
    objects = render({"redis": {"enabled": True}, "networkPolicy": {"enabled": True}})
    env = env_of(objects)
    assert env["CANVAS_REDIS_URL"] == f"redis://{FULLNAME}-valkey:6379/0"
    assert env["CANVAS_RELAY_HEADS_INTERVAL"] == "15" and "CANVAS_REDIS_PASSWORD" not in env
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Deployment", f"{FULLNAME}-valkey"), ("Service", f"{FULLNAME}-valkey")} <= names
    assert 6379 in egress_ports(objects)
    assert "Live relay: the in-chart Valkey" in notes({"redis": {"enabled": True}})


def test_external_redis_with_its_password_from_an_existing_secret() -> None:
    url = "rediss://master.canvas.abc123.euw1.cache.amazonaws.com:6380/0"
    values = {"externalRedis": {"url": url, "existingSecret": "redis-auth"}, "networkPolicy": {"enabled": True}}
    objects = render(values)
    env = env_of(objects)
    assert env["CANVAS_REDIS_URL"] == url
    assert env["CANVAS_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "redis-password"}}
    assert not [o for o in objects if o["metadata"]["name"].endswith("-valkey")]
    assert 6380 in egress_ports(objects)
    assert all("CANVAS_REDIS" not in json.dumps(o) for o in by_kind(objects, "Secret"))  # no secret generated


def test_no_relay_is_said_and_two_relays_are_refused() -> None:
    assert "CANVAS_REDIS_URL" not in env_of(render({}))
    assert "no live relay" in notes({})
    with pytest.raises(helm.HelmError, match="choose one"):
        render({"redis": {"enabled": True}, "externalRedis": {"url": "redis://elsewhere:6379/0"}})
    with pytest.raises(helm.HelmError, match="existingSecret"):
        render({"externalRedis": {"existingSecret": "s"}})


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bcanvas_[a-z_]+\b", text))


@pytest.mark.dynamodb_local
def test_every_metric_in_panels_and_alerts_is_exported(replicas: Any) -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expected = metric_names("\n".join(exprs)) | metric_names(json.dumps(rules(redis={"enabled": True})))
    required_panels = {
        "canvas_websocket_connections",
        "canvas_edits_total",
        "canvas_autosave_batches_total",
        "canvas_autosave_batch_duration_seconds_bucket",
        "canvas_autosave_objects_written_total",
        "canvas_dirty_objects",
        "canvas_sync_lag_seconds_bucket",
        "canvas_ready",
    }
    assert required_panels <= metric_names("\n".join(exprs))
    replica: Replica = replicas("scraped")
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in http_text(f"{replica.url}/metrics").splitlines()
        if line and not line.startswith("#")
    }
    assert expected - exported == set(), f"named in panels or alerts but not exported: {expected - exported}"


# --- k8s/ manifests -------------------------------------------------------------------------


def test_k8s_manifests_do_not_drift_from_the_chart(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "k8s" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_overlays_build_with_kustomize_to_the_chart_render() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl (for kustomize) is not installed")
    spec = importlib.util.spec_from_file_location("k8s_generate", ROOT / "k8s" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)  # a script beside the manifests, not a package
    spec.loader.exec_module(generate)

    for overlay in ("dev", "aws", "loadtest"):
        result = subprocess.run(
            [kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
        chart_values = yaml.safe_load((ROOT / "k8s" / f"values-{overlay}.yaml").read_text())
        wanted = {(d["kind"], d["metadata"]["name"]): d for d in generate.render(chart_values)}
        assert built == wanted, overlay


def test_loadtest_job_finds_pods_through_endpoint_slices() -> None:
    objects = render(values_of(CHART / "ci" / "loadtest-values.yaml"))
    (job,) = [o for o in by_kind(objects, "Job") if o["metadata"]["name"].endswith("-loadtest")]
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert f"--discover-service={FULLNAME}" in args and "--discover-namespace=canvas" in args
    assert f"--host=http://{FULLNAME}:80" in args
    (role,) = by_kind(objects, "Role")
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list"]}
    ]
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"] == role["metadata"]["name"]
    (policy,) = by_kind(objects, "NetworkPolicy")
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert all(job["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in allowed.items())
    assert not by_kind(render({}), "Role")


# --- authentication ----------------------------------------------------------------------------


def test_the_chart_never_runs_open_by_default() -> None:
    with pytest.raises(helm.HelmError, match=r"auth\.enabled needs auth\.jwksUrl"):
        render({"auth": {}})
    with pytest.raises(helm.HelmError, match="choose one"):
        render({"auth": {"jwksUrl": "https://issuer.example/jwks.json", "existingSecret": "s"}})
    env = env_of(render({"auth": {"enabled": False}}))
    assert env["CANVAS_AUTH"] == "off" and "CANVAS_AUTH_JWKS_URL" not in env
    assert "authentication is OFF" in notes({"auth": {"enabled": False}})


def test_auth_from_a_jwks_or_an_existing_secret_and_tokens_for_the_test_pods() -> None:
    env = env_of(
        render(
            {
                "auth": {
                    "jwksUrl": "https://issuer.example/jwks.json",
                    "issuer": "https://issuer.example/",
                    "allowedOrigins": ["https://app.example"],
                    "algorithms": ["ES256"],
                }
            }
        )
    )
    assert (env["CANVAS_AUTH"], env["CANVAS_AUTH_JWKS_URL"], env["CANVAS_AUTH_ISSUER"]) == (
        "jwt",
        "https://issuer.example/jwks.json",
        "https://issuer.example/",
    )
    assert env["CANVAS_ALLOWED_ORIGINS"] == "https://app.example" and env["CANVAS_AUTH_ALGORITHMS"] == "ES256"
    objects = render({"auth": {"existingSecret": "hs", "testTokenSecret": "test-token"}, "loadtest": {"enabled": True}})
    assert env_of(objects)["CANVAS_AUTH_SECRET"] == {"secretKeyRef": {"name": "hs", "key": "auth-secret"}}
    assert not by_kind(objects, "Secret")  # no secret generated into a release
    (probe,) = [o for o in by_kind(objects, "Pod") if o["metadata"]["name"].endswith("test-websocket")]
    token = {"secretKeyRef": {"name": "test-token", "key": "token"}}
    assert probe["spec"]["containers"][0]["env"] == [{"name": "CANVAS_PROBE_TOKEN", "valueFrom": token}]
    (job,) = [o for o in by_kind(objects, "Job") if "loadtest" in o["metadata"]["name"]]
    assert {"name": "CANVAS_LOAD_TOKEN", "valueFrom": token} in job["spec"]["template"]["spec"]["containers"][0]["env"]
