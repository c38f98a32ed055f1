"""`cnnsearch report`: a study's report, with an optional final evaluation on the test split."""

from __future__ import annotations

import argparse
import sys

from search.cli.flags import NON_NEGATIVE_INT, POSITIVE_INT, Command, storage_arg, study_arg


def add_report_args(p: argparse.ArgumentParser) -> Command:
    study_arg(p)
    storage_arg(p)
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
    from storage import mask_url, open_storage, resolve_storage_url
    from storage.studies import load_study

    url = resolve_storage_url(args.storage)
    study = load_study(open_storage(url, heartbeat_interval=None, read_only=True), args.study)
    out = check_out_dir(args.out or default_out_dir(args.study), args.study)
    final = None
    if args.final_eval:
        from search.results.final_eval import final_evaluation

        print(f"final evaluation: retraining the top {args.final_eval} config(s) with {args.seeds} seed(s) each",
              file=sys.stderr)
        final = final_evaluation(study, args.final_eval, args.seeds, device=args.device, data_dir=args.data_dir,
                                 on_run=lambda r: print(f"  trial #{r['trial']} seed {r['seed']}: test accuracy "
                                                        f"{r['accuracy']:.4f}", file=sys.stderr))
    out = write_report(study, out, final_eval=final, top_k=args.top, storage_label=mask_url(url))
    print(f"report: {out / 'index.html'}  (also summary.md, trials.csv)")
    return 0
