"""The chart's alert rules under ``promtool test rules``: when each one fires and resolves,
from histories a real pod would export (a recent last save, not 0; edits after a quiet
spell; a 10-minute DynamoDB outage and its recovery), at a 15 s scrape and evaluation
interval. docs/metrics.md states these timings; tests/system/test_prometheus.py runs the
same rules in a real Prometheus against real replicas."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import missing
from tests.system.test_chart import FULLNAME, rules

STEP = 15
"""Seconds between samples and between evaluations."""
POD = {"namespace": "canvas", "service": FULLNAME, "pod": "p1"}
Values = Callable[[int], float | None]


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return path


def series(name: str, values: Values, minutes: int, step: int = STEP, **labels: str) -> dict[str, str]:
    """One input series sampled every ``step`` seconds; ``values(t)`` None leaves a gap."""
    selector = ", ".join(f'{k}="{v}"' for k, v in {**labels, **POD}.items())
    samples = (values(t) for t in range(0, minutes * 60 + 1, step))
    return {"series": f"{name}{{{selector}}}", "values": " ".join("_" if v is None else f"{v:g}" for v in samples)}


def counted(happens: Callable[[int], bool]) -> Values:
    """A counter that goes up by one at every sample time where ``happens(t)``."""
    return lambda t: float(sum(1 for s in range(STEP, t + 1, STEP) if happens(s)))


def alerts(*expected: tuple[str, str, dict[str, str]]) -> list[dict[str, Any]]:
    """ALERTS samples: (alert name, severity, extra labels), all of them firing."""
    return [
        {"labels": _alert_labels(name, severity, labels), "value": 1}
        for name, severity, labels in sorted(expected, key=lambda e: e[0])
    ]


def _alert_labels(name: str, severity: str, labels: dict[str, str]) -> str:
    inner = {"alertname": name, "alertstate": "firing", "severity": severity, **labels}
    return "ALERTS{" + ", ".join(f'{k}="{v}"' for k, v in sorted(inner.items())) + "}"


def nothing_at(*times: str) -> list[dict[str, Any]]:
    """Nothing pending or firing at these evaluation times."""
    return [{"expr": "ALERTS", "eval_time": t, "exp_samples": []} for t in times]


def pod_series(
    minutes: int,
    *,
    down: Callable[[int], bool] = lambda t: False,
    editing: Callable[[int], bool] = lambda t: True,
    relay: bool = False,
) -> list[dict[str, str]]:
    """What one pod exports: auto-save every sample (writes while ``editing``), a read of
    the heads every sample, all failing while ``down``."""
    unsaved_since = _unsaved_since(down, editing)

    def saved(t: int) -> bool:
        return editing(t) and not down(t)

    def refused(t: int) -> bool:
        return editing(t) and down(t)

    def age(t: int) -> float:
        since = unsaved_since(t)
        return 0.0 if since is None else float(t - since)

    out = [
        series("canvas_ready", lambda t: 1, minutes),
        series("canvas_autosave_worker_alive", lambda t: 1, minutes),
        series("canvas_autosave_quarantined_objects", lambda t: 0, minutes),
        series("canvas_clock_clamped_stamps_total", lambda t: 0, minutes),
        series("canvas_dirty_objects", lambda t: 10.0 if editing(t) else 0.0, minutes),
        series("canvas_oldest_unsaved_change_age_seconds", age, minutes),
        series("canvas_autosave_last_success_timestamp_seconds", _last_success(down), minutes),
        series("canvas_autosave_batches_total", counted(saved), minutes, outcome="success"),
        series("canvas_autosave_batches_total", counted(refused), minutes, outcome="error"),
        series("canvas_sync_pulls_total", counted(lambda t: not down(t)), minutes, kind="heads", outcome="success"),
        series("canvas_sync_pulls_total", counted(down), minutes, kind="heads", outcome="error"),
        series("canvas_project_loads_total", lambda t: 1, minutes, outcome="success"),
        series("canvas_project_loads_total", lambda t: 0, minutes, outcome="error"),
    ]
    for le in ("0.05", "+Inf"):  # successful calls only are timed: fast ones
        out.append(series("canvas_autosave_batch_duration_seconds_bucket", counted(saved), minutes, le=le))
        out.append(series("canvas_sync_lag_seconds_bucket", counted(lambda t: not down(t)), minutes, le=le))
    if relay:
        out.append(series("canvas_relay_connected", lambda t: 1, minutes))
        for le in ("0.01", "+Inf"):
            out.append(series("canvas_relay_lag_seconds_bucket", counted(editing), minutes, le=le))
    return out


def _last_success(down: Callable[[int], bool]) -> Values:
    """A pass every sample: a success (something saved, or nothing to save) unless down."""
    return lambda t: float(max((s for s in range(0, t + 1, STEP) if not down(s)), default=0))


def _unsaved_since(down: Callable[[int], bool], editing: Callable[[int], bool]) -> Callable[[int], int | None]:
    """When the oldest unsaved change was made: edits come every sample and each pass
    saves all of them, so while saves fail it is the first edit after the last save."""

    def since(t: int) -> int | None:
        if not editing(t):
            return None
        if not down(t):
            return t  # saved this pass; a new edit waits for the next
        last_save = max((s for s in range(0, t + 1, STEP) if not down(s)), default=0)
        return last_save

    return since


def run_tests(promtool: str, tmp_path: Path, spec: dict[str, Any], tests: list[dict[str, Any]]) -> None:
    for group in spec["groups"]:  # promtool compares labels; the annotations are checked in test_chart
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    suite = {"rule_files": ["rules.yaml"], "evaluation_interval": f"{STEP}s", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    run = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


def check(promtool: str, tmp_path: Path, spec: dict[str, Any], count: int) -> None:
    (tmp_path / "checked.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "checked.yaml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout


POD_LABELS = {"namespace": "canvas", "pod": "p1"}


def test_the_rules_pass_promtool_check_annotations_included(promtool: str, tmp_path: Path) -> None:
    check(promtool, tmp_path, rules(), count=9)
    check(promtool, tmp_path, rules(redis={"enabled": True}), count=11)


@pytest.mark.parametrize("relay", [False, True], ids=["no-relay", "relay"])
def test_a_healthy_pod_raises_nothing_not_even_pending(promtool: str, tmp_path: Path, relay: bool) -> None:
    """A fresh pod idle for 20 minutes, then edited: its first unsaved edit is seconds old."""
    history = {"interval": f"{STEP}s", "input_series": pod_series(40, editing=lambda t: t > 1200, relay=relay)}
    history["promql_expr_test"] = nothing_at("1m", "10m", "20m", "20m15s", "21m", "25m", "30m", "39m")
    run_tests(promtool, tmp_path, rules(redis={"enabled": relay}), [history])


def test_a_dynamodb_outage_raises_one_warning_then_the_critical_one_and_both_resolve(
    promtool: str, tmp_path: Path
) -> None:
    """DynamoDB down from 10m to 20m, edits all along; the first pass after it succeeds at 20m15s.

    CanvasSyncDynamoDBFailing: no success for a minute (11m), then ``for: 2m``: 13m.
    CanvasSyncUnsavedEditsStuck: the oldest unsaved change (made at 10m) is 4 minutes old at
    14m, then ``for: 1m``: 15m, when it is 5 minutes old, as unsavedAgeSeconds says.
    Both resolve at the first evaluation after the first successful pass. Failed calls are not
    timed, so CanvasSyncBatchLatencyHigh stays silent.
    """
    outage = {
        "interval": f"{STEP}s",
        "input_series": pod_series(30, down=lambda t: 600 < t <= 1200),
        "alert_rule_test": [
            {"eval_time": "12m30s", "alertname": "CanvasSyncDynamoDBFailing", "exp_alerts": []},
            {
                "eval_time": "13m",
                "alertname": "CanvasSyncDynamoDBFailing",
                "exp_alerts": [{"exp_labels": {"severity": "warning", **POD_LABELS}}],
            },
            {"eval_time": "14m45s", "alertname": "CanvasSyncUnsavedEditsStuck", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "CanvasSyncUnsavedEditsStuck",
                "exp_alerts": [{"exp_labels": {"severity": "critical", **POD_LABELS}}],
            },
        ],
        "promql_expr_test": [
            *nothing_at("9m", "10m30s", "20m15s", "21m", "22m30s", "25m", "30m"),
            {
                "expr": "ALERTS",
                "eval_time": "19m",
                "exp_samples": alerts(
                    ("CanvasSyncDynamoDBFailing", "warning", POD_LABELS),
                    ("CanvasSyncUnsavedEditsStuck", "critical", POD_LABELS),
                ),
            },
        ],
    }
    run_tests(promtool, tmp_path, rules(), [outage])


def test_the_read_side_alone_failing_is_caught(promtool: str, tmp_path: Path) -> None:
    """Loads and reads of other replicas' saves failing while nothing is edited (no writes)."""
    idle = {
        "interval": f"{STEP}s",
        "input_series": pod_series(20, down=lambda t: t > 300, editing=lambda t: False),
        "alert_rule_test": [
            {"eval_time": "7m45s", "alertname": "CanvasSyncDynamoDBFailing", "exp_alerts": []},
            {
                "eval_time": "8m",
                "alertname": "CanvasSyncDynamoDBFailing",
                "exp_alerts": [{"exp_labels": {"severity": "warning", **POD_LABELS}}],
            },
            {"eval_time": "19m", "alertname": "CanvasSyncUnsavedEditsStuck", "exp_alerts": []},  # nothing unsaved
        ],
    }
    run_tests(promtool, tmp_path, rules(), [idle])


def test_no_ready_replica_and_no_series_at_all_and_a_dead_worker(promtool: str, tmp_path: Path) -> None:
    not_scraped = {  # the ServiceMonitor not selected: no canvas_ready series at all
        "interval": f"{STEP}s",
        "input_series": [{"series": 'canvas_ready{namespace="elsewhere", service="other", pod="x"}', "values": "1x40"}],
        "alert_rule_test": [
            {"eval_time": "1m45s", "alertname": "CanvasSyncNoReadyReplicas", "exp_alerts": []},
            {
                "eval_time": "2m",
                "alertname": "CanvasSyncNoReadyReplicas",
                "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
            },
        ],
    }
    dead_worker = {
        "interval": f"{STEP}s",
        "input_series": [
            series("canvas_ready", lambda t: 1, 10),
            series("canvas_autosave_worker_alive", lambda t: 1 if t < 300 else 0, 10),
        ],
        "alert_rule_test": [
            {"eval_time": "5m45s", "alertname": "CanvasSyncAutosaveWorkerDead", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "CanvasSyncAutosaveWorkerDead",
                "exp_alerts": [{"exp_labels": {"severity": "critical", **POD_LABELS}}],
            },
            {"eval_time": "9m", "alertname": "CanvasSyncNoReadyReplicas", "exp_alerts": []},
        ],
    }
    run_tests(promtool, tmp_path, rules(), [not_scraped, dead_worker])


def test_slow_saves_a_growing_backlog_skewed_clocks_and_quarantine(promtool: str, tmp_path: Path) -> None:
    """The warnings that do not come from an outage: saves succeed, but slowly or not enough."""
    m = 30
    slow = {
        "interval": "1m",
        "input_series": [
            series("canvas_ready", lambda t: 1, m, step=60),
            series("canvas_dirty_objects", lambda t: 6000 + t / 60 * 100, m, step=60),
            series("canvas_autosave_batches_total", lambda t: t / 60 * 10, m, step=60, outcome="success"),
            series("canvas_autosave_batch_duration_seconds_bucket", lambda t: 0, m, step=60, le="1.0"),
            series("canvas_autosave_batch_duration_seconds_bucket", lambda t: t / 60 * 10, m, step=60, le="2.5"),
            series("canvas_autosave_batch_duration_seconds_bucket", lambda t: t / 60 * 10, m, step=60, le="+Inf"),
            series("canvas_sync_lag_seconds_bucket", lambda t: 0, m, step=60, le="10.0"),
            series("canvas_sync_lag_seconds_bucket", lambda t: t / 60 * 10, m, step=60, le="30.0"),
            series("canvas_sync_lag_seconds_bucket", lambda t: t / 60 * 10, m, step=60, le="+Inf"),
            series("canvas_autosave_quarantined_objects", lambda t: 0 if t < 120 else 1, m, step=60),
            series("canvas_clock_clamped_stamps_total", lambda t: 0 if t < 600 else 1, m, step=60),
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "CanvasSyncObjectsQuarantined", "exp_alerts": []},
            {
                "eval_time": "5m",
                "alertname": "CanvasSyncObjectsQuarantined",
                "exp_alerts": [{"exp_labels": {"severity": "critical", **POD_LABELS}}],
            },
            {"eval_time": "5m", "alertname": "CanvasSyncClockAhead", "exp_alerts": []},
            {
                "eval_time": "12m",
                "alertname": "CanvasSyncClockAhead",
                "exp_alerts": [{"exp_labels": {"severity": "warning", **POD_LABELS}}],
            },
            {
                "eval_time": "20m",
                "alertname": "CanvasSyncDirtyBacklogGrowing",
                "exp_alerts": [{"exp_labels": {"severity": "warning", **POD_LABELS}}],
            },
            {
                "eval_time": "20m",
                "alertname": "CanvasSyncBatchLatencyHigh",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "canvas"}}],
            },
            {
                "eval_time": "20m",
                "alertname": "CanvasSyncSyncLagHigh",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "canvas"}}],
            },
            {"eval_time": "20m", "alertname": "CanvasSyncDynamoDBFailing", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "CanvasSyncUnsavedEditsStuck", "exp_alerts": []},
        ],
    }
    run_tests(promtool, tmp_path, rules(), [slow])


def test_the_relay_alerts(promtool: str, tmp_path: Path) -> None:
    names = {r["alert"] for g in rules()["groups"] for r in g["rules"]}
    assert not names & {"CanvasSyncRelayDown", "CanvasSyncRelayLagging"}  # no relay: canvas_relay_connected is 0
    m = 30
    relay = {
        "interval": "1m",
        "input_series": [
            series("canvas_relay_connected", lambda t: 1 if t < 120 else 0, m, step=60),
            series("canvas_relay_lag_seconds_bucket", lambda t: 0, m, step=60, le="0.25"),
            series("canvas_relay_lag_seconds_bucket", lambda t: t / 60 * 10, m, step=60, le="0.5"),
            series("canvas_relay_lag_seconds_bucket", lambda t: t / 60 * 10, m, step=60, le="+Inf"),
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "CanvasSyncRelayDown", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "CanvasSyncRelayDown",
                "exp_alerts": [{"exp_labels": {"severity": "warning", **POD_LABELS}}],
            },
            {
                "eval_time": "20m",
                "alertname": "CanvasSyncRelayLagging",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "canvas"}}],
            },
        ],
    }
    run_tests(promtool, tmp_path, rules(redis={"enabled": True}), [relay])


def test_unsaved_age_follows_its_value(promtool: str, tmp_path: Path) -> None:
    """unsavedAgeSeconds: 600 fires at 10 minutes, not 5."""
    outage = {
        "interval": f"{STEP}s",
        "input_series": pod_series(30, down=lambda t: 300 < t),
        "alert_rule_test": [
            {"eval_time": "14m45s", "alertname": "CanvasSyncUnsavedEditsStuck", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "CanvasSyncUnsavedEditsStuck",
                "exp_alerts": [{"exp_labels": {"severity": "critical", **POD_LABELS}}],
            },
        ],
    }
    spec = rules(metrics={"prometheusRule": {"enabled": True, "unsavedAgeSeconds": 600}})
    run_tests(promtool, tmp_path, spec, [outage])
