"""One benchmark on two versions of the code: a base commit and the working tree, alternately.

A refactor should leave the figures where they were; on shared machines whose speed drifts
from minute to minute, that can only be seen side by side. This runs ``benchmarks/NAME.py``
from a temporary git worktree of ``--base`` and from this checkout, in alternating order
(base, here, here, base, ...), with the same interpreter and arguments, and prints each
run's ``RESULT`` line, then all of them in one table.

    python benchmarks/ab.py overhead --base 7a8c23a --rounds 2
    python benchmarks/ab.py train_throughput --base HEAD~1 -- --quick    # the benchmark's own flags after --
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script, sys.path[0] is benchmarks/: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import machine_line, short_rev, table, worktree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(tree: Path, name: str, args: list[str]) -> str:
    """The ``RESULT`` line of ``benchmarks/NAME.py`` run from ``tree`` (its own imports: sys.path[0] is its root)."""
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / f"{name}.py"), *args], cwd=tree,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed in {tree}: {done.stderr.strip().splitlines()[-1:]}")
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return results[-1].split(":", 1)[1].strip() if results else "(no RESULT line)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="benchmark script name, e.g. overhead")
    parser.add_argument("--base", default="HEAD", help="the commit to compare with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each version (default 2)")
    argv = sys.argv[1:] if argv is None else argv
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.args = passed
    rev = short_rev(ROOT, args.base)
    results: dict[str, list[str]] = {rev: [], "working tree": []}
    with worktree(ROOT, rev) as base:
        for i in range(args.rounds):
            order = [(rev, base), ("working tree", ROOT)]
            for label, tree in order if i % 2 == 0 else order[::-1]:
                results[label].append(run(tree, args.name, args.args))
                print(f"{label}: {results[label][-1]}", flush=True)
    print(f"\n{args.name} {' '.join(args.args)}: {rev} vs the working tree, {args.rounds} runs each, alternating")
    print(machine_line())
    print(table(["version", *(f"run {i + 1}: RESULT" for i in range(args.rounds))],
                [[label, *lines] for label, lines in results.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
