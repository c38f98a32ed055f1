"""How much slower an epoch do networks drawn from the ``auto`` space train than its median network?

What rule 6 of ``spaces/derive.py`` rests on: the epoch range is sized by a typical trial's
pace, and a study's first trials are drawn from the whole space (Optuna's random sampler),
where attention, HOG fusion, 5-px kernels, wider networks and smaller batches make an epoch
slower than the plain median network's (the start point). Each draw and the median network
are timed as ``cnnsearch run`` times them (``search.study.auto_space.epoch_seconds``: training
steps and a val batch on the real training images, scaled to the split), with the full 5
timing windows here; FLOPs per image come from torch's counter, to show whether a count could
stand in for the timing. One process, torch threads 2 (a worker's on a 2-core machine).

    python benchmarks/draw_pace.py                  # mnist5k, 20 draws (about a minute)
    python benchmarks/draw_pace.py --quick          # digits, 8 draws
    python benchmarks/draw_pace.py --dataset digits --draws 40 --seed 3
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # benchmarks/spaces/ would shadow `spaces`

from benchmarks.common import machine_line, parser_with_modes, result_line, table  # noqa: E402
from search.study.auto_space import data_facts, drawn_configs, epoch_seconds  # noqa: E402
from search.trial.data import make_split  # noqa: E402
from search.trial.datasets import load_dataset  # noqa: E402
from search.trial.measure import count_flops  # noqa: E402
from search.trial.models import build_model  # noqa: E402
from spaces.derive import Budget, derive_space, median_network  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(__doc__, quick="digits, 8 draws", smoke="digits, 3 draws (seconds, tests)")
    parser.add_argument("--dataset", default=None, help="dataset to time on (default mnist5k; digits with --quick)")
    parser.add_argument("--draws", type=int, default=None, help="networks drawn from the space (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    args = parser.parse_args(argv)
    short = args.quick or args.smoke
    dataset = args.dataset or ("digits" if short else "mnist5k")
    draws = args.draws or (3 if args.smoke else 8 if args.quick else 20)
    torch.set_num_threads(2)
    cpu = torch.device("cpu")

    images = load_dataset(dataset)
    split = make_split(images.labels, seed=0)
    facts = data_facts(images, split)
    shape = tuple(int(n) for n in images.images.shape[1:])
    classes = len(images.classes)
    median = TrialConfig.from_dict(median_network(facts), where="median network")
    median_seconds = epoch_seconds(median, images, split, cpu)
    median_flops = count_flops(build_model(median, shape, classes), shape)
    # The budget only sets the epoch range, which no per-epoch timing depends on.
    space = derive_space(facts, Budget(seconds=180.0, trials=None, workers=1, epoch_seconds=median_seconds,
                                       measured_on="cpu")).space
    rows, time_ratios, flop_ratios = [], [], []
    for number, config in enumerate(drawn_configs(space, draws, args.seed)):
        seconds = epoch_seconds(config, images, split, cpu)
        flops = count_flops(build_model(config, shape, classes), shape)
        time_ratios.append(seconds / median_seconds)
        flop_ratios.append(flops / median_flops)
        rows.append([number, f"{seconds:.3g}", f"{time_ratios[-1]:.2f}x", f"{flop_ratios[-1]:.2f}x", config.batch_size,
                     config.depth, config.width, config.kernel, config.attention, config.hog])
    print(f"{dataset}: seconds per epoch of {draws} networks drawn from the auto space (seed {args.seed}) against "
          f"its median network ({median_seconds:.3g} s an epoch, {median_flops / 1e6:.2f} MFLOP an image), "
          "torch threads 2")
    print(machine_line())
    print(table(["draw", "s/epoch", "x median's time", "x median's FLOPs", "batch", "depth", "width", "kernel",
                 "attention", "hog"], rows))
    rank_corr = spearmanr(time_ratios, flop_ratios).statistic if draws > 2 else float("nan")
    print(result_line("draw_pace", f"{dataset}: a drawn network trains an epoch in a median "
                                   f"{statistics.median(time_ratios):.2f}x the median network's time "
                                   f"({min(time_ratios):.2f}-{max(time_ratios):.2f}x); FLOPs "
                                   f"{statistics.median(flop_ratios):.2f}x ({min(flop_ratios):.2f}-"
                                   f"{max(flop_ratios):.2f}x), rank correlation with time {rank_corr:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
