"""The Ray deployment files parse and say what the guide says (no cluster needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import ray
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy"


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / "ray" / name).read_text())


def test_the_ray_up_config_is_valid_for_the_cluster_launcher() -> None:
    schema_path = Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json"
    config = load("cluster.yaml")
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    head = " ".join(config["head_start_ray_commands"])
    assert "FLEET_RAY_ADDRESS=127.0.0.1:6379" in head and "fleet up" in head
    assert "--resources=" in " ".join(config["worker_start_ray_commands"])


def test_the_kuberay_manifest_runs_fleet_up_beside_the_head() -> None:
    manifest = load("raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    head = manifest["spec"]["headGroupSpec"]
    fleetd = next(c for c in head["template"]["spec"]["containers"] if c["name"] == "fleetd")
    env = {e["name"]: e["value"] for e in fleetd["env"]}
    assert env["FLEET_RAY_ADDRESS"] == "127.0.0.1:6379" and env["FLEET_NATS_URL"]
    assert {"name": "ray-tmp", "mountPath": "/tmp/ray"} in fleetd["volumeMounts"]
    for group in manifest["spec"]["workerGroupSpecs"]:
        # KubeRay passes the value to `ray start --resources=`, quotes and all.
        assert json.loads(json.loads(group["rayStartParams"]["resources"]))
