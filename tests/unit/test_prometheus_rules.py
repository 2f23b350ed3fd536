"""infra/deploy/prometheus: the alert rules pass their unit tests under promtool (Debian's
`prometheus` package; `infra/deploy/dev` installs it), and name only metrics fleetd exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services.metrics import FleetMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize("tests", sorted(p.name for p in DEPLOY.glob("*test*.yml")))
def test_promtool_runs_the_rule_tests(tests: str) -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", tests],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_name_only_metrics_the_gateway_exports() -> None:
    exported = {
        sample.name for family in FleetMetrics().registry.collect() for sample in family.samples
    } | {family.name for family in FleetMetrics().registry.collect()}
    used = set(re.findall(r"\b(fleet_[a-z_]+)", (DEPLOY / "alerts.yml").read_text()))
    assert used, "no fleet_ metric in alerts.yml?"
    missing = {m for m in used if m not in exported and m.removesuffix("_total") not in exported}
    assert missing == set()


def test_the_grafana_dashboard_is_json_over_fleet_metrics() -> None:
    import json

    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs and all("fleet_" in e for e in exprs)
