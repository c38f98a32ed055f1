"""Seconds per suggestion of cnnsearch's default sampler (``auto``), TPE and GP, by space size and trial count.

What ``search.study.samplers.AUTO_GP_MAX_PARAMS`` and ``AUTO_GP_TRIALS`` rest on: GP's cost per
suggestion grows with the number of searched parameters and with the trials it has seen,
TPE's hardly does. Each sampler runs a study of ``--trials`` trials on a space (the
6-parameter NAS-Bench-201 cell space, the first 12 unconditional parameters of the
``default`` space, and the whole 23-parameter ``default`` space), sampling configs through
``Space.suggest`` as a worker does, with a cheap synthetic objective (a smooth function of the
config, so the GP has a real surface to fit). Time per suggestion = ``ask`` + ``suggest`` +
``tell``; reported: mean ms per suggestion over trials 41-50, 91-100 and 191-200. One
process, torch threads 1, samplers interleaved per space.

    python benchmarks/sampler_cost.py            # 200 trials (about 6 minutes)
    python benchmarks/sampler_cost.py --quick    # 50 trials, two spaces (about a minute)
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import optuna
import torch

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # benchmarks/spaces/ would shadow `spaces`

from benchmarks.common import machine_line, parser_with_modes, result_line, table  # noqa: E402
from search.study.samplers import AUTO_GP_MAX_PARAMS, make_sampler  # noqa: E402
from spaces import Space, load_space  # noqa: E402

NAS_SPACE = Path(__file__).resolve().parent / "spaces" / "nasbench201.yaml"
WINDOWS = ((41, 50), (91, 100), (191, 200))


def spaces(quick: bool) -> dict[str, Space]:
    """The spaces measured, by name (with their searched-parameter count)."""
    nas = load_space(NAS_SPACE, strict=False)
    default = load_space("default")
    out = {f"nasbench201 ({len(nas.params)})": nas}
    if not quick:
        unconditional = [n for n, p in default.params.items() if not p.when][:AUTO_GP_MAX_PARAMS]
        small = Space(name="default-12", source="default-12", description="", fixed=default.fixed,
                      params={n: default.params[n] for n in unconditional})
        out[f"default, first {len(small.params)} ({len(small.params)})"] = small
    out[f"default ({len(default.params)})"] = default
    return out


def objective(config: dict) -> float:
    """A smooth synthetic score of a config: numbers near a third of their range, some choices better."""
    score = 0.0
    for value in config.values():
        if isinstance(value, bool):
            score += 0.1 * value
        elif isinstance(value, (int, float)):
            score -= (math.log1p(abs(value)) - 0.3) ** 2
        elif isinstance(value, str):
            score += 0.05 * (sum(map(ord, value)) % 3)
    return score


def seconds_per_suggestion(space: Space, sampler_name: str, trials: int, seed: int) -> list[float]:
    """Seconds of ask + suggest + tell of each trial of a fresh in-memory study."""
    sampler = make_sampler(sampler_name, seed, n_objectives=1, n_params=len(space.params))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    times = []
    for _ in range(trials):
        started = time.perf_counter()
        trial = study.ask()
        config = space.suggest(trial)
        study.tell(trial, objective(config))
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(
        __doc__, quick="50 trials, two spaces (about a minute)",
        smoke="12 trials, two spaces (seconds, tests)")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 200)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(1)
    trials = args.trials or (12 if args.smoke else 50 if args.quick else 200)
    windows = [w for w in WINDOWS if w[1] <= trials] or [(max(1, trials - 9), trials)]

    rows = []
    worst_auto = 0.0
    for space_name, space in spaces(args.quick or args.smoke).items():
        samplers = ["auto", "tpe"] + (["gp"] if len(space.params) > AUTO_GP_MAX_PARAMS else [])
        for name in samplers:
            times = seconds_per_suggestion(space, name, trials, seed=0)
            per_window = [1000 * sum(times[a - 1:b]) / (b - a + 1) for a, b in windows]
            picked = type(make_sampler(name, 0, n_params=len(space.params))).__name__
            rows.append([space_name, f"{name} ({picked})", *per_window, sum(times)])
            if name == "auto":
                worst_auto = max(worst_auto, per_window[-1])
    print(f"seconds per suggestion (ask + Space.suggest + tell), {trials} trials per study, synthetic "
          f"objective, torch threads 1")
    print(machine_line())
    print(table(["space (searched params)", "sampler", *[f"ms/trial at {a}-{b}" for a, b in windows],
                 "total s"], rows))
    print(result_line("sampler_cost", f"auto's slowest suggestion window (trials {windows[-1][0]}-"
                                      f"{windows[-1][1]}): {worst_auto:.0f} ms per trial"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
