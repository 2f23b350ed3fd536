"""A Ray cluster of several nodes on this machine, for the scale-out test: run as a process.

`python -m tests.scaleout.raynodes '{"n1": 1}' '{"n2": 1}'` starts a head with the first
custom resources and a worker node (its own raylet) per further argument, prints one JSON line
`{"address": ..., "nodes": {node id: resources}}`, and shuts every Ray process it started down
when its stdin closes (or on SIGTERM), so a test owns its cluster from start to end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile


def main(argv: list[str]) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    wanted = [json.loads(a) for a in argv] or [{"n1": 1}, {"n2": 1}]
    temp = tempfile.mkdtemp(prefix="fleet-raynodes-")
    head = {"num_cpus": 1, "resources": wanted[0], "include_dashboard": False, "temp_dir": temp}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    try:
        for resources in wanted[1:]:
            cluster.add_node(num_cpus=1, resources=resources)
        cluster.wait_for_nodes()
        nodes = {n.node_id: r for n, r in zip(cluster.list_all_nodes(), wanted, strict=True)}
        print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
        sys.stdin.read()  # until the test closes our stdin
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
