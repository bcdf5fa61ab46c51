"""A three-node NATS JetStream cluster on loopback for the fault tests (issue 13 item 4, ADR 0041):
each node a nats-server process with its own client, cluster-route and monitor ports and its own
store, routed to the other two. A node can be SIGKILLed (a machine lost) and started again on the
same ports and store, as a StatefulSet's pod comes back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from kannon.runtime.processes import free_port, wait_until
from tests.faults.support import NatsServer

CLUSTER_NAME = "kannon-test"


def healthy(monitor_port: int) -> bool:
    """The node's /healthz says JetStream is current: it sees a meta leader and is caught up."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{monitor_port}/healthz", timeout=0.5
        ) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class ClusterNode(NatsServer):
    def __init__(self, root: Path, name: str) -> None:
        super().__init__(root, f"nats-{name}")
        self.name = name
        self.cluster_port = free_port()

    def start(self, routes: list[str]) -> None:
        self.spawn(
            "-n",
            self.name,
            "--cluster_name",
            CLUSTER_NAME,
            "--cluster",
            f"nats://127.0.0.1:{self.cluster_port}",
            "--routes",
            ",".join(routes),
        )

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, no flush of the store."""
        if self.child is None:
            return
        os.kill(self.child.pid, signal.SIGKILL)
        self.child.popen.wait(10)
        self.child = None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=20)
            self.child = None

    def wait_healthy(self, timeout: float = 60.0) -> None:
        assert self.child is not None, f"{self.name} is not running"
        wait_until(self.child, lambda: healthy(self.monitor_port), timeout, "JetStream current")


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.nodes = [ClusterNode(root / f"n{i}", f"n{i}") for i in range(1, size + 1)]

    @property
    def url(self) -> str:
        """`nats_url` naming every node, comma-separated, as a deployment would."""
        return ",".join(node.url for node in self.nodes)

    def routes(self, node: ClusterNode) -> list[str]:
        return [f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node]

    def start(self) -> None:
        for node in self.nodes:
            node.start(self.routes(node))
        for node in self.nodes:
            node.wait_healthy()

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def restart(self, node: ClusterNode) -> None:
        node.start(self.routes(node))
        node.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except (OSError, subprocess.SubprocessError):
                node.kill()
