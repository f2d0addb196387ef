"""A two-node Ray cluster on this machine, for tests that join a cluster by its address.

Run as a script, in its own process, so the tests' own Ray instance is never touched::

    python ray_cluster.py --cpus 2 --gpus 2

It starts a head node and one worker node with Ray's test helper ``ray.cluster_utils.Cluster``,
each declaring ``--cpus`` CPUs and ``--gpus`` logical GPUs (slots Ray schedules and assigns ids
for; no real device is needed). Once both nodes are up it writes one JSON line on stdout:
``{"address": "IP:PORT", "node_ids": [head, worker]}``. It keeps the cluster until its standard
input closes or it receives SIGTERM or SIGINT, then shuts down the nodes it started and exits.
Ray's reaper stops them too should this process be killed outright.

Give the process its own ``RAY_TMPDIR``: Ray records the newest cluster's address under it, and
a ``ray.init()`` without an address on this machine would otherwise join this cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading

_logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=float, default=2, help="CPUs declared by each node")
    parser.add_argument("--gpus", type=float, default=2, help="logical GPUs of each node")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from ray.cluster_utils import Cluster

    node_args = {
        "num_cpus": args.cpus,
        "num_gpus": args.gpus,
        "include_dashboard": False,
    }
    # Ray still starts its API server with the dashboard off; a free port keeps it clear of
    # other Ray instances on this machine, which all default to the same one.
    head_args = {**node_args, "dashboard_port": _free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        worker = cluster.add_node(**node_args)
        cluster.wait_for_nodes(timeout=120)
        ready = {
            "address": cluster.address,
            "node_ids": [cluster.head_node.node_id, worker.node_id],
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        _wait_for_stop()
    finally:
        cluster.shutdown()
    return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_stop() -> None:
    """Return once standard input closes or SIGTERM or SIGINT arrives."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        _logger.info("signal %d: shutting the cluster down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin() -> None:
        sys.stdin.read()  # Returns at end of file: the test closed its end, or died.
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.wait(timeout=0.5):  # A timed wait lets the signal handlers run.
        pass


if __name__ == "__main__":
    sys.exit(main())
