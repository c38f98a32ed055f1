"""`cnnsearch export` and `cnnsearch train`: a study's trial as a recipe, and a model retrained from one."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.cli.flags import NON_NEGATIVE_INT, POSITIVE_INT, Command, download_weights_arg, storage_arg, study_arg


def add_export_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
    p.add_argument("--out", required=True, help="directory for recipe.yaml|json, weights.pt and README.md")
    p.add_argument("--trial", type=NON_NEGATIVE_INT, help="trial number (default: the best completed trial)")
    p.add_argument("--format", default="yaml", choices=("yaml", "json"), help="recipe format (default yaml)")
    p.add_argument("--data-dir", help="where this machine keeps the study's torchvision dataset")
    p.add_argument("--no-weights", action="store_true", help="leave the trial's kept checkpoint out")
    return cmd_export


def cmd_export(args: argparse.Namespace) -> int:
    from search.results.recipe import export_recipe
    from storage import resolve_storage_url

    files = export_recipe(resolve_storage_url(args.storage), args.study, args.out, trial=args.trial,
                          fmt=args.format, data_dir=args.data_dir, weights=not args.no_weights)
    for path in files:
        print(f"wrote {path}")
    return 0


def add_train_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--config", required=True, metavar="RECIPE", help="a recipe written by `cnnsearch export`")
    p.add_argument("--data-dir", help="where this machine keeps the recipe's torchvision dataset")
    download_weights_arg(p)
    p.add_argument("--out", help="directory for weights.pt and metrics.json (default: cnnsearch-train/STUDY-trialN/, "
                                 "with --final cnnsearch-train/STUDY-trialN-final/)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default: replays a trial that ran on the CPU exactly; one that ran on a GPU only "
                        "approximately) | auto | cuda | cuda:N")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (the default for a recipe from a `run --deterministic` study): "
                        "on the GPU model a trial ran on, it is then replayed exactly")
    p.add_argument("--threads", type=POSITIVE_INT, help="CPU threads (default: as many as the trial used)")
    p.add_argument("--final", action="store_true",
                   help="train on train+val and report test accuracy, instead of reproducing the trial on val")
    return cmd_train


def cmd_train(args: argparse.Namespace) -> int:
    from search.results.recipe import load_recipe, save_trained, train_recipe
    from search.trial.device import resolve_device, use_deterministic_kernels
    from storage.names import check_study_name

    recipe = load_recipe(args.config)
    prov = recipe.get("provenance") or {}
    # A final retrain is another model than the trial's: it gets its own folder, so neither replaces the other.
    if args.out:
        out = Path(args.out)
    else:  # the recipe's study name becomes a folder name: refused if it would be a path
        study = check_study_name(str(prov.get("study", "recipe")))
        out = Path("cnnsearch-train") / f"{study}-trial{prov.get('trial', '')}{'-final' if args.final else ''}"
    device = resolve_device(args.device)
    if args.deterministic or prov.get("deterministic"):
        use_deterministic_kernels()
    stage = "final" if args.final else "search"
    model, metrics = train_recipe(recipe, data_dir=args.data_dir, device=device, stage=stage, threads=args.threads)
    # In the final stage the held-out part the trainer calls "val" is the test split.
    split, evaluated_on = ("test", "test (trained on train+val)") if args.final else ("val", "val (trained on train)")
    files = save_trained(model, metrics, out, split=split, evaluated_on=evaluated_on)
    acc = metrics.val_accuracy
    if args.final:
        print(f"trained on train+val in {metrics.train_seconds:.1f} s on {device}: test accuracy {acc:.4f}")
    else:
        recorded = (recipe.get("metrics") or {}).get("val_accuracy")
        verdict = ""
        if isinstance(recorded, float):
            verdict = (" (the trial's, exactly)" if acc == recorded
                       else f" (the trial had {recorded:.4f}: {acc - recorded:+.4f})")
        print(f"retrained trial #{prov.get('trial')} of study {prov.get('study')!r} in "
              f"{metrics.train_seconds:.1f} s on {device}: val accuracy {acc:.4f}{verdict}")
        if caveat := replay_caveat(prov.get("trained_on"), str(device), bool(prov.get("deterministic"))):
            print(caveat)
    for path in files:
        print(f"wrote {path}")
    return 0


def replay_caveat(trained_on: str | None, device: str, deterministic: bool) -> str | None:
    """Why retraining on ``device`` cannot match a trial that ran on a GPU; None when it can."""
    if not trained_on or not trained_on.startswith("cuda"):
        return None
    exact = "the same GPU model with --device cuda, for a trial of a study run with --deterministic"
    if not device.startswith("cuda"):
        return (f"note: the trial ran on {trained_on}; a replay on {device} matches it only approximately "
                f"(other kernels, other random streams); it replays exactly only on {exact}")
    if not deterministic:
        return (f"note: the trial ran on {trained_on} with nondeterministic GPU kernels; a replay matches it only "
                f"approximately; it replays exactly only on {exact}")
    return None
