"""A NATS JetStream cluster of real nats-server processes on one machine: tests and local trials.

Each node gets a config file (the same shape as infra/deploy/nats/cluster-n*.conf, with
127.0.0.1 and free ports instead of host names), its own store and log. Route ports must be
known before the first node starts, so they are chosen up front; client ports are chosen by
each server (`port: -1`) and read back from its ports file, as `NatsServer` does. A killed
node comes back with `restart()` on the same config, store and ports.

Protocol facts: JetStream in a cluster answers `$JS.API.INFO` only once a meta leader is
elected (until then a request times out or is answered with error 10008, "JetStream system
temporarily unavailable"); a stream at `num_replicas=3` acknowledges a publish once a quorum
(2 of 3) has stored it, so one node can die without losing an acknowledged message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nats
from nats.js.errors import APIError

from infra.natsserver import READY_TIMEOUT_S, STOP_TIMEOUT_S, find_binary
from schemas.errors import NatsServerFailed

CLUSTER_NAME = "fleetd"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS's choice for a bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def node_config(
    name: str, store_dir: Path, cluster_port: int, routes: list[int], host: str = "127.0.0.1"
) -> str:
    """One node's config: client port chosen by the server, JetStream, routes to every node."""
    route_urls = ", ".join(f'"nats-route://{host}:{p}"' for p in routes)
    return (
        f'server_name: "{name}"\n'
        f'listen: "{host}:-1"\n'
        f'jetstream {{ store_dir: "{store_dir}" }}\n'
        f"cluster {{\n"
        f'  name: "{CLUSTER_NAME}"\n'
        f'  listen: "{host}:{cluster_port}"\n'
        f"  routes: [{route_urls}]\n"
        f"}}\n"
    )


@dataclass
class ClusterNode:
    """One nats-server of the cluster; `port` is its client port once started."""

    name: str
    config_path: Path
    log_path: Path
    ports_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"node {self.name} is not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        listen = ["--addr", self.host, "--port", str(self.port or -1)]
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [str(find_binary()), "-c", str(self.config_path), *listen,
                 "--ports_file_dir", str(self.ports_dir)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, close_fds=True,
            )  # fmt: skip

    def wait_ready(self, deadline: float) -> None:
        """Until the ports file names the client port; raise if the process died first."""
        proc = self.proc
        assert proc is not None
        ports_file = self.ports_dir / f"nats-server_{proc.pid}.ports"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NatsServerFailed(
                    f"node {self.name} exited with status {proc.returncode} while starting",
                    str(self.log_path),
                    _tail(self.log_path),
                )
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError, KeyError):
                self.port = urlsplit(json.loads(ports_file.read_bytes())["nats"][0]).port or 0
                if self.port:
                    return
            time.sleep(0.005)
        raise NatsServerFailed(
            f"node {self.name} was not ready in time", str(self.log_path), _tail(self.log_path)
        )

    def kill(self) -> None:
        """SIGKILL, as a crash would; reaped."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (a clean JetStream shutdown), SIGKILL after `timeout`; always reaped."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.kill()
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        """Start again on the same config, store and client port."""
        self.stop()
        self.start()
        self.wait_ready(time.monotonic() + READY_TIMEOUT_S)


@dataclass
class NatsCluster:
    """Several nats-servers routed together with JetStream; start with `NatsCluster.start`."""

    nodes: list[ClusterNode]

    @classmethod
    def start(cls, base_dir: Path, size: int = 3, host: str = "127.0.0.1") -> NatsCluster:
        base_dir.mkdir(parents=True, exist_ok=True)
        routes = [free_port(host) for _ in range(size)]
        nodes = []
        for i, cluster_port in enumerate(routes, start=1):
            name = f"n{i}"
            config = base_dir / f"{name}.conf"
            config.write_text(node_config(name, base_dir / name, cluster_port, routes, host))
            nodes.append(
                ClusterNode(
                    name, config, base_dir / f"{name}.log", base_dir / f"{name}-ports", host
                )
            )
        cluster = cls(nodes)
        try:
            for node in nodes:
                node.start()
            deadline = time.monotonic() + READY_TIMEOUT_S
            for node in nodes:
                node.wait_ready(deadline)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what `FLEET_NATS_URL` takes."""
        return ",".join(n.url for n in self.nodes)

    @property
    def servers(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def wait_jetstream(servers: list[str], timeout: float = READY_TIMEOUT_S) -> None:
    """Return once the cluster has a JetStream meta leader (account info answers)."""
    nc = await nats.connect(servers=servers, connect_timeout=2)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            try:
                await js.account_info()
                return
            except (TimeoutError, APIError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


def _tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
