"""Real data at real size: cnnsearch's data paths against torchvision's ImageFolder + DataLoader.

A JPEG image folder is generated offline from the photographs scikit-learn ships
(``load_sample_images``: random crops, flips and colour shifts of each photo's quarters, one
class per quarter, 8 classes), then the same model and config train one epoch on it three ways,
interleaved, on the same device:

- ``stream``: cnnsearch streaming from the decoded cache (a tiny data-memory budget forces it);
- ``device``: cnnsearch with the train and val images on the device (the default when they fit);
- ``dataloader``: torchvision ``ImageFolder`` + ``DataLoader(num_workers=2, pin_memory=True)``
  with the usual transforms (random flip, ``ToTensor``, ``Normalize``), as a user would write it.

``build`` is decoding the folder into an empty cache (``cnnsearch data prepare``). img/s is
training images per second of one epoch's wall time (the epoch's validation pass included for
the cnnsearch paths). Goals: stream >= 0.9x device; stream >= 3x dataloader; build <= 1.5x one
dataloader epoch.

    python benchmarks/data_pipeline.py            # 20,000 images at 128 px, 3 rounds
    python benchmarks/data_pipeline.py --quick    # 2,000 images at 64 px, 2 rounds
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    # Run as a file, Python puts benchmarks/ first on sys.path, where benchmarks/spaces/ would
    # shadow the `spaces` package: import our modules from the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import interleaved, machine_line, median, parser_with_modes, result_line, table  # noqa: E402
from search.trial.data import make_split, prepare_data  # noqa: E402
from search.trial.datasets import load_dataset  # noqa: E402
from search.trial.models import build_model  # noqa: E402
from search.trial.train import fit, make_optimizer  # noqa: E402
from spaces.schema import TrialConfig  # noqa: E402

HEADERS = ("path", "img/s (median)", "seconds per epoch", "vs device", "vs dataloader")


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


def dataloader_epoch(folder: Path, train_rows: np.ndarray, config: TrialConfig, size: int, classes: int,
                     device: torch.device) -> float:
    """Seconds of one epoch of a plain loop over torchvision's ImageFolder + DataLoader (same model, optimizer)."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.25] * 3)])
    subset = Subset(datasets.ImageFolder(str(folder), transform=transform), train_rows.tolist())
    loader = DataLoader(subset, batch_size=config.batch_size, shuffle=True, num_workers=2,
                        pin_memory=device.type == "cuda", persistent_workers=False)
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
    return time.perf_counter() - started


def cnnsearch_epoch(images, split, config: TrialConfig, device: torch.device, stream: bool) -> float:
    """Seconds of ``fit`` for one epoch, the data on the device or streamed from the cache."""
    started = time.perf_counter()
    data = prepare_data(images, split, device, data_memory=1 if stream else None)
    fit(config, data, device, measure=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser, _ = parser_with_modes(__doc__, quick="2,000 images at 64 px, 2 rounds (a few minutes on a CPU)",
                                  smoke="seconds: 160 images at 32 px, 1 round (tests)")
    parser.add_argument("--images", type=int, help="images in the folder (default 20,000)")
    parser.add_argument("--size", type=int, help="image side in px (default 128)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--folder", help="keep the generated image folder here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    count = args.images or (160 if args.smoke else 2000 if args.quick else 20_000)
    size = args.size or (32 if args.smoke else 64 if args.quick else 128)
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 3)
    device = torch.device(args.device)
    config = TrialConfig(width=16, depth=2, batch_size=128, epochs=1, aug_flip=True, seed=0)

    with tempfile.TemporaryDirectory(prefix="cnnsearch-data-pipeline-") as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch) / "photos"
        if not folder.is_dir():
            make_folder(folder, count, size)
        name = f"imagefolder:{folder}"
        started = time.perf_counter()
        images = load_dataset(name, image_size=size, cache_dir=Path(scratch) / "cache")
        build = time.perf_counter() - started
        split = make_split(images.labels, seed=0)
        times = interleaved({
            "stream": lambda: cnnsearch_epoch(images, split, config, device, stream=True),
            "device": lambda: cnnsearch_epoch(images, split, config, device, stream=False),
            "dataloader": lambda: dataloader_epoch(folder, split.train, config, size, len(images.classes), device),
        }, rounds)

    n = len(split.train)
    seconds = {path: median(values) for path, values in times.items()}
    rate = {path: n / s for path, s in seconds.items()}
    print(f"data pipeline: {count} JPEGs at {size} px, {len(images.classes)} classes, {n} train images, "
          f"one epoch on {device}, {rounds} interleaved rounds, medians")
    print(machine_line())
    rows = [(path, rate[path], seconds[path], rate[path] / rate["device"], rate[path] / rate["dataloader"])
            for path in ("stream", "device", "dataloader")]
    rows.append(("build the cache", float("nan"), build, float("nan"), build / seconds["dataloader"]))
    print(table(HEADERS, rows))
    stream_vs_device = rate["stream"] / rate["device"]
    stream_vs_loader = rate["stream"] / rate["dataloader"]
    build_vs_epoch = build / seconds["dataloader"]
    met = [stream_vs_device >= 0.9, stream_vs_loader >= 3, build_vs_epoch <= 1.5]
    print(result_line("data_pipeline", f"stream/device {stream_vs_device:.2f} (goal >= 0.9), stream/dataloader "
                                       f"{stream_vs_loader:.2f} (goal >= 3), build/dataloader epoch "
                                       f"{build_vs_epoch:.2f} (goal <= 1.5): {sum(met)} of 3 goals met"))
    return 0 if math.isfinite(stream_vs_device) else 1


if __name__ == "__main__":
    sys.exit(main())
