"""Run every benchmark script in benchmarks/ and print one table of their results.

Each script runs in its own process (its own torch threads and memory), with ``--quick``
(the short version: all of them together in under 5 minutes on 2 cores) or ``--smoke``
(seconds, for tests), or in full without either. A script reports its headline in a line
``RESULT <name>: <summary>`` (``benchmarks.common.result_line``); from a script that prints
none, the last line of its output is shown. A script without the asked-for mode (its source
never mentions ``"--quick"``/``"--smoke"`` and does not build its parser with
``benchmarks.common.parser_with_modes``) is listed as skipped rather than run in full.
Scripts are found by name: every ``benchmarks/*.py`` except this runner, ``common.py``, ``ab.py``
(which runs one of the others on two versions of the code) and ``search_ab.py`` (one search on two
versions: a comparison of commits, not a figure of this one).

    python benchmarks/run_all.py --quick
    python benchmarks/run_all.py --quick --only nasbench201,overhead --show-output
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import machine_line, parser_with_modes, table  # noqa: E402

HERE = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run_all", "common", "ab", "search_ab", "__init__"}
ORDER = ("train_throughput", "overhead", "storage_overhead", "time_to_accuracy", "sampler_cost", "nasbench201")
"""Preferred order (cheap and machine-bound first); scripts not named here run after, by name."""


def benchmark_scripts(folder: Path = HERE) -> list[str]:
    """The benchmark names (file stems) in ``folder``, in :data:`ORDER` first."""
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem not in NOT_BENCHMARKS and not p.stem.startswith("_"))
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def run_script(name: str, mode: str | None, timeout: float, show_output: bool) -> tuple[str, float, str]:
    """Run one benchmark; return (status, seconds, headline)."""
    script = HERE / f"{name}.py"
    text = script.read_text(encoding="utf-8")
    if mode and f'"--{mode}"' not in text and "parser_with_modes(" not in text:
        return f"skipped (no --{mode})", 0.0, ""
    command = [sys.executable, str(script), *([f"--{mode}"] if mode else [])]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        if show_output:
            print(output, flush=True)
        return f"timeout ({timeout:g} s)", time.perf_counter() - started, _headline(name, output)
    seconds = time.perf_counter() - started
    if show_output:
        print(f"\n### {name} ({seconds:.0f} s)\n{done.stdout}{done.stderr}", flush=True)
    if done.returncode != 0:
        last_error = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        return f"failed (exit {done.returncode})", seconds, last_error.strip()
    return "ok", seconds, _headline(name, done.stdout)


def _headline(name: str, output: str) -> str:
    results = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("RESULT ")]
    if results:
        return "; ".join(results)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(
        __doc__, quick="each script's short version (under 5 minutes in all)",
        smoke="each script's seconds-long version (tests)")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all in benchmarks/)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per script (default 600)")
    parser.add_argument("--show-output", action="store_true", help="print each script's own output too")
    args = parser.parse_args(argv)

    available = benchmark_scripts()
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else available
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        parser.error(f"--only: unknown benchmark {unknown or args.only!r}; available: {', '.join(available)}")
    run_mode = "quick" if args.quick else "smoke" if args.smoke else None

    rows = []
    started = time.perf_counter()
    for name in names:
        status, seconds, headline = run_script(name, run_mode, args.timeout, args.show_output)
        rows.append([name, status, f"{seconds:.0f}", headline])
    print(f"\nbenchmarks ({run_mode or 'full'}), {time.perf_counter() - started:.0f} s in all")
    print(machine_line())
    print(table(["benchmark", "status", "seconds", "result"], rows))
    return 0 if all(row[1] == "ok" or row[1].startswith("skipped") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
