"""A local Ray cluster started for one run: reachable from this machine only, and gone when the run ends.

``ray.init()`` without an address starts the cluster's processes as children of the run. Ray
ends most of them when the run dies, but not the agents its raylet starts (the dashboard and
runtime-env agents): after ``kill -9`` of the run they live on, one of them listening on the
machine's network address. So the cluster binds to the loopback address, and a watchdog process,
started before the cluster, ends every process of the cluster when the run ends, however it ends.

The watchdog is ``python -m search.study.ray_cluster``: it reads nothing from its stdin, whose
other end the run holds; end-of-file there (the run closed it, or died) is its signal to go.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Any

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""``0``: Ray uses the loopback address as the node's address, and its servers listen there only.

Ray reads it once, when it is imported: set it before ``import ray``.
"""

WATCH_SECONDS = 1.0
"""How often the watchdog notes the processes of the cluster (new Ray workers start all along)."""

WATCHDOG_EXIT_SECONDS = 10.0


def local_only() -> None:
    """Make the Ray clusters this process starts listen on the loopback address only (before ``import ray``)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")


class LocalCluster:
    """A local Ray cluster for this process, with the watchdog that ends it when this process ends."""

    def __init__(self, ray: Any, **init_kwargs: Any) -> None:
        # Started before the cluster, so that a run killed while Ray starts leaves nothing either.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE,
            start_new_session=True)  # Ctrl-C and signals to the run's process group are not for it
        self._ray = ray
        try:
            ray.init(**init_kwargs)
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        """Shut Ray down, then let the watchdog end whatever of the cluster is left."""
        try:
            self._ray.shutdown()
        finally:
            self._watchdog.stdin.close()
            try:
                self._watchdog.wait(WATCHDOG_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()


def _watch(run_pid: int) -> None:
    """Note the processes started under ``run_pid`` until stdin ends, then end those still running."""
    # Ray ships psutil and puts it on the path when imported; Ray's own watchers import it so too.
    import ray  # noqa: F401, I001
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = psutil.Process()
    seen: dict[int, float] = {}  # pid -> start time, so that a reused pid is never killed
    try:
        run = psutil.Process(run_pid)
    except psutil.NoSuchProcess:
        return
    while not select.select([sys.stdin], [], [], WATCH_SECONDS)[0]:
        try:
            for proc in run.children(recursive=True):
                started = proc.create_time()
                # The cluster's processes: what the run started after this watchdog (not, in a
                # test session, a database server started before).
                if proc.pid != me.pid and started >= me.create_time():
                    seen[proc.pid] = started
        except psutil.NoSuchProcess:  # the run (its stdin ends at the next look) or a child went meanwhile
            continue
    for pid, started in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                proc.kill()
        except psutil.NoSuchProcess:
            continue


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
