"""From a config to an ``nn.Module``: the custom CNN family, or a torchvision backbone.

:func:`build_model` is a pure function of ``(config, input_shape, num_classes)`` in the
spirit of nanoGPT's ``GPT(GPTConfig)``: no I/O (apart from reading a local pretrained
weights file for a backbone), no globals, and the initial weights are drawn from
``config.seed`` alone, so the same config gives the same model in any process. The config
is a :class:`spaces.schema.TrialConfig`, valid by construction: nothing here checks it again.

What the custom family builds (config keys are documented in ``spaces/schema.py``)::

    stem:               stage 1's first conv has stride `stem_stride` (1, 2 or 4; padding kernel // 2),
                        so an S-px input becomes a ceil(S / stride)-px map before the first pool
    stage 1 .. depth:   [conv(kernel) -> [BN] -> act] x its share of `layers`
                        (residual: wrapped as act(body(x) + shortcut(x)); the shortcut is a
                        strided 1x1 projection where the stage changes channels or strides)
                        -> [attention] -> pool 2x2
    head:               gap | flatten -> [Linear(fc_units) -> act] -> Dropout -> Linear(classes)
    hog: true:          gap | flatten, concatenated with the input's HOG features
                        (search/trial/hog.py), then the head's Linear layers

Where the input cannot hold what the config asks for (``depth: 6`` on 8x8 digits,
``stem_stride: 4`` on 12x12 images) the architecture is adjusted rather than refused, and
every adjustment is written in the module's ``notes`` so it ends up on the trial instead
of being silent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from search.trial.backbones import build_backbone
from search.trial.builders import build_with_builder
from search.trial.errors import ModelError
from search.trial.hog import Hog
from spaces.schema import TrialConfig
from spaces.space import Space

logger = logging.getLogger(__name__)

MAX_CHANNELS = 512
MIN_MAP_SIZE = 2  # no pooling stage may shrink the feature map below 2x2
MIN_STEM_MAP = 2 * MIN_MAP_SIZE  # the stem leaves at least a 4x4 map: one stage can still halve it
STEM_STRIDES = (4, 2, 1)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def build_model(config: TrialConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the model a config describes, for images of ``input_shape`` (C, H, W).

    ``config.builder`` calls your own builder (:mod:`search.trial.builders`); otherwise
    ``config.model == "cnn"`` builds the custom family, any other value a torchvision
    backbone (:func:`search.trial.backbones.build_backbone`). The returned module has
    ``notes: list[str]``, one line per adjustment made to fit the input (empty when none).
    Weights are initialised from ``config.seed`` without touching the caller's global
    random state. Raises :class:`ModelError` for a shape it cannot build, or pretrained
    weights it cannot read. From a plain dict or a recipe: :func:`search.build_model`.
    """
    _check_shape(input_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.builder is not None:
            model: nn.Module = build_with_builder(config, input_shape, num_classes)
        elif config.model == "cnn":
            model = Cnn(config, input_shape, num_classes)
        else:
            model = build_backbone(config, input_shape, num_classes)
            if config.hog:
                model.notes.append(f"hog ignored: HOG fusion is a choice of the custom CNN (model 'cnn'), "
                                   f"not of {config.model!r}")
    for note in model.notes:
        logger.info("%s: %s", config.builder or config.model, note)
    return model


def _check_shape(input_shape: tuple[int, int, int], num_classes: int) -> None:
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(isinstance(n, int) and n >= 1 for n in input_shape)):
        raise ModelError(f"input_shape={input_shape!r} is not accepted; it takes (channels, height, width), "
                         "three positive integers")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes={num_classes!r} is not accepted; it takes a positive integer")


@dataclass(frozen=True)
class CnnPlan:
    """The custom family's architecture after fitting the config to the input.

    ``stem_stride`` is the stride of stage 1's first conv, ``convs[i]`` the number of conv
    layers of stage ``i``, ``channels[i]`` its filters, ``pooled`` whether the stages end in
    a 2x2 pool, ``notes`` what was adjusted and why.
    """

    stem_stride: int
    convs: tuple[int, ...]
    channels: tuple[int, ...]
    pooled: bool
    notes: tuple[str, ...]


def downsampling_capacity(height: int, width: int) -> int:
    """How many 2x2 pools an ``height x width`` map takes before it would fall below 2x2."""
    stages = 0
    while height // 2 >= MIN_MAP_SIZE and width // 2 >= MIN_MAP_SIZE:
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


def after_stem(height: int, width: int, stride: int) -> tuple[int, int]:
    """The map a ``stride`` first conv (padding kernel // 2) makes of a ``height x width`` input."""
    return -(-height // stride), -(-width // stride)


def fit_stem_stride(stride: int, height: int, width: int) -> int:
    """The largest of 4, 2, 1 up to ``stride`` that leaves a ``height x width`` input at least 4x4 (else 1)."""
    return next((s for s in STEM_STRIDES if s <= stride and min(after_stem(height, width, s)) >= MIN_STEM_MAP), 1)


def _input_words(height: int, width: int, stride: int) -> str:
    """``the 64x64 input (16x16 after stem_stride 4)``: what a note says the stages were fitted to."""
    if stride == 1:
        return f"the {height}x{width} input"
    return "the {}x{} input ({}x{} after stem_stride {})".format(height, width, *after_stem(height, width, stride),
                                                                   stride)


def plan_cnn(config: TrialConfig, input_shape: tuple[int, int, int]) -> CnnPlan:
    """Fit ``stem_stride``, ``depth``, ``layers`` and channel counts of ``config`` to ``input_shape``.

    The stem stride is lowered (4, 2, 1) until the map after it is at least 4x4, so that a
    stage can still halve it; depth is clamped to the downsampling stages that map holds,
    then to ``layers`` (each stage needs a conv); layers are spread as evenly as possible,
    earlier stages getting the extra ones; channels are ``round(width * growth**i)`` capped
    at ``MAX_CHANNELS``.
    """
    _, height, width = input_shape
    notes: list[str] = []
    stride = fit_stem_stride(config.stem_stride, height, width)
    if stride != config.stem_stride:
        small = "x".join(map(str, after_stem(height, width, config.stem_stride)))
        notes.append(f"stem_stride {config.stem_stride} clamped to {stride}: the {height}x{width} input would be "
                     f"{small} after it, and a stage needs at least {MIN_STEM_MAP}x{MIN_STEM_MAP} to halve")
    where = _input_words(height, width, stride)
    height, width = after_stem(height, width, stride)
    depth = config.depth
    capacity = downsampling_capacity(height, width)
    pooled = capacity > 0
    if not pooled:
        # Smaller than 4x4: pooling would leave a 1x1 map, so one stage keeps the full map.
        if depth > 1:
            notes.append(f"depth {depth} clamped to 1: the {height}x{width} input holds no downsampling stage")
        notes.append(f"no pooling: the {height}x{width} input cannot be halved and stay >= 2x2")
        depth = 1
    elif depth > capacity:
        notes.append(f"depth {depth} clamped to {capacity}: {where} holds "
                     f"{capacity} downsampling stage{'s' if capacity > 1 else ''}")
        depth = capacity
    layers = config.layers
    if layers is None:
        layers = depth
    elif layers < depth:
        notes.append(f"depth {depth} clamped to {layers}: layers={layers} gives each stage at least one conv")
        depth = layers
    convs = tuple(layers // depth + (1 if i < layers % depth else 0) for i in range(depth))
    wanted = [round(config.width * config.growth ** i) for i in range(depth)]
    channels = tuple(min(MAX_CHANNELS, n) for n in wanted)
    if wanted[-1] > MAX_CHANNELS:
        notes.append(f"channels {wanted} capped at {MAX_CHANNELS}")
    return CnnPlan(stem_stride=stride, convs=convs, channels=channels, pooled=pooled, notes=tuple(notes))


def as_built(config: TrialConfig, input_shape: tuple[int, int, int]) -> TrialConfig:
    """``config`` with the values :func:`build_model` actually uses for ``input_shape`` (a clamped depth or stride).

    Building the result gives the same network, with the same initial weights, as building
    ``config``: this is the config a trial records and a recipe exports, so what a user reads
    is what was trained. The adjustment itself is in the model's ``notes``.
    """
    if config.model != "cnn" or config.builder is not None:
        return config
    plan = plan_cnn(config, input_shape)
    return config.replace(depth=len(plan.convs), stem_stride=plan.stem_stride)


def space_fit_warning(space: Space, input_shape: tuple[int, ...]) -> str | None:
    """One line when ``space`` asks for a deeper custom CNN than ``input_shape`` holds, else None.

    Said once when a study's workers start: every trial asking for more is built at the
    depth the input holds (and notes it), so those depths are one network under several names.
    What the input holds is counted after the space's smallest stem stride (the least it shrinks).
    """
    if not space.strict or space.builder is not None:
        return None
    model = space.params.get("model")
    models = model.options() if model is not None else (space.fixed.get("model", TrialConfig().model),)
    depth = space.params.get("depth")
    if depth is None:
        asked = space.fixed.get("depth", TrialConfig().depth)
    else:
        asked = max(depth.options()) if depth.type == "categorical" else depth.high
    stem = space.params.get("stem_stride")
    stride = min(stem.options()) if stem is not None else space.fixed.get("stem_stride", TrialConfig().stem_stride)
    _, height, width = input_shape
    stride = fit_stem_stride(stride, height, width)
    capacity = max(1, downsampling_capacity(*after_stem(height, width, stride)))
    if "cnn" not in models or asked <= capacity:
        return None
    return (f"space {space.name!r} asks for depth up to {asked}, but {_input_words(height, width, stride)} holds "
            f"{capacity} downsampling stage{'s' if capacity > 1 else ''}: deeper configs are built (and recorded) "
            f"with depth {capacity}, the same network; widen the images (--image-size) or lower the space's depth")


class SpatialAttention(nn.Module):
    """CBAM's spatial gate (Woo et al. 2018): sigmoid(conv([mean_c x, max_c x])) * x.

    Hand-written because torchvision has squeeze-excitation (``torchvision.ops.misc``)
    but no CBAM. The paper's 7x7 kernel is shrunk on small maps to ``2 * size - 1``, the
    size at which every pixel already sees the whole map; a larger one would only add
    weights that look at zero padding.
    """

    def __init__(self, map_size: int) -> None:
        super().__init__()
        kernel = min(7, 2 * map_size - 1)
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(maps))


def channel_attention(channels: int) -> SqueezeExcitation:
    """Squeeze-excitation with a reduction of 4 (narrow stages) up to the paper's 16 (wide ones)."""
    reduction = min(16, max(4, channels // 8))
    return SqueezeExcitation(channels, max(1, channels // reduction))


def attention(kind: str, channels: int, map_size: int) -> list[nn.Module]:
    """The attention modules of one stage: none, channel (SE), spatial, or both (CBAM order)."""
    modules: list[nn.Module] = []
    if kind in ("channel", "both"):
        modules.append(channel_attention(channels))
    if kind in ("spatial", "both"):
        modules.append(SpatialAttention(map_size))
    return modules


class Stage(nn.Module):
    """One stage: its convs and attention, as a plain stack or a residual block, then the pool.

    Residual: ``act(body(x) + shortcut(x))`` as in ResNet, so the body's last conv has no
    activation of its own, and attention sits in the body before the sum (as SE-ResNet and
    CBAM place it). The shortcut is a 1x1 conv [+ BN] projection, with the stage's
    ``stride``, when channels or size change. ``stride`` is that of the first conv (the
    stem's, in stage 1); ``map_size`` is the larger side of the map after it (it sizes the
    spatial attention kernel); ``pooled`` says whether the stage ends in the config's 2x2 pool.
    """

    def __init__(self, in_channels: int, out_channels: int, convs: int, map_size: int, pooled: bool,
                 config: TrialConfig, stride: int = 1) -> None:
        super().__init__()
        activation = ACTIVATIONS[config.activation]
        batch_norm, residual, kernel = config.batch_norm, config.residual, config.kernel
        body: list[nn.Module] = []
        for i in range(convs):
            body.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel,
                                  stride=stride if i == 0 else 1, padding=kernel // 2, bias=not batch_norm))
            if batch_norm:
                body.append(nn.BatchNorm2d(out_channels))
            if not (residual and i == convs - 1):
                body.append(activation())
        body += attention(config.attention, out_channels, map_size)
        self.body = nn.Sequential(*body)
        self.shortcut: nn.Module | None = None
        self.activation: nn.Module | None = None
        if residual:
            if in_channels == out_channels and stride == 1:
                self.shortcut = nn.Identity()
            else:
                projection: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                                         bias=not batch_norm)]
                if batch_norm:
                    projection.append(nn.BatchNorm2d(out_channels))
                self.shortcut = nn.Sequential(*projection)
            self.activation = activation()
        self.pool: nn.Module = nn.Identity()
        if pooled:
            self.pool = nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.shortcut is not None and self.activation is not None:
            out = self.activation(out + self.shortcut(x))
        return self.pool(out)


class Cnn(nn.Module):
    """The custom CNN family: ``features`` (one :class:`Stage` per stage), then ``head``.

    ``plan`` is the fitted architecture (:func:`plan_cnn`) and ``notes`` its adjustments.
    With ``hog: true``, ``hog`` (:class:`search.trial.hog.Hog`) computes the input's HOG
    features and ``readout`` (gap or flatten) comes out of ``head``, so that the two can be
    concatenated in between; otherwise both are ``None`` and ``head`` holds the readout,
    as it always has (the state_dict keys of weights exported before HOG existed still fit).
    """

    def __init__(self, config: TrialConfig, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        if config.pretrained:
            raise ModelError("config: pretrained=true is not accepted for model 'cnn' (the custom family has "
                             "no pretrained weights); set pretrained: false or pick a torchvision backbone")
        self.plan = plan_cnn(config, input_shape)
        self.notes: list[str] = list(self.plan.notes)
        if config.weights_path is not None:
            self.notes.append(f"weights_path {config.weights_path!r} ignored: model 'cnn' has no "
                              "pretrained weights")
        if config.input_size is not None:
            self.notes.append(f"input_size {config.input_size} ignored: model 'cnn' is built for the data's size")
        channels, height, width = input_shape
        stride = self.plan.stem_stride
        height, width = after_stem(height, width, stride)
        stages: list[nn.Module] = []
        for convs, out_channels in zip(self.plan.convs, self.plan.channels, strict=True):
            stages.append(Stage(channels, out_channels, convs, max(height, width), self.plan.pooled, config, stride))
            channels, stride = out_channels, 1
            if self.plan.pooled:
                height, width = height // 2, width // 2
        self.features = nn.Sequential(*stages)

        head: list[nn.Module]
        if config.head == "gap":
            head, features = [nn.AdaptiveAvgPool2d(1), nn.Flatten()], channels
        else:
            head, features = [nn.Flatten()], channels * height * width
        self.hog: Hog | None = None
        self.readout: nn.Module | None = None
        if config.hog:
            self.hog = Hog(input_shape, config.hog_cell, config.hog_orientations, config.hog_block, config.hog_norm)
            self.notes += self.hog.notes
            self.readout, head = nn.Sequential(*head), []
            features += self.hog.size
        if config.fc_units > 0:
            head += [nn.Linear(features, config.fc_units), ACTIVATIONS[config.activation]()]
            features = config.fc_units
        head += [nn.Dropout(config.dropout), nn.Linear(features, num_classes)]
        self.head = nn.Sequential(*head)
        initialise(self, config.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        if self.hog is not None and self.readout is not None:
            out = torch.cat([self.readout(out), self.hog(x).to(out.dtype)], dim=1)
        return self.head(out)


def initialise(model: nn.Module, scheme: str) -> None:
    """Apply an init scheme: "default" (torch's), "kaiming" (convs) or "xavier" (convs and linears).

    Kaiming uses fan_out/relu as torchvision's ResNet does; batch norms always start at
    weight 1, bias 0 (also torch's default, restated so no scheme can disturb it).
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif scheme == "kaiming" and isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            _zero_bias(module)
        elif scheme == "xavier" and isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            _zero_bias(module)


def _zero_bias(module: nn.Conv2d | nn.Linear) -> None:
    if module.bias is not None:
        nn.init.zeros_(module.bias)
