"""Transfer on these machines (no ImageNet offline): fine-tuning from a source task vs training from scratch.

Source task: mnist5k digits 0-4. A ResNet-18 (cnnsearch's backbone: upsampled to 32x32) is
trained on it and its weights saved exactly as torchvision publishes them (the state dict
of the unmodified model: a 3-channel first conv, a 1000-class output layer), so the target
side loads them through ``pretrained: true, weights_path: ...`` as it would ImageNet's.
Target task: digits 5-9, with 30 training images per class; validation and test images
are other 5-9 digits of mnist5k. Both sides search the target with the same budget
(Optuna TPE, the same number of trials, the same epochs); the fine-tuning side also
searches what to freeze and the body's learning rate. Reported per seed: the test
accuracy of each side's best trial (chosen on validation), then the medians.

    python benchmarks/transfer.py            # 3 seeds x 8 trials per side (about 25 min on 2 cores)
    python benchmarks/transfer.py --quick    # 1 seed x 3 trials
    python benchmarks/transfer.py --smoke    # 1 seed x 1 trial, tiny sizes: seconds, for the tests
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path[0] = str(ROOT)  # benchmarks/spaces/ would shadow the `spaces` package

from benchmarks.common import machine_line, median, parser_with_modes, result_line, table  # noqa: E402

PER_CLASS = 30
"""Target training images per class."""

TARGET_SPACE: dict[str, Any] = {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                                "optimizer": "sgd", "batch_size": 32}
FINETUNE_SPACE: dict[str, Any] = {**TARGET_SPACE, "freeze": {"type": "categorical", "choices": ["none", "body"]},
                                  "body_lr_mult": {"type": "float", "low": 0.05, "high": 1.0, "log": True}}


def _subset(images, labels, index, relabel: int):
    """``TrialData`` pieces: uint8 images and labels (shifted by ``relabel``) at ``index``."""
    return images[index], labels[index] - relabel


def _data(train, val, classes: int):
    """A :class:`TrialData` on the CPU from (x, y) pairs, normalised with the training part's statistics."""
    from search.trial.data import TrialData

    x = train[0].float() / 255
    mean, std = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1), x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    return TrialData(train_x=train[0], train_y=train[1], val_x=val[0], val_y=val[1], mean=mean, std=std,
                     classes=[str(c) for c in range(classes)], input_shape=tuple(train[0].shape[1:]),
                     num_classes=classes)


def split_tasks(seed: int, per_class: int, held: int):
    """(source train, source val, target train, target val, target test) of mnist5k, drawn with ``seed``."""
    import torch

    from search.trial.datasets import load_dataset

    images = load_dataset("mnist5k")
    x, y = images.images, images.labels
    g = torch.Generator().manual_seed(seed)
    source = torch.nonzero(y < 5).flatten()
    source = source[torch.randperm(len(source), generator=g)]
    cut = len(source) * 9 // 10
    parts = [_subset(x, y, source[:cut], 0), _subset(x, y, source[cut:], 0)]
    train, val, test = [], [], []
    for digit in range(5, 10):
        rows = torch.nonzero(y == digit).flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        train.append(rows[:per_class])
        val.append(rows[per_class:per_class + held])
        test.append(rows[per_class + held:])
    parts += [_subset(x, y, torch.cat(rows), 5) for rows in (train, val, test)]
    return parts


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
                                    "input_size": 32, "epochs": epochs, "lr": 0.01, "optimizer": "sgd",
                                    "batch_size": 64, "seed": 0})
    model, metrics = fit(config, _data(source_train, source_val, 5), "cpu", measure=False)
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

    parsed = parse_space({"params": {**space, "model": "resnet18", "epochs": epochs, "seed": seed}}, "transfer")
    best: tuple[float, float] = (-1.0, 0.0)

    def objective(trial: optuna.Trial) -> float:
        nonlocal best
        model, metrics = fit(parsed.suggest(trial), data, "cpu", measure=False)
        if metrics.val_accuracy > best[0]:
            best = (metrics.val_accuracy, evaluate(model, data, test[0], test[1])[0])
        return metrics.val_accuracy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)).optimize(
        objective, n_trials=trials)
    return best[1]


def main() -> int:
    parser, _ = parser_with_modes(__doc__, quick="1 seed x 3 trials", smoke="1 seed x 1 trial on tiny sizes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8, help="trials per side and seed")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    seeds, trials, pre_epochs, epochs, per_class, held = args.seeds, args.trials, 3, 6, PER_CLASS, 60
    if args.quick:
        seeds, trials = 1, 3
    if args.smoke:
        seeds, trials, pre_epochs, epochs, per_class, held = 1, 1, 1, 1, 4, 4
    print(machine_line())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            source_train, source_val, target_train, target_val, test = split_tasks(seed, per_class, held)
            if args.smoke:
                source_train = (source_train[0][:256], source_train[1][:256])
                test = (test[0][::len(test[1]) // 64], test[1][::len(test[1]) // 64])  # every class
            weights = Path(tmp) / f"resnet18-source-{seed}.pth"
            source_acc = pretrain(source_train, source_val, pre_epochs, weights)
            data = _data(target_train, target_val, 5)
            finetune_space = {**FINETUNE_SPACE, "pretrained": True, "weights_path": str(weights), "input_size": 32}
            scratch = search(TARGET_SPACE, data, test, trials, epochs, seed)
            tuned = search(finetune_space, data, test, trials, epochs, seed)
            rows.append([seed, source_acc, scratch, tuned, tuned - scratch])
            print(f"seed {seed}: source val {source_acc:.3f}, scratch test {scratch:.3f}, fine-tuned test "
                  f"{tuned:.3f}", file=sys.stderr, flush=True)
    rows.append(["median", median([r[1] for r in rows]), median([r[2] for r in rows]),
                 median([r[3] for r in rows]), median([r[4] for r in rows])])
    print(table(["seed", "source val acc", "scratch test acc", "fine-tuned test acc", "gain"], rows))
    med = rows[-1]
    print(result_line("transfer", f"fine-tuned {med[3]:.3f} vs scratch {med[2]:.3f} test accuracy "
                                  f"({per_class}/class, {trials} trials x {epochs} epochs, {seeds} seed(s))"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
