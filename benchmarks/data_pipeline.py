"""Real data at real size: cnnsearch's data paths against torchvision's ImageFolder + DataLoader.

A JPEG image folder is generated offline from the photographs scikit-learn ships
(``load_sample_images``: random crops, flips and colour shifts of each photo's quarters, one
class per quarter, 8 classes) and decoded into an empty cache (``build``, as
``cnnsearch data prepare`` does). Then the same model and config train on it three ways,
interleaved (each round starts with the next path), on the same device:

- ``stream``: cnnsearch streaming batches from the memory-mapped cache (a 1-byte data-memory
  budget forces it);
- ``device``: cnnsearch with the images gathered onto the device (host memory on a CPU);
- ``dataloader``: torchvision ``ImageFolder`` + ``DataLoader(num_workers=2, pin_memory=True)``
  with the usual transforms (random flip, ``ToTensor``, ``Normalize``), as a user would write it.

A round is one epoch over the train split (plus cnnsearch's validation pass over the val
split), or with ``--steps N`` a short epoch of N batches of training images drawn from the whole
train split (rows from all over the cache) and ``--val-images`` validation images, so that a CPU
run fits in minutes: img/s is training images over the epoch's wall time.
``prepare`` (cnnsearch's once-per-worker gathering or channel statistics) is timed apart. The
build is compared with one whole DataLoader epoch over the train split, extrapolated from the
DataLoader's img/s.

Memory: ``--workers`` processes (spawned, as ``--jobs``) each first train the model on a few
in-memory batches (their baseline: torch, the model and its training), then map the cache,
prepare streamed data over the whole train split (the channel statistics read every row) and
train ``--steps`` batches from it; what each then holds beyond its baseline is read from /proc:
private (anonymous) memory, the cache's pages it has mapped (shared by all of them through the
page cache) and its proportional share (PSS).

Goals (issue 14): stream >= 0.9x device; stream >= 3x dataloader; build <= 1.5x one dataloader
epoch; each of 4 workers adds <= 200 MB beyond its model (the cache shared).

    python benchmarks/data_pipeline.py            # 20,000 JPEGs at 128 px, whole epochs, 3 rounds, 4 workers
    python benchmarks/data_pipeline.py --steps 8  # the same in rounds of 8 batches (a CPU host)
    python benchmarks/data_pipeline.py --quick    # 2,000 JPEGs at 64 px, 8 steps, 2 rounds, 4 workers
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import (  # noqa: E402
    goal_verdict,
    interleaved,
    machine_line,
    median,
    parser_with_modes,
    result_line,
    table,
)
from search.trial.data import Split, make_split, prepare_data  # noqa: E402
from search.trial.datasets import ImageSet, load_dataset  # noqa: E402
from search.trial.models import build_model  # noqa: E402
from search.trial.train import fit, make_optimizer  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402

HEADERS = ("path", "img/s (median)", "seconds per round", "prepare s", "vs device", "vs dataloader")
MEMORY_HEADERS = ("worker", "private MB", "cache pages MB (shared)", "PSS MB", "RSS MB")
EVERYTHING = 2**62
"""A data-memory budget every dataset fits: the device path."""


def make_folder(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` JPEGs of ``size`` px in 8 class folders: crops of the quarters of scikit-learn's two photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    quarters = []
    for photo in photos:
        h, w = photo.shape[0] // 2, photo.shape[1] // 2
        quarters += [photo[y:y + h, x:x + w] for y in (0, h) for x in (0, w)]
    for label in range(len(quarters)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = i % len(quarters)
        quarter = quarters[label]
        side = int(rng.integers(min(quarter.shape[:2]) // 2, min(quarter.shape[:2])))
        y, x = (int(rng.integers(0, quarter.shape[d] - side + 1)) for d in (0, 1))
        crop = quarter[y:y + side, x:x + side].astype(np.float32) * rng.uniform(0.7, 1.3, size=3)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        image.save(root / f"class{label}" / f"{i:06d}.jpg", quality=90)
    return root


def round_split(split: Split, train: int, val: int, seed: int = 0) -> Split:
    """``split`` cut to ``train`` images of its train part and ``val`` of its val part, drawn at random (the rest
    test, untouched), so a round is a short epoch whose rows still come from the whole cache."""
    rng = np.random.default_rng(seed)
    picked_train = np.sort(rng.choice(split.train, min(train, len(split.train)), replace=False))
    picked_val = np.sort(rng.choice(split.val, min(val, len(split.val)), replace=False))
    rest = np.setdiff1d(np.arange(len(split.train) + len(split.val) + len(split.test)),
                        np.concatenate([picked_train, picked_val]))
    return dataclasses.replace(split, train=picked_train, val=picked_val, test=rest)


def dataloader_round(folder: Path, train_rows: np.ndarray, config: TrialConfig, size: int, classes: int,
                     device: torch.device) -> tuple[float, float]:
    """``(0, seconds)`` of one epoch of a plain loop over torchvision's ImageFolder + DataLoader (same model and
    optimizer); the loader's worker start-up counts, as it does in every epoch of such a loop."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.25] * 3)])
    subset = Subset(datasets.ImageFolder(str(folder), transform=transform), train_rows.tolist())
    loader = DataLoader(subset, batch_size=config.batch_size, shuffle=True, num_workers=2, pin_memory=True)
    torch.manual_seed(config.seed)
    model = build_model(config, (3, size, size), classes).to(device)
    optimizer = make_optimizer(config, model.parameters())
    started = time.perf_counter()
    model.train()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 0.0, time.perf_counter() - started


def cnnsearch_round(images: ImageSet, split: Split, config: TrialConfig, device: torch.device,
                    stream: bool) -> tuple[float, float]:
    """``(prepare seconds, fit seconds)``: the data prepared for the device or streamed, then one epoch of ``fit``."""
    started = time.perf_counter()
    data = prepare_data(images, split, device, data_memory=1 if stream else EVERYTHING)
    if data.feed["mode"] != ("stream" if stream else "device"):
        raise RuntimeError(f"expected the {'stream' if stream else 'device'} feed, got {data.feed}")
    prepared = time.perf_counter()
    fit(config, data, device, measure=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return prepared - started, time.perf_counter() - prepared


def _memory() -> dict[str, float]:
    """This process's resident memory in MB from /proc: RSS, private (anonymous), mapped files, PSS."""
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) / 1024
    return out


def memory_worker(name: str, cache: str, size: int, config: TrialConfig, train: int, barrier, results) -> None:
    """One worker process of the memory measurement (see the module's docstring); puts its figures on ``results``."""
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    count = 2 * config.batch_size + 32
    synthetic = ImageSet("synthetic", torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8,
                                                    generator=torch.Generator().manual_seed(0)),
                         torch.arange(count) % 8, [str(i) for i in range(8)])
    fit(config, prepare_data(synthetic, make_split(synthetic.labels, seed=0, val_fraction=0.1, test_fraction=0.1),
                             cpu, data_memory=EVERYTHING), cpu, measure=False)
    base = _memory()
    images = load_dataset(name, image_size=size, cache_dir=cache)
    split = make_split(images.labels, seed=0)
    whole = prepare_data(images, split, cpu, data_memory=1)  # streamed: its statistics read every train row
    fit(config, prepare_data(images, round_split(split, train, 64), cpu, data_memory=1), cpu, measure=False)
    barrier.wait()  # all of them hold the cache now
    after = _memory()
    barrier.wait()
    del whole
    results.put({key: after[key] - base[key] for key in after} | {"rows_mapped": len(split.train)})


def worker_memory(workers: int, name: str, cache: Path, size: int, config: TrialConfig,
                  train: int) -> list[dict[str, float]]:
    """The figures of ``workers`` memory-worker processes, run at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=memory_worker, args=(name, str(cache), size, config, train, barrier, results))
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join()
    return out


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(__doc__, quick="2,000 images at 64 px, 8 steps, 2 rounds (minutes on a CPU)",
                                  smoke="seconds: 160 images at 32 px, 1 step, 1 round, 2 workers (tests)")
    parser.add_argument("--images", type=int, help="images in the folder (default 20,000)")
    parser.add_argument("--size", type=int, help="image side in px (default 128)")
    parser.add_argument("--steps", type=int, help="training batches of 128 per round (default: a whole epoch)")
    parser.add_argument("--val-images", type=int, default=128,
                        help="images of cnnsearch's validation pass in a round of --steps")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--workers", type=int, help="processes of the memory measurement (default 4)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--folder", help="keep the generated image folder here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # On a host without a GPU, DataLoader warns that pin_memory=True (what a user writes for a GPU) does nothing.
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")
    count = args.images or (160 if args.smoke else 2000 if args.quick else 20_000)
    size = args.size or (32 if args.smoke else 64 if args.quick else 128)
    steps = args.steps or (1 if args.smoke else 8 if args.quick else None)
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 3)
    workers = args.workers or (2 if args.smoke else 4)
    device = torch.device(args.device)
    config = TrialConfig(width=16, depth=2, batch_size=128, epochs=1, aug_flip=True, seed=0)
    val_images = min(args.val_images, 32) if args.smoke else args.val_images

    with tempfile.TemporaryDirectory(prefix="cnnsearch-data-pipeline-") as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch) / "photos"
        if not folder.is_dir():
            make_folder(folder, count, size)
        name, cache = f"imagefolder:{folder}", Path(scratch) / "cache"
        started = time.perf_counter()
        images = load_dataset(name, image_size=size, cache_dir=cache)
        build = time.perf_counter() - started
        whole = make_split(images.labels, seed=0)
        split = round_split(whole, steps * config.batch_size, val_images) if steps else whole
        classes = len(images.classes)
        times = interleaved({
            "stream": lambda: cnnsearch_round(images, split, config, device, stream=True),
            "device": lambda: cnnsearch_round(images, split, config, device, stream=False),
            "dataloader": lambda: dataloader_round(folder, split.train, config, size, classes, device),
        }, rounds)
        memory = worker_memory(workers, name, cache, size, config, min(2, steps or 2) * config.batch_size)

    n = len(split.train)
    seconds = {path: median([fit_s for _, fit_s in values]) for path, values in times.items()}
    prepare = {path: median([prep for prep, _ in values]) for path, values in times.items()}
    rate = {path: n / s for path, s in seconds.items()}
    loader_epoch = len(whole.train) / rate["dataloader"]
    print(f"data pipeline: {count} JPEGs at {size} px, {classes} classes ({len(whole.train)} in the train split); "
          f"rounds of {n} training images ({math.ceil(n / config.batch_size)} steps of {config.batch_size}) + "
          f"{len(split.val)} validation images on {device}, {rounds} interleaved rounds, medians")
    print(machine_line())
    rows = [(path, rate[path], seconds[path], prepare[path], rate[path] / rate["device"],
             rate[path] / rate["dataloader"]) for path in ("stream", "device", "dataloader")]
    rows.append(("build the cache", float("nan"), build, float("nan"), float("nan"), build / loader_epoch))
    print(table(HEADERS, rows))
    print("seconds of each round, in round order: " + "; ".join(
        f"{path} {', '.join(f'{fit_s:.1f}' for _, fit_s in values)}" for path, values in times.items()))
    print(f"the build ({build:.1f} s) against one whole DataLoader epoch over the {len(whole.train)} train images "
          f"({loader_epoch:.1f} s at its img/s): {build / loader_epoch:.2f}x")
    print()
    print(f"{workers} worker processes at once, each beyond its own model and training (the cache: "
          f"{images.images.numel() / 2**20:.0f} MB, every train row read by each):")
    print(table(MEMORY_HEADERS, [(i, m["RssAnon"], m["RssFile"], m["Pss"], m["VmRSS"])
                                 for i, m in enumerate(memory)]))
    stream_vs_device = rate["stream"] / rate["device"]
    stream_vs_loader = rate["stream"] / rate["dataloader"]
    build_vs_epoch = build / loader_epoch
    private = max(m["RssAnon"] for m in memory)
    judged = {"smoke": args.smoke}
    memory_verdict = goal_verdict(private <= 200, **judged) if workers >= 4 else f"not judged with {workers}"
    print(result_line("data_pipeline", (
        f"stream/device {stream_vs_device:.2f} (goal >= 0.9: {goal_verdict(stream_vs_device >= 0.9, **judged)}), "
        f"stream/dataloader {stream_vs_loader:.2f} (goal >= 3: {goal_verdict(stream_vs_loader >= 3, **judged)}), "
        f"build/dataloader epoch {build_vs_epoch:.2f} (goal <= 1.5: {goal_verdict(build_vs_epoch <= 1.5, **judged)}), "
        f"most private memory one of {workers} workers added {private:.0f} MB (goal <= 200 with 4: "
        f"{memory_verdict})")))
    return 0 if math.isfinite(stream_vs_device) else 1


if __name__ == "__main__":
    sys.exit(main())
