"""`cnnsearch report`, `export` and `train`: from a study to a report, a recipe, and a retrained model.

Registered with :func:`search.cli.command`; heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.cli import NON_NEGATIVE_INT, POSITIVE_INT, Command, _storage_arg, command


@command("report", "write a study's report: DIR/index.html (self-contained), summary.md, trials.csv")
def _report_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--out", help="report directory (default: cnnsearch-reports/STUDY/ under the working directory)")
    p.add_argument("--top", type=POSITIVE_INT, default=10, help="rows of the top-trials table (default 10)")
    p.add_argument("--final-eval", type=NON_NEGATIVE_INT, default=0, metavar="K",
                   help="retrain the top K configs on train+val and evaluate them on the test split")
    p.add_argument("--seeds", type=POSITIVE_INT, default=3, metavar="S",
                   help="seeds per config in --final-eval (default 3)")
    p.add_argument("--device", default="auto", help="device of --final-eval: auto|cpu|cuda|cuda:N")
    p.add_argument("--data-dir", help="where this machine keeps the study's torchvision dataset (--final-eval)")
    return cmd_report


def cmd_report(args: argparse.Namespace) -> int:
    from reports.report import check_out_dir, default_out_dir, write_report
    from reports.summary import load_study
    from storage import mask_url, open_storage, resolve_storage_url

    url = resolve_storage_url(args.storage)
    study = load_study(open_storage(url, heartbeat_interval=None), args.study)
    out = check_out_dir(args.out or default_out_dir(args.study))
    final = None
    if args.final_eval:
        from search.final_eval import final_evaluation

        print(f"final evaluation: retraining the top {args.final_eval} config(s) with {args.seeds} seed(s) each",
              file=sys.stderr)
        final = final_evaluation(study, args.final_eval, args.seeds, device=args.device, data_dir=args.data_dir,
                                 on_run=lambda r: print(f"  trial #{r['trial']} seed {r['seed']}: test accuracy "
                                                        f"{r['accuracy']:.4f}", file=sys.stderr))
    out = write_report(study, out, final_eval=final, top_k=args.top, storage_label=mask_url(url))
    print(f"report: {out / 'index.html'}  (also summary.md, trials.csv)")
    return 0


@command("export", "export a trial (default: the best) as a recipe for a training repo")
def _export_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--out", required=True, help="directory for recipe.yaml|json, weights.pt and README.md")
    p.add_argument("--trial", type=NON_NEGATIVE_INT, help="trial number (default: the best completed trial)")
    p.add_argument("--format", default="yaml", choices=("yaml", "json"), help="recipe format (default yaml)")
    p.add_argument("--data-dir", help="where this machine keeps the study's torchvision dataset")
    p.add_argument("--no-weights", action="store_true", help="leave the trial's kept checkpoint out")
    return cmd_export


def cmd_export(args: argparse.Namespace) -> int:
    from search.recipe import export_recipe
    from storage import resolve_storage_url

    files = export_recipe(resolve_storage_url(args.storage), args.study, args.out, trial=args.trial,
                          fmt=args.format, data_dir=args.data_dir, weights=not args.no_weights)
    for path in files:
        print(f"wrote {path}")
    return 0


@command("train", "retrain a model from an exported recipe (same data, split and seed)")
def _train_args(p: argparse.ArgumentParser) -> Command:
    p.add_argument("--config", required=True, metavar="RECIPE", help="a recipe written by `cnnsearch export`")
    p.add_argument("--data-dir", help="where this machine keeps the recipe's torchvision dataset")
    p.add_argument("--out", help="directory for weights.pt and metrics.json (default: cnnsearch-train/STUDY-trialN/)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default: reproduces the trial exactly) | auto | cuda | cuda:N")
    p.add_argument("--threads", type=POSITIVE_INT, help="CPU threads (default: as many as the trial used)")
    p.add_argument("--final", action="store_true",
                   help="train on train+val and report test accuracy, instead of reproducing the trial on val")
    return cmd_train


def cmd_train(args: argparse.Namespace) -> int:
    from search.recipe import load_recipe, save_trained, train_recipe
    from search.worker import resolve_device

    recipe = load_recipe(args.config)
    prov = recipe.get("provenance") or {}
    default_out = Path("cnnsearch-train") / f"{prov.get('study', 'recipe')}-trial{prov.get('trial', '')}"
    out = Path(args.out) if args.out else default_out
    device = resolve_device(args.device)
    stage = "final" if args.final else "search"
    model, metrics = train_recipe(recipe, data_dir=args.data_dir, device=device, stage=stage, threads=args.threads)
    # In the final stage the held-out part the trainer calls "val" is the test split.
    metrics["evaluated_on"] = "test (trained on train+val)" if args.final else "val (trained on train)"
    files = save_trained(model, metrics, out)
    acc = metrics["val_accuracy"]
    if args.final:
        print(f"trained on train+val in {metrics['train_seconds']:.1f} s on {device}: test accuracy {acc:.4f}")
    else:
        recorded = (recipe.get("metrics") or {}).get("val_accuracy")
        verdict = ""
        if isinstance(recorded, float):
            verdict = (" (the trial's, exactly)" if acc == recorded
                       else f" (the trial had {recorded:.4f}: {acc - recorded:+.4f})")
        print(f"retrained trial #{prov.get('trial')} of study {prov.get('study')!r} in "
              f"{metrics['train_seconds']:.1f} s on {device}: val accuracy {acc:.4f}{verdict}")
    for path in files:
        print(f"wrote {path}")
    return 0
