"""Ray workers on a real local Ray cluster declared with logical GPUs (this machine has none)."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main
from search.study.ray_workers import RayOptions, run_ray_workers, task_device
from storage import open_storage
from tests.support.cli import CLI, clean_env
from tests.support.pg import PgCluster
from tests.support.workers import (
    FAST_HEARTBEAT,
    FAST_SPACE,
    SLOW_SPACE,
    Workers,
    make_study,
    status_json,
    study_name,
    trials_of,
    wait_for,
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def workdir(workdir: Path) -> Path:
    """The shared working directory (tests/conftest.py) with this module's space files."""
    (workdir / "fast.yaml").write_text(yaml.safe_dump(FAST_SPACE))
    return workdir


def _run(*args: str) -> int:
    return main(["run", "--dataset", "digits", "--space", "fast.yaml", "--pruner", "none", "--sampler", "random",
                 "--no-progress", *args])


def _sqlite_trials(workdir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(f"sqlite:///{workdir / 'cnnsearch.db'}", heartbeat_interval=None)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ray-address", "auto"], "--ray-address needs --backend ray (got --backend local)"),
        (["--backend", "ray", "--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5 is not a GPU share"),
        (["--backend", "ray", "--gpus-per-trial", "-1"], "--gpus-per-trial -1 is not a GPU share"),
        (["--backend", "ray", "--cpus-per-trial", "0"], "--cpus-per-trial must be more than 0, got 0"),
        (["--backend", "ray", "--workers", "0"], "--workers must be at least 1, got 0"),
        (["--backend", "ray", "--device", "cuda:1"], "--device 'cuda:1' with --backend ray: Ray assigns the GPUs"),
        (["--workers", "2", "--jobs", "3"], "--workers 2 and --jobs 3 disagree; give one of them"),
    ],
)
def test_bad_worker_flags_get_one_line_exit_2_and_create_nothing(
    workdir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    assert _run("--study", "bad", "--trials", "2", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (workdir / "cnnsearch.db").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "3"], "--workers 3 needs --backend ray; or start 3 `cnnsearch worker` processes"),
        (["--backend", "ray", "--name", "w1"], "--name does not apply to --backend ray: each Ray worker is named"),
        (["--backend", "ray"], "no study named 's' in this storage; create it with `cnnsearch run`"),
    ],
)
def test_worker_command_refuses_what_it_cannot_do_before_starting_ray(
    workdir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    import ray

    optuna.create_study(study_name="other", storage=f"sqlite:///{workdir / 'cnnsearch.db'}")  # a database, no 's'
    running = ray.is_initialized()
    assert main(["worker", "--study", "s", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert ray.is_initialized() == running


@pytest.mark.parametrize(
    "device, gpu_ids, cuda, expected",
    [("auto", [1], True, "cuda:0"), ("auto", [1], False, "cpu"), ("cpu", [0], True, "cpu"), ("auto", [], True, "cpu")],
)
def test_a_ray_task_trains_on_its_first_gpu_else_cpu(device: str, gpu_ids: list, cuda: bool, expected: str) -> None:
    assert task_device(device, gpu_ids, cuda) == expected


@pytest.mark.slow
def test_run_on_a_cpu_only_local_cluster_it_starts_and_shuts_down(workdir: Path) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    assert _run("--study", "cpu", "--trials", "3", "--backend", "ray", "--workers", "2") == 0
    assert not ray.is_initialized()
    trials = _sqlite_trials(workdir, "cpu")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert t.user_attrs["backend"] == "ray" and t.user_attrs["gpu_ids"] == []
        assert t.user_attrs["device"] == "cpu"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs and 2 logical GPUs; yields its address."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.postgres
def test_ray_tasks_and_a_hand_started_worker_share_one_postgres_study(
    ray_cluster: str, pg_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture
) -> None:
    for key, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(key, value)  # forwarded to the Ray tasks
    url, name = pg_cluster.url, study_name()
    make_study(url, name, FAST_SPACE, budget=9)
    by_hand = Workers(pg_cluster, tmp_path)
    try:
        # 3 trials per worker and a budget of 9: each of the three surely works on the study.
        hand = by_hand.start(name, "--trials", "3")
        ray_workers = run_ray_workers(url, name, RayOptions(workers=2, gpus_per_trial=1), max_trials=3)
        hand_output = by_hand.wait(hand)
    finally:
        by_hand.kill_all()

    trials = trials_of(url, name)
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 9  # no worker repeats another's config
    ray_trials = [t for t in trials if t.user_attrs.get("backend") == "ray"]
    gpus_of = {t.user_attrs["pid"]: t.user_attrs["gpu_ids"] for t in ray_trials}
    assert len(gpus_of) == 2
    assert sorted(ids for ids in gpus_of.values()) in ([[0], [1]], [["0"], ["1"]])
    for t in ray_trials:
        assert t.user_attrs["gpu_ids"] == gpus_of[t.user_attrs["pid"]]
        assert t.user_attrs["cuda_visible_devices"] == str(t.user_attrs["gpu_ids"][0])
        assert t.user_attrs["device"] == "cpu"  # logical GPUs: trained on the CPU
    # Every trial is accounted for: the three workers' own counts add up to the study's.
    by_pid = Counter(t.user_attrs["pid"] for t in trials)
    assert set(by_pid) == {*gpus_of, hand.pid}
    hand_done = int(re.search(r"'COMPLETE': (\d+)", hand_output).group(1))
    assert sorted(w.counts["COMPLETE"] for w in ray_workers) == sorted(by_pid[p] for p in gpus_of) == [3, 3]
    assert sorted(w.gpu_ids for w in ray_workers) == sorted(gpus_of.values())
    assert hand_done == by_pid[hand.pid] == 3

    listed = {w["pid"]: w for w in status_json(url, name, capsys)["workers"]}
    assert set(listed) == set(by_pid)
    for pid, worker in listed.items():
        assert worker["host"] and worker["device"] == "cpu" and worker["last_heartbeat"]
        assert worker["gpu_ids"] == gpus_of.get(pid)


@pytest.mark.slow
def test_run_joins_a_running_cluster_by_address_with_fractional_gpus(
    ray_cluster: str, workdir: Path
) -> None:
    import ray

    env = {**os.environ, "CNNSEARCH_STORAGE": f"sqlite:///{workdir / 'cnnsearch.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "--study", "frac", "--dataset", "digits", "--space", "fast.yaml",
         "--pruner", "none", "--trials", "4", "--no-progress", "--backend", "ray", "--ray-address", ray_cluster,
         "--workers", "2", "--gpus-per-trial", "0.5"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "4 complete" in proc.stdout
    trials = _sqlite_trials(workdir, "frac")
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) == 4
    assert all(len(t.user_attrs["gpu_ids"]) == 1 for t in trials)  # a share of one GPU each
    # The cluster was joined, not started: it is still up with both GPUs free.
    assert ray.is_initialized() and ray.available_resources().get("GPU") == 2


@pytest.mark.slow
def test_more_gpus_per_trial_than_a_node_has_is_refused(
    ray_cluster: str, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _run("--study", "big", "--trials", "1", "--backend", "ray", "--gpus-per-trial", "3") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("cnnsearch: error: --gpus-per-trial 3: no node of the Ray cluster has that many GPUs "
                   "(the most on one node: 2); use --gpus-per-trial 0 on a CPU-only cluster")


def _descendants(root: int) -> set[int]:
    """The processes under ``root``, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening_addresses(pids: set[int]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses that TCP sockets of ``pids`` listen on, from /proc."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                # The kernel prints each 32-bit word of the address in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(ipaddress.ip_address(words))
    return found


def _loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_ray_run_takes_its_local_cluster_along_and_its_trials_are_retried(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "slow.yaml").write_text(yaml.safe_dump(SLOW_SPACE))
    for key, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(key, value)  # the killed trials count as stale after 3 s
    env = clean_env(CNNSEARCH_STORAGE=f"sqlite:///{workdir / 'cnnsearch.db'}")  # this checkout's code
    with open(workdir / "run.log", "w") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "search.cli", "run", "--study", "rk", "--dataset", "digits", "--space",
             "slow.yaml", "--pruner", "none", "--sampler", "random", "--trials", "2", "--no-progress",
             "--backend", "ray", "--workers", "2"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    cluster: set[int] = set()
    try:
        def both_training() -> bool:
            try:
                running = [t for t in _sqlite_trials(workdir, "rk") if t.state == TrialState.RUNNING]
            except KeyError:  # the study is not created yet
                return False
            return len(running) == 2 and all(t.intermediate_values for t in running)

        wait_for(both_training, 240, "two Ray workers training")
        cluster = _descendants(run.pid)
        addresses = _listening_addresses(cluster | {run.pid})
        assert addresses and all(_loopback(a) for a in addresses), addresses
        run.kill()
        run.wait()
        wait_for(lambda: not any(_alive(pid) for pid in cluster), 30, "the Ray cluster to end with its run")
    finally:
        if run.poll() is None:
            run.kill()
        for pid in cluster:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    # Resumed: the killed trials are failed as stale, queued again and run; nothing stays RUNNING.
    assert _run("--study", "rk", "--space", "slow.yaml", "--trials", "2") == 0
    trials = _sqlite_trials(workdir, "rk")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 2 and all(t.user_attrs["backend"] == "ray" for t in killed)
    retries = [t for t in trials if "failed_trial" in t.system_attrs]
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == sorted(t.number for t in killed)
    assert all(t.state == TrialState.COMPLETE for t in retries)


@pytest.mark.slow
def test_sigterm_to_a_ray_run_hands_back_the_trials_of_its_tasks(workdir: Path) -> None:
    (workdir / "slow.yaml").write_text(yaml.safe_dump(SLOW_SPACE))
    env = clean_env(CNNSEARCH_STORAGE=f"sqlite:///{workdir / 'cnnsearch.db'}")
    run = subprocess.Popen([*CLI, "run", "--study", "rt", "--dataset", "digits", "--space", "slow.yaml", "--pruner",
                            "none", "--sampler", "random", "--trials", "4", "--no-progress", "--backend", "ray",
                            "--workers", "2"], cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           # as `nohup cnnsearch run ... &` starts it: SIGINT ignored, which Ray's tasks inherit
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    training: list[int] = []
    try:
        def both_training() -> bool:
            try:
                training[:] = [t.number for t in _sqlite_trials(workdir, "rt")
                               if t.state == TrialState.RUNNING and t.intermediate_values]
            except KeyError:  # the study is not created yet
                return False
            return len(training) == 2

        wait_for(both_training, 240, "two Ray workers training")
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 143, output
    assert "handed back to the study (waiting)" in output
    trials = _sqlite_trials(workdir, "rt")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)], output
    # A trial that was in its last epochs may finish before the stop reaches its task (and that task
    # may claim the next one); every other one is back in the study, waiting.
    assert set(training) <= {t.number for t in trials if t.state in (TrialState.WAITING, TrialState.COMPLETE)}
    assert [t for t in trials if t.state == TrialState.WAITING and t.intermediate_values]
    assert not [t for t in trials if "failed_trial" in t.system_attrs]  # the same trials, no retry copies
