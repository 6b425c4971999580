"""The alert rules and the Grafana dashboard name only metrics the worker exports.

`promtool check rules` / `promtool test rules` (CI) check the rules' syntax and behaviour; this
checks that they and the dashboard watch series that exist, so a renamed metric cannot leave
an alert that never fires or a panel that stays empty.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from sync_worker.customers import Outcome
from sync_worker.metrics import SyncMetrics
from sync_worker.report import CycleReport

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "config" / "prometheus-alerts.yaml"
RULE_TESTS = ROOT / "config" / "prometheus-alerts.test.yaml"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"

METRIC = re.compile(r"\bcrm_sync_[a-z0-9_]+")
# The `outcome` values of crm_sync_cycles_total: a cycle's outcome, or the daemon's own two.
CYCLE_OUTCOMES = {outcome.value for outcome in Outcome} | {"skipped", "crashed"}
OUTCOME_MATCHER = re.compile(r'\boutcome\s*(?:=~|!~|!=|=)\s*"([^"]*)"')
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def exported_series() -> set[str]:
    """Every series name the worker's /metrics can carry, after one observed cycle.

    Samples give the names directly; a labelled counter with no child yet (retries, customers
    of an empty cycle) shows only in its `# TYPE` line, and a histogram's series are its
    `# TYPE` name plus _bucket, _sum and _count.
    """
    metrics = SyncMetrics()
    metrics.observe_cycle(CycleReport(run_id="r", started_at=datetime.now(UTC)))
    names: set[str] = set()
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind in ("histogram", "summary"):
                names.update(name + suffix for suffix in HISTOGRAM_SERIES)
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def yaml_values(text: str, key: str) -> list[str]:
    """The values of `key:` in a YAML file: inline, quoted, or a block scalar (`|`, `>-`).

    Enough for these two files (PyYAML is no dependency of the project).
    """
    values: list[str] = []
    lines = text.splitlines()
    head = re.compile(rf"^(\s*)(?:-\s+)?{re.escape(key)}:\s*(.*)$")
    for i, line in enumerate(lines):
        match = head.match(line)
        if match is None:
            continue
        indent, rest = len(match.group(1)), match.group(2).strip()
        if rest and rest[0] not in "|>":
            values.append(rest.strip("'\""))
            continue
        block = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        values.append(" ".join(part for part in block if part))
    return values


def dashboard_queries(node: Any) -> list[str]:
    """Every PromQL text of the dashboard: panel targets and templating queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(dashboard_queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_queries(item))
    return found


def referenced(texts: list[str]) -> set[str]:
    return {name for text in texts for name in METRIC.findall(text)}


def rule_exprs() -> list[str]:
    return yaml_values(RULES.read_text(encoding="utf-8"), "expr")


def test_every_alert_expression_names_an_exported_metric() -> None:
    exprs = rule_exprs()
    assert len(exprs) >= 5
    names = referenced(exprs)
    assert names - exported_series() == set()
    assert names >= {
        "crm_sync_last_success_timestamp_seconds",
        "crm_sync_cycles_total",
        "crm_sync_customers_failed",
        "crm_sync_deactivation_guard_tripped",
    }


def test_the_rule_tests_feed_series_the_worker_exports() -> None:
    text = RULE_TESTS.read_text(encoding="utf-8")
    names = referenced(yaml_values(text, "series") + yaml_values(text, "expr"))
    assert names
    assert names - exported_series() == set()


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = dashboard_queries(dashboard)
    names = referenced(queries)
    assert names - exported_series() == set()
    assert names >= {
        "crm_sync_cycles_total",
        "crm_sync_customers_total",
        "crm_sync_retries_total",
        "crm_sync_emails_sent_total",
        "crm_sync_cycle_duration_seconds_bucket",
        "crm_sync_last_success_timestamp_seconds",
        "crm_sync_customers_pending",
        "crm_sync_customers_failed",
        "crm_sync_deactivation_guard_tripped",
    }


@pytest.mark.parametrize("path", [RULES, DASHBOARD], ids=lambda path: path.name)
def test_outcome_label_values_exist(path: Path) -> None:
    text = path.read_text(encoding="utf-8").replace('\\"', '"')
    values = {
        value for pattern in OUTCOME_MATCHER.findall(text) for value in pattern.split("|") if value
    }
    assert values
    assert values - CYCLE_OUTCOMES == set()


def test_every_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s*- alert:\s*(\w+)", RULES.read_text(encoding="utf-8"), re.M))
    tested = set(yaml_values(RULE_TESTS.read_text(encoding="utf-8"), "alertname"))
    assert len(alerts) >= 5
    assert alerts <= tested
    assert tested <= alerts


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        for holder in [panel, *panel.get("targets", [])]:
            assert holder["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_operations_page_points_at_the_three_files() -> None:
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    for path in (RULES, RULE_TESTS, DASHBOARD):
        assert f"config/{path.name}" in operations
