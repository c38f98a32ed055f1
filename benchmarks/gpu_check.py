"""The GPU check: what a first run on a GPU machine must show, in one table and a RESULT line.

Rows (each ``ok`` or ``FAIL`` with its figures):

- the device: name, compute capability and the AMP dtype the trainer picks for it;
- ``--device cuda`` and ``--device cuda:0``: a one-trial study each (``cuda`` without an index
  crashed in ``torch.cuda.set_device``); on a machine without a GPU, ``cuda`` is refused in one line;
- one trial of the default config on mnist5k, and an airbench-shaped config on synthetic uint8
  tensors shaped like CIFAR-10 (50,000 x 3 x 32 x 32 on a GPU): ``train`` img/s against a plain
  loop with the same model, optimizer, AMP and batched augmentation, interleaved in the same run
  (goal >= 0.95x), and seconds per epoch next to airbench's published 3.09 s for ~10 epochs to
  94 % on one A100 (random labels here: the figure is speed, not accuracy);
- a forced out-of-memory trial: the allocator capped at 2 GiB for the check
  (``torch.cuda.set_per_process_memory_fraction``, as when another process takes the card's memory
  after the trial's memory check) and a config the check lets through (~8 GiB estimated): PRUNED
  with reason ``oom``, and the next trial in the same worker completes, with the failed one's
  memory given back;
- ``cnnsearch run --jobs 2`` on one GPU and ``--backend ray --workers 2 --gpus-per-trial 0.5``:
  both finish their budget, every trial records its device, and each worker's peak memory
  (``nvidia-smi``, polled) is shown.

Without a GPU it says "no GPU" and runs the rows that need none, so it cannot rot (CI's smoke
test runs it). At most about 6 minutes on one GPU; no network, no data beyond mnist5k.

``--ablate`` runs instead where ``train``'s time goes that the plain loop's does not: ``train``
without each of its extras in turn (the FLOP count, the learning-rate schedule, the finiteness
checks), and with fine-tuning's two parameter groups (head and body) where it has one, interleaved
with the plain loop, in microseconds a step. On a GPU the default config (launch-bound: the host
side of a step counts); on a CPU a tiny one (width 2, batch 16), where the model's arithmetic is
too small to hide the loop's own cost.

    python benchmarks/gpu_check.py            # on a GPU machine
    python benchmarks/gpu_check.py --smoke    # seconds: the rows a CPU can run, tiny sizes
    python benchmarks/gpu_check.py --ablate   # the loop's extras, one at a time
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import interleaved, machine_line, median, parser_with_modes, result_line, table  # noqa: E402
from search.study.local import run_study  # noqa: E402
from search.study.spec import StudySpec  # noqa: E402
from search.trial import train as train_module  # noqa: E402
from search.trial.augment import Augmenter  # noqa: E402
from search.trial.data import TrialData, make_split, prepare_data  # noqa: E402
from search.trial.datasets import load_dataset  # noqa: E402
from search.trial.device import amp_dtype_for  # noqa: E402
from search.trial.errors import CnnSearchError  # noqa: E402
from search.trial.finetune import param_groups  # noqa: E402
from search.trial.memory import eval_batch_size  # noqa: E402
from search.trial.models import build_model  # noqa: E402
from search.trial.train import EVAL_BATCH, make_optimizer, train  # noqa: E402
from spaces import parse_space  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.95
AIRBENCH_SECONDS, AIRBENCH_EPOCHS = 3.09, 10  # airbench94, one A100 (Keller Jordan, 2024)
MIB = 2**20

AIRBENCH_SHAPED = TrialConfig.from_dict({
    # airbench's network in our family's words: three stages of two convs, 64 -> 256 filters,
    # GELU, BN, max-pooling, global pooling head; SGD with Nesterov, label smoothing 0.2,
    # flips and 2-px translations, batch 1024.
    "depth": 3, "layers": 6, "width": 64, "growth": 2.0, "kernel": 3, "activation": "gelu", "batch_norm": True,
    "pool": "max", "head": "gap", "optimizer": "sgd", "lr": 0.1, "momentum": 0.85, "weight_decay": 5e-4,
    "schedule": "onecycle", "label_smoothing": 0.2, "aug_flip": True, "aug_translate": 2, "batch_size": 1024,
    "epochs": AIRBENCH_EPOCHS,
})

OOM_LIMIT = 2 * 2**30  # bytes the allocator may hold during the out-of-memory check
OOM_SPACE = {
    # Trial 0 (a start point, so it runs first): 4 convs of 128 filters on full-size 28 x 28 maps at
    # batch 4,000 (the whole train split): ~8 GiB estimated (search.trial.train.training_memory), which
    # any card with that much free passes before training, and 4x the allocator's cap. A card's whole
    # memory cannot be relied on instead: 16 convs of 1024 filters (~105 GiB estimated) trained on an
    # H200 (111 GiB peak, 2026-12-04). Trial 1, in the same worker, is small and must complete.
    "description": "gpu_check: one config over the allocator's cap, then a small one",
    "params": {"width": {"type": "categorical", "choices": [8, 128]},
               "layers": {"type": "categorical", "choices": [1, 4]},
               "batch_size": {"type": "categorical", "choices": [64, 65536]},
               "depth": 1, "epochs": 1},
    "start": [{"width": 128, "layers": 4, "batch_size": 65536}, {"width": 8, "layers": 1, "batch_size": 64}],
}


class Check:
    """The table's rows: each check's name, ok / FAIL / skipped, and its figures."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.failed: list[str] = []

    def row(self, name: str, ok: bool | None, figures: str) -> None:
        status = "skipped" if ok is None else "ok" if ok else "FAIL"
        if ok is False:
            self.failed.append(name)
        self.rows.append([name, status, figures])
        print(f"{name}: {status}: {figures}", file=sys.stderr, flush=True)

    def run(self, name: str, fn: Callable[[], tuple[bool | None, str]]) -> None:
        """One check; an exception in it is its FAIL row, and the others still run."""
        try:
            ok, figures = fn()
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, shown in the table
            ok, figures = False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        self.row(name, ok, figures)


def device_row(device: torch.device) -> tuple[bool | None, str]:
    if device.type != "cuda":
        return True, f"no GPU: CPU ({os.cpu_count()} cores), AMP none; the GPU rows are skipped"
    name = torch.cuda.get_device_name(device)
    capability = torch.cuda.get_device_capability(device)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    amp = str(amp_dtype_for(device)).removeprefix("torch.")
    return True, f"{name}, capability {capability[0]}.{capability[1]}, {total:.0f} GiB, AMP {amp}"


def raw_loop(config: TrialConfig, data: TrialData, device: torch.device) -> float:
    """A plain loop: the same model, optimizer, AMP and batched augmentation; validates every epoch."""
    torch.manual_seed(config.seed)
    cuda = device.type == "cuda"
    amp = amp_dtype_for(device)
    model = build_model(config, data.input_shape, data.num_classes).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model.parameters())
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    generator = torch.Generator(device=device).manual_seed(config.seed)
    augment = Augmenter(config, data.input_shape, generator=generator)
    autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    correct = 0
    for _ in range(config.epochs):
        model.train()
        for idx in torch.randperm(len(data.train_y), device=device, generator=generator).split(config.batch_size):
            x = data.train_x[idx].float().div_(255.0)
            x = data.normalize(augment(x) if augment.active else x).contiguous(memory_format=fmt)
            with autocast:
                loss = F.cross_entropy(model(x), data.train_y[idx], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        model.eval()
        correct = 0
        size = eval_batch_size(data.input_shape, EVAL_BATCH)
        with torch.inference_mode(), autocast:
            for start in range(0, len(data.val_y), size):
                x = data.normalize(data.val_x[start:start + size]).contiguous(memory_format=fmt)
                correct += (model(x).argmax(1) == data.val_y[start:start + size]).sum().item()
    return correct / max(1, len(data.val_y))


def throughput_row(config: TrialConfig, data: TrialData, device: torch.device, rounds: int,
                   warmup: bool) -> tuple[bool | None, str, float, float]:
    """``train`` against :func:`raw_loop`, interleaved; returns (ok, figures, train/raw, s/epoch)."""
    variants = {"train": lambda: train(config, data, device, measure=False).val_accuracy,
                "raw": lambda: raw_loop(config, data, device)}
    if warmup:  # cuDNN's autotuning, the CUDA kernels' loading, the allocator's first blocks: untimed
        once = config.replace(epochs=1)
        train(once, data, device, measure=False)
        raw_loop(once, data, device)
    timings = interleaved({name: (lambda f=f: _timed(f, device)) for name, f in variants.items()}, rounds)
    images = config.epochs * len(data.train_y)
    ips = {name: median([images / seconds for seconds, _ in runs]) for name, runs in timings.items()}
    ratio = median([raw[0] / mine[0] for mine, raw in zip(timings["train"], timings["raw"], strict=True)])
    per_epoch = median([seconds for seconds, _ in timings["train"]]) / config.epochs
    acc = median([a for _, a in timings["train"]])
    figures = (f"train {ips['train']:,.0f} img/s, raw {ips['raw']:,.0f} img/s: {ratio:.2f}x (goal >= {GOAL}); "
               f"{per_epoch:.2f} s/epoch; val acc {acc:.3f}")
    ok = ratio >= GOAL if device.type == "cuda" else True  # the CPU figure is shown, judged by train_throughput
    return ok, figures, ratio, per_epoch


def _timed(fn: Callable[[], float], device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def synthetic_cifar(n_train: int, n_val: int, device: torch.device) -> TrialData:
    """Random uint8 images shaped like CIFAR-10 and random labels, on ``device`` (speed only: nothing to learn)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_val, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device)
    y = torch.randint(0, 10, (n_train + n_val,), generator=generator).to(device)
    stats = torch.full((1, 3, 1, 1), 0.5, device=device)
    return TrialData(train_x=x[:n_train], train_y=y[:n_train], val_x=x[n_train:], val_y=y[n_train:], mean=stats,
                     std=stats / 1.73, classes=[str(i) for i in range(10)], input_shape=(3, 32, 32), num_classes=10)


def study_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def device_flag_row(folder: Path, device_flag: str, dataset: str) -> tuple[bool | None, str]:
    """A one-trial study with ``--device device_flag``, in this process (the worker's own device path)."""
    url = f"sqlite:///{folder / ('device-' + device_flag.replace(':', '-') + '.db')}"
    spec = StudySpec(space=parse_space({"params": {"width": 8, "depth": 1, "epochs": 1}}), dataset=dataset,
                     pruner="none", budget=1)
    try:
        run_study(spec, "dev", url, device=device_flag, progress=False)
    except CnnSearchError as exc:
        if torch.cuda.is_available():
            raise
        return True, f"no GPU: refused in one line ({exc})"
    (trial,) = study_trials(url, "dev")
    ok = trial.state.name == "COMPLETE" and trial.user_attrs.get("device", "").startswith("cuda:")
    return ok, f"trial {trial.state.name}, device {trial.user_attrs.get('device')}"


def oom_row(folder: Path, device: torch.device) -> tuple[bool | None, str]:
    """The trial over the allocator's cap and the small one after it, in one worker in this process."""
    url = f"sqlite:///{folder / 'oom.db'}"
    spec = StudySpec(space=parse_space(OOM_SPACE), dataset="mnist5k", pruner="none", budget=2)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, OOM_LIMIT / total), device)
    try:
        run_study(spec, "oom", url, device=str(device), progress=False)
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    wide, small = study_trials(url, "oom")
    ok = (wide.state.name == "PRUNED" and wide.user_attrs.get("fail_reason") == "oom"
          and small.state.name == "COMPLETE" and wide.user_attrs.get("pid") == small.user_attrs.get("pid"))
    memory = (f"; this process now holds {torch.cuda.memory_reserved(device) / MIB:,.0f} MiB "
              f"(peak {torch.cuda.max_memory_reserved(device) / MIB:,.0f} MiB)" if cuda else "")
    return ok, (f"wide trial {wide.state.name} ({wide.user_attrs.get('fail_reason')}: "
                f"{(wide.user_attrs.get('fail_message') or '')[:80]}); next trial {small.state.name}{memory}")


def cli_run_row(folder: Path, name: str, extra: list[str], trials: int, dataset: str) -> tuple[bool | None, str]:
    """``cnnsearch run`` in a subprocess with two workers; every trial finished with its device, peaks per pid."""
    url = f"sqlite:///{folder / f'{name}.db'}"
    command = [sys.executable, "-m", "search.cli", "run", "--study", name, "--storage", url, "--dataset", dataset,
               "--space", "tiny", "--trials", str(trials), "--pruner", "none", "--no-progress", *extra]
    # This checkout first, and a PYTHONPATH the machine's packages are on (wheels unpacked with --target) kept
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}
    with GpuMemoryPoller() as poller:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        return False, f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}"
    trials_done = study_trials(url, name)
    finished = [t for t in trials_done if t.state.name in ("COMPLETE", "PRUNED")]
    devices = sorted({str(t.user_attrs.get("device")) for t in trials_done})
    workers = sorted({str(t.user_attrs.get("pid")) for t in trials_done})
    ok = len(finished) == trials and all(d != "None" for d in devices)
    return ok, (f"{len(finished)}/{trials} trials finished by {len(workers)} workers, devices {', '.join(devices)}; "
                f"peak per worker {poller.summary()}")


class GpuMemoryPoller:
    """Each GPU process's most memory while the block runs, from ``nvidia-smi`` every 0.5 s ('-' without it)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> GpuMemoryPoller:
        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.stdout.splitlines():
                pid, _, used = line.partition(",")
                if pid.strip() != str(os.getpid()) and used.strip().isdigit():
                    self.peaks[pid.strip()] = max(self.peaks.get(pid.strip(), 0.0), float(used))

    def summary(self) -> str:
        return ", ".join(f"{mib:,.0f} MiB" for mib in sorted(self.peaks.values())) or "-"


class _ConstantSchedule:
    """A schedule that leaves the rate as it is: ``train`` without its per-step schedule, for the ablation."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        pass


def _head_and_body(model: torch.nn.Module, config: TrialConfig) -> list[dict]:
    """Fine-tuning's two parameter groups (head, body), both at the config's rate: what one group saves."""
    groups = param_groups(model, config.replace(body_lr_mult=0.5))
    for group in groups:
        group["lr"] = config.lr
    return groups


ABLATIONS: dict[str, dict[str, Any]] = {
    # Each a set of search.trial.train's names replaced while that variant runs.
    "train": {},
    "no FLOP count": {"count_flops": lambda model, shape: 0},
    "no schedule": {"make_schedule": lambda config, optimizer, steps: _ConstantSchedule(optimizer)},
    "two param groups": {"param_groups": _head_and_body},
    "no finiteness checks": {"CHECK_EVERY": 10**9, "_check_finite": lambda loss_sum, epoch: None},
}


@contextlib.contextmanager
def _replaced(names: dict[str, Any]) -> Iterator[None]:
    saved = {name: getattr(train_module, name) for name in names}
    for name, value in names.items():
        setattr(train_module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(train_module, name, value)


def ablate(device: torch.device, rounds: int, dataset: str) -> str:
    """The ablation table: each variant's median seconds, microseconds a step and raw/variant."""
    cuda = device.type == "cuda"
    config = TrialConfig() if cuda else TrialConfig().replace(depth=1, width=2, batch_size=16, batch_norm=False,
                                                             epochs=1)
    images = load_dataset(dataset)
    data = prepare_data(images, make_split(images.labels), device)

    def variant(names: dict[str, Any]) -> Callable[[], tuple[float, float]]:
        def once() -> float:
            with _replaced(names):
                return train(config, data, device, measure=False).val_accuracy
        return lambda: _timed(once, device)

    variants = {"raw": lambda: _timed(lambda: raw_loop(config, data, device), device)}
    variants.update({name: variant(names) for name, names in ABLATIONS.items()})
    for fn in variants.values():  # warm-up: cuDNN's autotuning and the allocator's first blocks, untimed
        fn()
    timings = interleaved(variants, rounds)
    steps = config.epochs * -(-len(data.train_y) // config.batch_size)
    seconds = {name: median([t for t, _ in runs]) for name, runs in timings.items()}
    rows = [[name, f"{t:.3f}", f"{t / steps * 1e6:,.0f}", f"{seconds['raw'] / t:.2f}x"] for name, t in seconds.items()]
    head = (f"ablation on {device}, {dataset}: width {config.width}, batch {config.batch_size}, "
            f"{config.epochs} epoch(s), {steps} steps, {rounds} interleaved rounds")
    return head + "\n" + table(["variant", "median s", "us/step", "raw/variant"], rows)


def main(argv: list[str] | None = None) -> int:
    parser, mode = parser_with_modes(
        __doc__, quick="20,000 synthetic images, one round (on a CPU: no worker subprocesses, under a minute)",
        smoke="seconds: digits and few synthetic images, one round, no warm-up, no worker subprocesses on a CPU")
    mode.add_argument("--ablate", action="store_true",
                      help="only the ablation of train's extras against the plain loop (7 rounds)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)  # as train_throughput: 2 threads on a shared 2-core machine scatter the timings
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if args.ablate:
        print(machine_line())
        print(ablate(device, 7, "mnist5k"))
        return 0
    short = args.smoke or args.quick
    dataset = "digits" if args.smoke else "mnist5k"
    rounds = 1 if short else 5 if cuda else 2  # a GPU round takes seconds; its timings spread by ~10 %
    print(f"GPU check on {device}: {dataset}, synthetic CIFAR-shaped uint8 data, {rounds} interleaved round(s)")
    print(machine_line())
    check = Check()
    check.run("device", lambda: device_row(device))
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp)
        for flag in ("cuda", "cuda:0"):
            check.run(f"--device {flag}", lambda flag=flag: device_flag_row(folder, flag, dataset))
        images = load_dataset(dataset)
        data = prepare_data(images, make_split(images.labels), device)
        default = TrialConfig().replace(epochs=1) if args.smoke else TrialConfig()

        def default_row() -> tuple[bool | None, str]:
            ok, text, figures["default"], _ = throughput_row(default, data, device, rounds, warmup=not args.smoke)
            return ok, text

        check.run(f"default config, {dataset}", default_row)
        n_train, n_val = ((50_000, 10_000) if not short else (20_000, 5_000)) if cuda else (128, 64)
        airbench = AIRBENCH_SHAPED.replace(epochs=1) if not cuda else AIRBENCH_SHAPED

        def airbench_row() -> tuple[bool | None, str]:
            synthetic = synthetic_cifar(n_train, n_val, device)
            ok, text, figures["airbench"], _ = throughput_row(airbench, synthetic, device, rounds,
                                                              warmup=not args.smoke)
            if not cuda:
                return ok, text
            published = AIRBENCH_SECONDS / AIRBENCH_EPOCHS * n_train / 50_000
            return ok, f"{text} (airbench: {published:.2f} s/epoch at this size on an A100)"

        check.run(f"airbench-shaped, {n_train:,} synthetic 3x32x32", airbench_row)
        if cuda:
            check.run("forced out of memory", lambda: oom_row(folder, device))
        else:
            check.row("forced out of memory", None, "no GPU (on the host it would take the machine's memory)")
        if cuda:
            check.run("run --jobs 2, one GPU", lambda: cli_run_row(folder, "jobs2", ["--jobs", "2"], 4, dataset))
            check.run("ray --workers 2 --gpus-per-trial 0.5", lambda: cli_run_row(
                folder, "ray2", ["--backend", "ray", "--workers", "2", "--gpus-per-trial", "0.5"], 4, dataset))
        elif not short:
            check.run("run --jobs 2, CPU", lambda: cli_run_row(folder, "jobs2", ["--jobs", "2"], 4, dataset))
            check.row("ray --workers 2 --gpus-per-trial 0.5", None, "no GPU")
        else:
            check.row("run --jobs 2 / ray --gpus-per-trial 0.5", None,
                      "no GPU (on a CPU only without --quick/--smoke; tests/search/test_cli.py runs --jobs 2)")
    print(table(["check", "status", "figures"], check.rows))
    ratios = ", ".join(f"{name} {value:.2f}x" for name, value in figures.items())
    where = torch.cuda.get_device_name(device) if cuda else "no GPU (CPU rows only)"
    verdict = "all ok" if not check.failed else f"FAILED: {', '.join(check.failed)}"
    print(result_line("gpu_check", f"{where}: {verdict}; train/raw {ratios or '-'} (goal >= {GOAL} on a GPU)"))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
