"""Does ``--cv`` pick better configs on small data? The same search with and without k-fold CV, judged on test.

For each dataset and seed, two studies run the same search (same space, sampler, seed and
split; pruner ``none``, so both finish every trial): one judges configs on the single val
split, the other by ``--cv K`` over train + val. Each study's top ``--top`` configs are then
retrained as the final evaluation does (on train + val, their own seeds) and measured on the
test split, which neither search saw. Reported per variant, over the seeds: the Spearman rank
correlation between search value and test accuracy among its top configs (does the search
order them as the test does?), the test accuracy of the config the study picks (its best
value), and the search's wall time. ``mnist5k:1000`` is MNIST-5k cut to 1,000 images,
stratified (100 of each class).

    python benchmarks/cv_selection.py              # digits and mnist5k:1000, 3 seeds, 20 trials, top 10, --cv 5
    python benchmarks/cv_selection.py --quick      # digits, 1 seed, 8 trials, top 4, --cv 3 (a few minutes)
    python benchmarks/cv_selection.py --smoke      # digits, 1 seed, 3 trials, top 2, --cv 2 (seconds, for tests)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # benchmarks/spaces/ would shadow `spaces`

from benchmarks.common import machine_line, parser_with_modes, result_line, table  # noqa: E402
from search.study.spec import StudySpec, create_or_resume, fill_budget  # noqa: E402
from search.study.worker import WorkerSettings, worker_loop  # noqa: E402
from search.trial.data import make_split, prepare_data  # noqa: E402
from search.trial.datasets import ImageSet, load_dataset  # noqa: E402
from search.trial.train import train  # noqa: E402
from spaces import Space, load_space  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402
from storage import open_storage  # noqa: E402
from storage.records import CONFIG  # noqa: E402


def dataset(name: str) -> ImageSet:
    """A dataset by name; ``NAME:N`` is a stratified, seeded N of its images (MNIST-5k is sorted by class)."""
    from sklearn.model_selection import train_test_split

    base, _, count = name.partition(":")
    images = load_dataset(base)
    if not count:
        return images
    keep, _ = train_test_split(np.arange(len(images.labels)), train_size=int(count), random_state=0,
                               stratify=images.labels.numpy())
    index = torch.from_numpy(np.sort(keep))
    return ImageSet(name, images.images[index].contiguous(), images.labels[index], images.classes)


def search(images: ImageSet, space: Space, seed: int, trials: int, cv: int | None, folder: Path) -> optuna.Study:
    """One study of ``trials`` trials on ``images`` (split with ``seed``), judged by ``cv`` folds or by val."""
    spec = StudySpec(space=space, dataset=images.name.partition(":")[0], sampler="tpe", pruner="none", seed=seed,
                     split_seed=seed, budget=trials, cv=cv)
    url = f"sqlite:///{folder / f'cv{cv}-seed{seed}.db'}"
    study = create_or_resume(open_storage(url), "s", spec)
    fill_budget(study, spec)
    data = prepare_data(images, make_split(images.labels, seed=seed, cv=cv), "cpu")
    worker_loop(url, "s", WorkerSettings(device="cpu", parallel=False), data=data)
    return study


def test_accuracies(study: optuna.Study, images: ImageSet, seed: int, top: int) -> list[tuple[float, float]]:
    """(search value, test accuracy after retraining on train + val) of the study's ``top`` best configs."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = sorted(done, key=lambda t: (-t.value, t.number))[:top]
    final = prepare_data(images, make_split(images.labels, seed=seed), "cpu", stage="final")
    out = []
    for t in best:
        config = TrialConfig.from_dict(t.user_attrs[CONFIG])
        out.append((t.value, train(config, final, "cpu", measure=False).val_accuracy))
    return out


def spearman(pairs: list[tuple[float, float]]) -> float:
    """Spearman's rank correlation of the pairs (NaN when either side is constant or too short)."""
    from scipy.stats import spearmanr

    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return float("nan")
    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser, _ = parser_with_modes(__doc__, quick="digits, 1 seed, 8 trials, top 4, --cv 3",
                                  smoke="digits, 1 seed, 3 trials, top 2, --cv 2, one epoch")
    parser.add_argument("--datasets", default="digits,mnist5k:1000")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--space", default="tiny")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.trials, args.top, args.cv = "digits", 1, 8, 4, 3
    if args.smoke:
        args.datasets, args.seeds, args.trials, args.top, args.cv = "digits", 1, 3, 2, 2
    space = load_space(args.space)
    if args.smoke:
        space = Space(name="tiny-1", source="tiny-1", description="", params=dict(space.params),
                      fixed={**space.fixed, "epochs": 1})
        space.params.pop("epochs", None)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(machine_line())
    print(f"space {args.space}, {args.trials} trials (TPE, no pruner), top {args.top} retrained on train + val, "
          f"measured on test; {args.seeds} seed(s)")
    rows, picked_gain = [], []
    for name in args.datasets.split(","):
        images = dataset(name)
        results: dict[str, dict[str, list[float]]] = {}
        for seed in range(args.seeds):
            for cv in (None, args.cv):
                label = f"--cv {cv}" if cv else "val split"
                with tempfile.TemporaryDirectory() as folder:
                    started = time.perf_counter()
                    study = search(images, space, seed, args.trials, cv, Path(folder))
                    seconds = time.perf_counter() - started
                    pairs = test_accuracies(study, images, seed, args.top)
                got = results.setdefault(label, {"rho": [], "picked": [], "top": [], "seconds": []})
                got["rho"].append(spearman(pairs))
                got["picked"].append(pairs[0][1] if pairs else float("nan"))  # none completed: nothing picked
                got["top"].append(statistics.fmean(b for _, b in pairs) if pairs else float("nan"))
                got["seconds"].append(seconds)
                print(f"{name} seed {seed}, {label}: Spearman {got['rho'][-1]:.3f}, picked config's test accuracy "
                      f"{got['picked'][-1]:.3f}, search {seconds:.0f} s", flush=True)
        for label, got in results.items():
            rows.append([name, label, mean_std(got["rho"]), mean_std(got["picked"]), mean_std(got["top"]),
                         f"{statistics.fmean(got['seconds']):.0f}"])
        picked_gain += [b - a for a, b in zip(*(results[k]["picked"] for k in results), strict=True)]
    print(table(["dataset", "judged by", "Spearman (value vs test, top)", "picked config: test acc",
                 "top configs: mean test acc", "search s"], rows))
    print(result_line("cv_selection", f"picked config's test accuracy, --cv {args.cv} minus val split: "
                                      f"{mean_std(picked_gain)} over {len(picked_gain)} dataset-seed(s)"))


if __name__ == "__main__":
    main()
