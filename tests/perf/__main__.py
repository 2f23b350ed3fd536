"""Run benchmark groups: `python -m tests.perf [GROUP ...]` (all but `load` when none is named)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import tempfile

from tests.perf.common import keep_stdout_for_results

GROUPS = {
    "eventstore": "tests.perf.bench_eventstore",
    "spawn": "tests.perf.bench_spawn",
    "services": "tests.perf.bench_services",
    "bus": "tests.perf.bench_bus",
    "gateway": "tests.perf.bench_gateway",
    "checkpoint": "tests.perf.bench_checkpoint",
    "sandbox": "tests.perf.bench_sandbox",
    "assistants": "tests.perf.bench_assistants",
    "load": "tests.perf.bench_load",  # minutes long: run only when named
}
DEFAULT = [g for g in GROUPS if g != "load"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="just bench")
    parser.add_argument(
        "groups", nargs="*", help=f"one of: {', '.join(GROUPS)} (default: all but load)"
    )
    args = parser.parse_args()
    names = [g for g in args.groups if g] or DEFAULT
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        print(
            f"unknown benchmark group {unknown[0]!r}; groups: {', '.join(GROUPS)}", file=sys.stderr
        )
        return 2
    keep_stdout_for_results()
    # tmux never removes its socket files (tests/leftovers.py says more): the benchmarks' tmux
    # servers, and those of the agents' actors in the Ray this process starts, keep theirs in
    # a folder of the run's own, removed at its end.
    with tempfile.TemporaryDirectory(prefix="fleet-bench-tmux-") as tmux_tmpdir:
        os.environ["TMUX_TMPDIR"] = tmux_tmpdir
        for name in names:
            module = importlib.import_module(GROUPS[name])
            asyncio.run(module.main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
