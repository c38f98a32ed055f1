"""Time to accuracy on mnist5k: cnnsearch's defaults vs a hand-written Optuna script.

Both run in fresh processes (imports and data loading count, as for a user), on the same
data and the same train/val split, for the same wall-clock budget, with 2 CPU threads,
interleaved seed by seed (A B A B ...) so machine noise hits both alike. Reported per
side, median over seeds: seconds until the best validation accuracy first reaches the
target, and the best validation accuracy after 60 s and after the budget.

The baseline is what a careful user writes by hand from Optuna's tutorial: TPE,
MedianPruner, a DataLoader over a TensorDataset, a small CNN with the usual knobs,
5 epochs, per-epoch reporting.

    python benchmarks/time_to_accuracy.py            # 3 seeds x 120 s (about 13 minutes)
    python benchmarks/time_to_accuracy.py --quick    # 1 seed x 30 s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path[0] = str(ROOT)  # benchmarks/spaces/ would shadow the `spaces` package

from benchmarks.common import result_line  # noqa: E402

GOAL_TARGET, GOAL_SPEEDUP = 0.97, 3.0
"""Goal: cnnsearch reaches 0.97 val accuracy at least 3x sooner than the script."""
GOAL_SECONDS, GOAL_BEST = 120.0, 0.985
"""Goal: cnnsearch's best val accuracy within 120 s is at least 0.985."""


def cnnsearch_side(seed: int, budget: float, workdir: str) -> list[tuple[float, float]]:
    """(seconds since start, val accuracy) of each completed trial of `cnnsearch run` with defaults."""
    t0 = time.time()
    db = Path(workdir) / f"cnnsearch-{seed}.db"
    subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "--study", "tta", "--dataset", "mnist5k", "--space", "default",
         "--timeout", str(budget), "--seed", str(seed), "--storage", f"sqlite:///{db}", "--no-progress"],
        cwd=workdir, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    import optuna

    study = optuna.load_study(study_name="tta", storage=f"sqlite:///{db}")
    return sorted((t.datetime_complete.timestamp() - t0, t.value) for t in study.get_trials()
                  if t.state.name == "COMPLETE")


BASELINE = r'''
import json, sys, time
t0 = float(sys.argv[1]); seed = int(sys.argv[2]); budget = float(sys.argv[3])
import optuna, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from search.trial.datasets import load_dataset
from search.trial.data import make_split
torch.set_num_threads(2)
optuna.logging.set_verbosity(optuna.logging.WARNING)
images = load_dataset("mnist5k")
split = make_split(images.labels, seed=0)  # the same split cnnsearch uses
x = images.images.float() / 255.0
mean, std = x[split.train].mean(), x[split.train].std()
x = (x - mean) / std
train = TensorDataset(x[split.train], images.labels[split.train])
val_x, val_y = x[split.val], images.labels[split.val]
done = []

def objective(trial):
    torch.manual_seed(trial.number)
    n_layers = trial.suggest_int("n_layers", 1, 3)
    filters = trial.suggest_categorical("filters", [16, 32, 64])
    kernel = trial.suggest_categorical("kernel", [3, 5])
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    batch = trial.suggest_categorical("batch_size", [32, 64, 128])
    opt_name = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    layers, c, side = [], 1, 28
    for i in range(n_layers):
        layers += [nn.Conv2d(c, filters * 2 ** i, kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2)]
        c, side = filters * 2 ** i, side // 2
    model = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * side * side, 10))
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if opt_name == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    loader = DataLoader(train, batch_size=batch, shuffle=True)
    for epoch in range(5):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(val_x).argmax(1) == val_y).float().mean().item()
        trial.report(acc, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    done.append((time.time() - t0, acc))
    return acc

study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                            pruner=optuna.pruners.MedianPruner())
study.optimize(objective, timeout=budget - (time.time() - t0))
print(json.dumps(done))
'''


def baseline_side(seed: int, budget: float, workdir: str) -> list[tuple[float, float]]:
    """(seconds since start, val accuracy) of each completed trial of the hand-written script."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", BASELINE, str(t0), str(seed), str(budget)], cwd=workdir,
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return [tuple(p) for p in json.loads(out.stdout.strip().splitlines()[-1])]


def summarise(points: list[tuple[float, float]], target: float, at: list[float]) -> dict[str, float | None]:
    """Seconds to reach ``target`` and the best accuracy at each time in ``at``."""
    best, reached = 0.0, None
    out: dict[str, float | None] = {}
    for t, acc in sorted(points):
        best = max(best, acc)
        if reached is None and best >= target:
            reached = t
    out["seconds_to_target"] = reached
    for limit in at:
        out[f"best_at_{limit:g}s"] = max((a for t, a in points if t <= limit), default=None)
    return out


def median(values: list[float | None]) -> float | None:
    """Median where a run that never got there counts as infinitely late."""
    finite = [v if v is not None else float("inf") for v in values]
    m = statistics.median(finite)
    return None if m == float("inf") else m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--quick", action="store_true", help="1 seed x 30 s")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budget = 1, 30.0
    at = sorted({min(60.0, args.budget), args.budget})
    results: dict[str, list[dict]] = {"cnnsearch": [], "optuna-script": []}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in range(args.seeds):
            for name, side in (("cnnsearch", cnnsearch_side), ("optuna-script", baseline_side)):
                points = side(seed, args.budget, workdir)
                results[name].append(summarise(points, args.target, at))
                print(f"seed {seed} {name:<14} {len(points):>3} trials  {results[name][-1]}", flush=True)
    print(f"\nmedian of {args.seeds} seeds, {args.budget:g} s each, 2 CPU threads, mnist5k (val split of 500)")
    keys = ["seconds_to_target", *[f"best_at_{t:g}s" for t in at]]
    print(f"{'':<14} " + " ".join(f"{k:>18}" for k in keys))
    medians = {name: {k: median([r[k] for r in runs]) for k in keys} for name, runs in results.items()}
    for name, m in medians.items():
        print(f"{name:<14} " + " ".join(f"{'never' if m[k] is None else round(m[k], 4):>18}" for k in keys))
    a, b = medians["cnnsearch"]["seconds_to_target"], medians["optuna-script"]["seconds_to_target"]
    if a and b:
        print(f"\ncnnsearch reaches {args.target} {b / a:.1f}x sooner than the hand-written script")
    print(result_line("time_to_accuracy", verdict(medians, args.target, args.budget)))


def verdict(medians: dict[str, dict[str, float | None]], target: float, budget: float) -> str:
    """The headline: speed-up to ``target`` and cnnsearch's best at the budget, against the goals."""
    ours, theirs = medians["cnnsearch"], medians["optuna-script"]
    a, b = ours["seconds_to_target"], theirs["seconds_to_target"]
    best = ours[f"best_at_{budget:g}s"]
    if a is None:
        speed = f"cnnsearch never reached {target:g}"
    elif b is None:
        speed = f"cnnsearch reached {target:g} in {a:.0f} s, the script never did"
    else:
        speed = f"{b / a:.1f}x sooner to {target:g} ({a:.0f} s vs {b:.0f} s)"
    goals = []
    if target == GOAL_TARGET:
        goals.append(f">= {GOAL_SPEEDUP:g}x: " + ("met" if a is not None and (b is None or b / a >= GOAL_SPEEDUP)
                                                 else "NOT met"))
    at = f"best {'-' if best is None else f'{best:.4f}'} within {budget:g} s"
    if budget == GOAL_SECONDS:
        goals.append(f">= {GOAL_BEST:g} within {GOAL_SECONDS:g} s: "
                     + ("met" if best is not None and best >= GOAL_BEST else "NOT met"))
    return f"{speed}; {at}" + (f" (goals {'; '.join(goals)})" if goals else " (goals checked at 0.97 and 120 s only)")


if __name__ == "__main__":
    main()
