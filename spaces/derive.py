"""The ``auto`` space: a default search space derived from the data and the study's budget.

``cnnsearch run`` without ``--space`` searches this space. The fixed ``default`` preset was
sized for one dataset (28-px digits on 2 CPU cores, 5 minutes); these rules size a space
for whatever data and budget a study has, from a few facts about it (:class:`DataFacts`,
:class:`Budget`). Each rule is one decision, printed as one line by ``cnnsearch run`` and
recorded with the study. None of the numbers below was tuned by measuring on a benchmark
data set's val split: they are the textbook shapes of small CNNs, scaled by the facts.

Rules, and why:

1. **Stages** (``depth``): each stage halves the feature map, and a map below 2 px holds
   nothing; the map rule 2's first layer leaves of an S-px image (``ceil(S / stride)`` px)
   holds ``h`` halvings (28 px: 3, 32 px: 4, 8 px: 2; 224 px at stride 4: 56 px, 4). The
   range is ``[max(1, top - 2), top]`` with ``top = min(h, 4)``: four halvings (16x)
   already give the last stage a view of the whole of a 64-px map.
2. **First layer** (``stem_stride``, fixed, not searched): stride 1 up to 64 px, where every
   pixel carries detail a strided first layer would throw away; 2 for 65-128 px, 4 above
   (ResNet's stem takes a 224-px image down 4x before its first stage): a network at full
   resolution on large images spends its time on a map larger than what it learns from.
3. **Width** (filters of the first stage, doubling per stage up to ``growth``): base 16 for
   one channel (edges and strokes), 32 for colour (colour and texture filters besides
   edges); twice that from 20,000 training images (more data supports more filters without
   overfitting), half below 1,000 (at least 8); twice with more than 20 classes (the last
   stages must tell more classes apart). Searched from half the base to twice it.
4. **Regularisation**, from the training images per class ``n``: with ``n < 300`` a network
   memorises its data sooner, so dropout up to 0.5 (else 0.3), weight decay 1e-5..1e-2
   (else 1e-6..1e-3) and label smoothing up to 0.2 (else 0.1).
5. **Augmentation**: colour images are taken for photos, where a mirrored scene is the
   same class: flips searched, and the start point flips. One-channel images where at
   least half the pixels sit at the darkest or lightest tenth of the range (ink on a
   blank page: digits, letters, symbols) are glyph-like, where a mirrored glyph is another
   symbol: no flips. Other one-channel images: flips searched, the start point does not
   flip (unsure). Shifts (padded crops) up to an eighth of the side for photos (the
   4-px crops of 32-px photos), a tenth for glyphs (strokes must stay inside); rotations up
   to 15 degrees (beyond ~20 a 6 starts to look like a 9).
6. **Epochs** and Hyperband's maximum resource, from the budget and the measured pace of a
   *typical* trial: the seconds per epoch ``s`` of a few networks drawn from the space at
   random, as the sampler draws its first trials (their median; each one's training steps
   and a val batch timed on the real training images, on the device and threads a worker
   gets, the fastest of a few short windows, scaled to the split's sizes). With a time
   budget of ``T`` seconds left and ``J`` workers, the top of the epoch range is
   ``J * T / (8 * s)`` (with ``--trials`` under 8 too: ``J * T / (trials * s)``), so one
   typical trial at the top of the range takes an eighth of the budget and Hyperband
   (reduction 3) still fits several full trials among many short ones; a long budget
   trains long. Drawn networks, not the median one (rule 8): the space's attention, HOG
   fusion, 5-px kernels, wider and smaller batches make a drawn network train 2-3x slower
   an epoch than the plain median network (``benchmarks/draw_pace.py``: 20 draws on
   mnist5k, 2 CPU threads, median 2.5x, 0.95-4.4x; FLOPs rank them poorly, so the pace is
   timed, not counted; ``cnnsearch run`` prints its own ratio on its first line), and sized
   by the median network a study's first trials, which nothing can prune yet, took up to
   a third of a 3-minute budget each instead of an eighth (BENCHMARKS.md, mnist5k-1k).
   With ``--trials`` alone the budget has no time in it: the top is what a typical trial
   trains in 30 s. Clamped to 3..200 epochs; the range starts at a quarter of it.
7. **Trial timeout** (unless ``--trial-timeout`` is given): four times what a typical trial
   takes at the top of the epoch range, which is half a time budget unless rule 6
   clamped the range up (a budget too short for this machine), and at least two minutes. A
   network four times as slow as the typical one still fits, and so does the typical one on a
   machine that slows down fourfold after the timing (shared machines do); a much bigger
   one is cut (PRUNED, reason ``timeout``) rather than running on long after
   ``--timeout`` stopped new trials.
8. **Start point**, tried first and never pruned: the middle of the ranges (median depth,
   the base width, the middle of the epoch range, Adam with a one-cycle schedule, the
   augmentation of rule 5), timed with rule 6's draws, so its cost is known (5/8 of the top
   epochs at its own pace: about 1/13 of a time budget over how much slower the typical
   draw is). One only: a second, the classic residual
   recipe at the deepest stages, took ~10x the median's time per epoch on 28-px digits on
   a shared CPU and was cut by rule 7 in the demo; the sampler tries such networks. ``--no-start`` skips it.
9. **The first drawn trial trains the low end of the epoch range** (``low_cost: {epochs: ...}``,
   FLAML's low-cost start, :func:`spaces.loader._parse_low_cost`): Hyperband judges a trial
   only against others at the same rung, so a study's first drawn trial (no peer at its rungs,
   or only the start point) mostly runs all its epochs, and a draw from the range averages 5/8 of the
   top. At the low end it trains a quarter of the top (2/5 of an average draw's epochs), and
   the user has a first finished trial (the whole pipeline shown to work, a recipe) that much
   sooner. Only epochs: every other parameter is drawn as the sampler draws, so it is a draw,
   not a chosen configuration, and the pruner judges it like any other. ``--no-start`` keeps it
   (it names no configuration); behind a start point it is the second trial.

Everything else (learning rate, optimiser, schedule, batch size, kernel, head, batch
norm, attention, initialisation, HOG fusion) is searched over the ranges of the
``default`` preset, which hold for small CNNs in general, with two scalings: batch sizes
64-256 instead of 32-128 from 20,000 training images, and HOG cells of a seventh and a
quarter of the side (4 and 7 px on 28 px).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from spaces.loader import parse_space
from spaces.space import Space

NAME = "auto"
"""The name a derived space is recorded and listed under."""

FULL_TRIAL_SHARE = 8  # one trial at the top of the epoch range takes 1/8 of a time budget
UNTIMED_TRIAL_SECONDS = 30.0  # --trials alone: the top of the epoch range trains this long
TRIAL_TIMEOUT_FACTOR, MIN_TRIAL_TIMEOUT = 4, 120.0  # a trial may take 4x a typical one's top epochs, at least 2 minutes
TYPICAL_DRAWS = 6  # networks drawn from the space and timed for rule 6's pace: their median
MIN_EPOCHS, MAX_EPOCHS = 3, 200
FEW_PER_CLASS = 300  # training images per class below which regularisation reaches further
GLYPH_BLANK_FRACTION = 0.5  # share of pixels at the range's ends that makes one-channel data glyph-like


@dataclass(frozen=True)
class DataFacts:
    """What the rules read from the data: the training split only, never val or test."""

    channels: int
    height: int
    width: int
    classes: int
    train_images: int
    blank_fraction: float
    """Share of training pixels in the darkest or lightest tenth of the range (ink on a blank page: high)."""

    @property
    def side(self) -> int:
        return min(self.height, self.width)

    @property
    def per_class(self) -> float:
        return self.train_images / max(1, self.classes)

    @property
    def kind(self) -> str:
        """``photo`` (colour), ``glyph`` (one channel, mostly blank) or ``gray`` (other one-channel images)."""
        if self.channels >= 3:
            return "photo"
        return "glyph" if self.blank_fraction >= GLYPH_BLANK_FRACTION else "gray"


@dataclass(frozen=True)
class Budget:
    """What the rules read from the study's budget and this machine's speed."""

    seconds: float | None
    """Wall-clock seconds left for the search (``--timeout`` minus what setting up took); None: no time limit."""
    trials: int | None
    workers: int
    epoch_seconds: float
    """Measured seconds per epoch of :func:`median_network` on one worker."""
    measured_on: str
    """Where it was measured, in words (``cpu, 2 threads``)."""
    trial_timeout: float | None = None
    """The user's ``--trial-timeout``, kept as given; None: rule 7 sets one from a time budget."""
    typical_epoch_seconds: float | None = None
    """The median seconds per epoch of ``typical_draws`` networks drawn from the space; None: not
    measured, the median network's pace stands for a typical trial's."""
    typical_draws: int = 0

    @property
    def pace(self) -> float:
        """Seconds per epoch of a typical trial: what rules 6 and 7 size by."""
        return self.typical_epoch_seconds if self.typical_epoch_seconds is not None else self.epoch_seconds


@dataclass(frozen=True)
class Derivation:
    """A derived space, with the facts it came from and one ``(decision, why)`` line per rule."""

    facts: DataFacts
    budget: Budget
    decisions: list[tuple[str, str]]
    space: Space
    trial_timeout: float | None
    """Seconds a trial may train (rule 7), or None: no limit."""

    def lines(self) -> list[str]:
        """What ``cnnsearch run`` prints first: the inputs, then one short line per decision."""
        f, b = self.facts, self.budget
        budget = f"{b.seconds:.0f} s left" if b.seconds is not None else f"{b.trials} trials, no time limit"
        head = (f"space {NAME}: derived from the data ({f.height}x{f.width} px, {f.channels} channel"
                f"{'s' if f.channels > 1 else ''}, {f.classes} classes, {f.train_images:,} training images) and "
                f"the budget ({budget}, {b.workers} worker{'s' if b.workers > 1 else ''}; the median network "
                f"trains an epoch in {b.epoch_seconds:.2g} s{_typical(b)} on {b.measured_on})")
        return [head, *(f"  {what}: {why}" for what, why in self.decisions)]

    def to_record(self) -> dict[str, Any]:
        """The derivation as the study records it (JSON-able): inputs and decisions; the space is recorded apart."""
        return {"name": NAME, "data": asdict(self.facts), "budget": asdict(self.budget),
                "decisions": [list(d) for d in self.decisions], "trial_timeout": self.trial_timeout}


def _typical(budget: Budget) -> str:
    if budget.typical_epoch_seconds is None:
        return ""
    return (f", {budget.typical_draws} drawn from the space a median {budget.typical_epoch_seconds:.2g} s "
            f"({budget.typical_epoch_seconds / budget.epoch_seconds:.1f}x)")


def median_network(facts: DataFacts) -> dict[str, Any]:
    """The start point (the middle of the ranges) less its epochs: the network whose speed is measured."""
    low, high = _stages(facts)
    return {**_recipe(facts), "depth": (low + high + 1) // 2, "batch_size": 64, "optimizer": "adam",
            "lr": 0.003, "schedule": "onecycle", "head": "flatten", "residual": False,
            "stem_stride": _stem_stride(facts.side)}


def derive_space(facts: DataFacts, budget: Budget) -> Derivation:
    """The ``auto`` space for data with ``facts`` and a study with ``budget``, by the rules of this module."""
    decisions: list[tuple[str, str]] = []
    low, high = _stages(facts)
    stride = _stem_stride(facts.side)
    mapped = _after_stem(facts.side)
    halvings = _halvings(mapped)
    stages = f"stages {low}-{high}" if low < high else f"stage {low}"
    after = f" ({mapped} px after the first layer)" if stride > 1 else ""
    decisions.append((stages, f"{facts.side}-px images{after} hold {halvings} halving{'s' if halvings != 1 else ''} "
                      f"to >= 2 px{'; at most 4' if halvings > 4 else ''}"))
    decisions.append((f"first layer stride {stride}", "every pixel of a <= 64-px image carries detail" if stride == 1
                      else f"{facts.side}-px images ({'65-128' if stride == 2 else '> 128'} px): a stride-{stride} "
                           f"first layer trains on a {mapped}-px map instead of the full image"))
    base, why_width = _base_width(facts)
    decisions.append((f"width {base // 2}-{base * 2}", why_width))
    few = facts.per_class < FEW_PER_CLASS
    dropout, decay, smoothing = (0.5, (1e-5, 1e-2), 0.2) if few else (0.3, (1e-6, 1e-3), 0.1)
    decisions.append((f"dropout 0-{dropout}, weight decay {decay[0]:g} to {decay[1]:g}, label smoothing 0-{smoothing}",
                      f"{facts.per_class:,.0f} training images per class ({'<' if few else '>='} {FEW_PER_CLASS})"))
    shift = _max_shift(facts)
    flips = {"photo": "flips searched (start: on)", "gray": "flips searched (start: off)", "glyph": "no flips"}
    why_aug = {"photo": "colour images, taken for photos: a mirrored scene is the same class",
               "glyph": f"one channel, {facts.blank_fraction:.0%} of pixels blank or full: glyph-like, a mirrored "
                        "glyph is another symbol",
               "gray": f"one channel, {facts.blank_fraction:.0%} of pixels blank or full: not clearly glyphs, unsure"}
    decisions.append((f"{flips[facts.kind]}, shifts 0-{shift} px, rotations 0-15 deg", why_aug[facts.kind]))
    epochs, why_epochs = _epochs(budget)
    first = max(1, round(epochs / 4))
    decisions.append((f"epochs {first}-{epochs}, Hyperband maximum {epochs}", why_epochs))
    trial_timeout, why_timeout = _trial_timeout(budget, epochs)
    decisions.append((f"trial timeout {trial_timeout:g} s" if trial_timeout else "no trial timeout", why_timeout))
    middle = max(first, (first + epochs) // 2)
    decisions.append(("1 start point", f"the middle of the ranges (the timed median network), {middle} epochs "
                      "(--no-start skips it)"))
    decisions.append((f"first drawn trial: {first} epochs", "the range's low end: with no peer at its rungs Hyperband "
                      "cannot stop it, so it is cheapest there (its other params drawn)"))
    params = _params(facts, (low, high), base, (dropout, decay, smoothing), (first, epochs))
    start = {**median_network(facts), "epochs": middle, "dropout": round(dropout / 2, 2)}
    del start["stem_stride"]  # fixed in the space: a start point names searched parameters only
    starts = [start]
    description = (f"{NAME}: derived from the data ({facts.height}x{facts.width}x{facts.channels}, "
                   f"{facts.classes} classes, {facts.train_images} training images) and the budget")
    space = parse_space({"description": description, "params": params, "start": starts,
                         "low_cost": {"epochs": first}}, source=NAME, name=NAME)
    return Derivation(facts=facts, budget=budget, decisions=decisions, space=space, trial_timeout=trial_timeout)


def _halvings(side: int) -> int:
    """How many 2x2 pools a ``side``-px map takes before it would fall below 2 px (as the CNN builds it)."""
    count = 0
    while side // 2 >= 2:
        side, count = side // 2, count + 1
    return count


def _stem_stride(side: int) -> int:
    return 1 if side <= 64 else 2 if side <= 128 else 4


def _after_stem(side: int) -> int:
    """The side of the map rule 2's first layer leaves (a padded strided conv rounds up)."""
    return -(-side // _stem_stride(side))


def _stages(facts: DataFacts) -> tuple[int, int]:
    top = max(1, min(_halvings(_after_stem(facts.side)), 4))
    return max(1, top - 2), top


def _base_width(facts: DataFacts) -> tuple[int, str]:
    base = 32 if facts.channels >= 3 else 16
    why = [f"base {base} for {'colour' if facts.channels >= 3 else 'one channel'}"]
    if facts.train_images >= 20_000:
        base *= 2
        why.append("x2 for >= 20,000 training images")
    elif facts.train_images < 1_000:
        base = max(8, base // 2)
        why.append("/2 for < 1,000 training images")
    if facts.classes > 20:
        base *= 2
        why.append(f"x2 for {facts.classes} classes")
    return base, ", ".join(why) + "; searched from half to twice"


def _max_shift(facts: DataFacts) -> int:
    return max(1, round(facts.side / (10 if facts.kind == "glyph" else 8)))


def _recipe(facts: DataFacts) -> dict[str, Any]:
    """The start point's choices: a plain, well-behaved network with rule 5's augmentation."""
    base, _ = _base_width(facts)
    photo = facts.kind == "photo"
    recipe = {"width": base, "growth": 2.0, "kernel": 3, "batch_norm": True, "attention": "none", "init": "default",
              "loss": "cross_entropy", "label_smoothing": 0.1 if photo else 0.0, "hog": False,
              "aug_translate": _max_shift(facts) if photo else 1, "aug_rotate": 0.0, "aug_jitter": 0.0,
              "aug_noise": 0.0}
    if facts.kind != "glyph":
        recipe["aug_flip"] = photo
    return recipe


def _epochs(budget: Budget) -> tuple[int, str]:
    s = budget.pace
    typical = "typical" if budget.typical_epoch_seconds is not None else "median"
    if budget.seconds is None:
        top = UNTIMED_TRIAL_SECONDS / s
        why = (f"no --timeout: a {typical} network trains {top:.0f} epochs in {UNTIMED_TRIAL_SECONDS:.0f} s "
               "(give --timeout to size it to your time)")
    else:
        share = min(FULL_TRIAL_SHARE, budget.trials) if budget.trials else FULL_TRIAL_SHARE
        top = budget.workers * budget.seconds / (share * s)
        why = (f"a full-length {typical} trial takes 1/{share} of {budget.seconds:.0f} s"
               f"{f' x {budget.workers} workers' if budget.workers > 1 else ''} at {s:.2g} s/epoch")
    epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.floor(top))))
    if epochs != math.floor(top):
        why += f" (clamped to {MIN_EPOCHS}-{MAX_EPOCHS})"
    return epochs, why


def _trial_timeout(budget: Budget, epochs: int) -> tuple[float | None, str]:
    if budget.trial_timeout is not None:
        return budget.trial_timeout, "--trial-timeout, as given"
    if budget.seconds is None:
        return None, "no --timeout: a trial trains as long as its epochs take"
    seconds = max(MIN_TRIAL_TIMEOUT, round(TRIAL_TIMEOUT_FACTOR * epochs * budget.pace))
    typical = "a typical" if budget.typical_epoch_seconds is not None else "the median"
    return seconds, (f"{TRIAL_TIMEOUT_FACTOR}x {typical} network's {epochs} epochs, at least "
                     f"{MIN_TRIAL_TIMEOUT:.0f} s: a far slower config is cut, not run on past --timeout")


def _params(facts: DataFacts, stages: tuple[int, int], base: int, regular: tuple[float, tuple[float, float], float],
            epochs: tuple[int, int]) -> dict[str, Any]:
    dropout, decay, smoothing = regular
    cells = sorted({max(1, round(facts.side / 7)), max(1, round(facts.side / 4))})
    return {
        "lr": {"type": "float", "low": 3.0e-4, "high": 3.0e-2, "log": True},
        "batch_size": {"type": "categorical",
                       "choices": [64, 128, 256] if facts.train_images >= 20_000 else [32, 64, 128]},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "adamw"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
        "weight_decay": {"type": "float", "low": decay[0], "high": decay[1], "log": True,
                         "when": {"optimizer": ["sgd", "adamw"]}},
        "schedule": {"type": "categorical", "choices": ["constant", "step", "cosine", "onecycle"]},
        "epochs": {"type": "int", "low": epochs[0], "high": epochs[1]},
        "loss": {"type": "categorical", "choices": ["cross_entropy", "focal"]},
        "label_smoothing": {"type": "float", "low": 0.0, "high": smoothing},
        "stem_stride": _stem_stride(facts.side),
        "depth": {"type": "int", "low": stages[0], "high": stages[1]},
        "width": {"type": "int", "low": base // 2, "high": base * 2, "step": base // 2},
        "growth": {"type": "float", "low": 1.0, "high": 2.0, "step": 0.5},
        "kernel": {"type": "categorical", "choices": [3, 5]},
        "head": {"type": "categorical", "choices": ["flatten", "gap"]},
        "dropout": {"type": "float", "low": 0.0, "high": dropout},
        "batch_norm": {"type": "bool"},
        "residual": {"type": "bool"},
        "attention": {"type": "categorical", "choices": ["none", "channel", "spatial", "both"]},
        "init": {"type": "categorical", "choices": ["default", "kaiming", "xavier"]},
        "hog": {"type": "bool"},
        "hog_cell": {"type": "categorical", "choices": cells, "when": {"hog": True}},
        "aug_flip": False if facts.kind == "glyph" else {"type": "bool"},
        "aug_translate": {"type": "int", "low": 0, "high": _max_shift(facts)},
        "aug_rotate": {"type": "float", "low": 0.0, "high": 15.0},
        "aug_jitter": {"type": "float", "low": 0.0, "high": 0.3},
        "aug_noise": {"type": "float", "low": 0.0, "high": 0.1},
    }
