"""The configuration keys a trial understands, with their documented defaults.

A *config* (:class:`TrialConfig`) is what one trial trains from: a frozen record of every
key below, stored as a plain dict (:meth:`TrialConfig.to_dict`, which JSON and YAML
round-trip unchanged). A space names some of these keys as parameters or fixed values;
every key it leaves out takes its default, so a three-line space file is a valid space.

Each key also declares its domain, so a space that could suggest a value the trainer
would reject (``optimizer: rmsprop``, ``dropout: 1.5``) is refused when it is loaded,
not an hour into a study.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import InitVar, dataclass, field, fields
from typing import Any, get_args, get_type_hints

from spaces.errors import SpaceError

SCALARS = (str, int, float, bool, type(None))
"""The values a config key, a searched parameter or a builder's argument may take: single values."""

BACKBONES = ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "vgg11_bn", "alexnet", "lenet5")


@dataclass(frozen=True)
class Key:
    """One config key: its default, its type and the values it accepts."""

    default: Any
    kind: type  # bool, int, float or str
    doc: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    high_open: bool = False  # True when `high` itself is not accepted
    nullable: bool = False

    def accepts(self) -> str:
        """What this key accepts, in words, for error messages."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind is object:
            text = "any single value"
        elif self.kind is dict:
            text = "a mapping of the builder's keyword arguments to single values"
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "text"
        else:
            name = "an integer" if self.kind is int else "a number"
            if self.low is not None and self.high is not None:
                close = ")" if self.high_open else "]"
                text = f"{name} in [{self.low:g}, {self.high:g}{close}"
            elif self.low is not None:
                text = f"{name} >= {self.low:g}"
            else:
                text = name
        return text + (" or null" if self.nullable else "")

    def check(self, value: Any) -> bool:
        """Whether ``value`` is in this key's domain."""
        if value is None:
            return self.nullable
        if self.kind is object:  # a builder's key whose default is None: the loader admits only single values
            return True
        if self.kind is dict:
            return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, SCALARS)
                                                      for k, v in value.items())
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float and not isinstance(value, (int, float)):
            return False
        if self.kind is str and not isinstance(value, str):
            return False
        if self.choices is not None:
            return value in self.choices
        if self.low is not None and value < self.low:
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


def key(default: Any, doc: str, *, choices: tuple | None = None, low: float | None = None,
        high: float | None = None, high_open: bool = False, hashed: bool = True) -> Any:
    """A :class:`TrialConfig` field: its default and domain; type and nullability come from its annotation.

    ``hashed=False`` leaves a mapping-valued key out of the config's hash (a dict has none).
    """
    return field(default=default, hash=hashed, metadata={"key": {"doc": doc, "choices": choices, "low": low,
                                                                 "high": high, "high_open": high_open}})


@dataclass(frozen=True)
class TrialConfig(Mapping):
    """The complete config one trial trains from: every key, each value in its domain.

    The fields below are the one definition of the config keys (:data:`CONFIG_KEYS` and
    :data:`DEFAULT_CONFIG` are derived from them). Build one with :meth:`from_dict`, which
    fills the keys a partial dict leaves out with their defaults; an instance is valid by
    construction (bad values raise :class:`SpaceError`) and immutable, so code that takes
    a ``TrialConfig`` never checks it again. It reads as a read-only mapping too
    (``config["lr"]``, ``dict(config)``); :meth:`to_dict` gives the JSON/YAML-able dict
    that trials, recipes and ``cnnsearch train --config`` store.
    """

    # --- model family ---
    model: str = key("cnn", "the custom CNN family, or a torchvision backbone", choices=("cnn", *BACKBONES))
    pretrained: bool = key(False, "backbones: start from ImageNet weights (weights_path, else the torch hub cache, "
                                  "downloaded into it only with --download-weights)")
    weights_path: str | None = key(None, "backbones: a local weights file to start from")
    builder: str | None = key(None, "your own model instead of the family above: the space's "
                              "`model: {builder: ...}` ('module:function' or '/path/file.py:function'); "
                              "null: the built-in family")
    builder_args: dict | None = key(None, "with a builder: the values of its keyword arguments (the keys it "
                                    "declares); null without a builder", hashed=False)
    # --- fine-tuning (mostly for pretrained backbones) ---
    freeze: str = key("none", "parameters that do not train: none, every layer but the output layer (body), or the "
                      "first freeze_stages stages from the input (stages)", choices=("none", "body", "stages"))
    freeze_stages: int = key(1, "with freeze: stages, how many stages from the input are frozen", low=1, high=16)
    unfreeze_epoch: int | None = key(None, "epoch from which the frozen parameters train too (gradual "
                                     "unfreezing); null: they stay frozen", low=1, high=1000)
    body_lr_mult: float = key(1.0, "learning rate of every layer but the output layer, as a multiple of lr",
                              low=0.0, high=10.0)
    input_size: int | None = key(None, "backbones: side the images are resized to on the device; null: the "
                                 "backbone's native size when pretrained, the data's size otherwise", low=8, high=1024)
    gray_to_rgb: str = key("average", "pretrained backbones on grayscale images: average the first conv's RGB "
                           "filters, or replicate the grey channel three times", choices=("average", "replicate"))
    # --- custom CNN architecture ---
    stem_stride: int = key(1, "stride of the first conv layer: each 2 halves the image before the first stage "
                           "(large images)", choices=(1, 2, 4))
    depth: int = key(2, "number of conv stages; each stage halves the feature map", low=1, high=8)
    layers: int | None = key(None, "total conv layers spread over the stages (default: one per stage)",
                             low=1, high=64)
    width: int = key(32, "filters of the first stage", low=1, high=1024)
    growth: float = key(2.0, "filter multiplier from one stage to the next", low=1.0, high=4.0)
    kernel: int = key(3, "conv filter size (odd)", choices=(1, 3, 5, 7, 9, 11))
    activation: str = key("relu", "activation function", choices=("relu", "gelu", "silu", "leaky_relu"))
    batch_norm: bool = key(True, "batch normalisation after each conv")
    residual: bool = key(False, "residual connections (projection when shapes change)")
    attention: str = key("none", "attention per stage: squeeze-excitation (channel), spatial, or CBAM-style both",
                         choices=("none", "channel", "spatial", "both"))
    pool: str = key("max", "downsampling between stages", choices=("max", "avg"))
    head: str = key("flatten", "classifier head: flatten the feature map, or global average pool",
                    choices=("gap", "flatten"))
    fc_units: int = key(0, "hidden units of an extra fully connected layer in the head (0: none)", low=0, high=8192)
    dropout: float = key(0.0, "dropout before the classifier", low=0.0, high=1.0, high_open=True)
    init: str = key("default", "weight initialisation", choices=("default", "kaiming", "xavier"))
    # --- HOG feature fusion (custom CNN; computed on the device, as skimage.feature.hog) ---
    hog: bool = key(False, "fuse HOG features of the input with the CNN's pooled features before the head")
    hog_cell: int = key(4, "HOG: pixels per cell side", low=1, high=64)
    hog_orientations: int = key(9, "HOG: orientation bins over 0-180 degrees", low=2, high=36)
    hog_block: int = key(2, "HOG: cells per block side (blocks overlap by all but one cell)", low=1, high=8)
    hog_norm: str = key("l2_hys", "HOG: block normalisation", choices=("l1", "l1_sqrt", "l2", "l2_hys"))
    # --- optimisation ---
    optimizer: str = key("adam", "optimizer", choices=("sgd", "adam", "adamw"))
    lr: float = key(1e-3, "peak learning rate", low=1e-7, high=10.0)
    momentum: float = key(0.9, "SGD momentum", low=0.0, high=1.0, high_open=True)
    weight_decay: float = key(0.0, "L2 weight decay", low=0.0, high=1.0)
    schedule: str = key("cosine", "learning-rate schedule over the epochs",
                        choices=("constant", "step", "cosine", "onecycle"))
    batch_size: int = key(64, "training batch size", low=1, high=65536)
    epochs: int = key(5, "training epochs (the pruners' resource)", low=1, high=1000)
    loss: str = key("cross_entropy", "training loss", choices=("cross_entropy", "focal"))
    focal_gamma: float = key(2.0, "focal loss focusing parameter", low=0.0, high=10.0)
    label_smoothing: float = key(0.0, "label smoothing", low=0.0, high=1.0, high_open=True)
    # --- augmentation (batched tensor ops on the device) ---
    aug_flip: bool = key(False, "random horizontal flip")
    aug_translate: int = key(0, "random translation by up to this many pixels (padded crop)", low=0, high=64)
    aug_rotate: float = key(0.0, "random rotation by up to this many degrees", low=0.0, high=180.0)
    aug_jitter: float = key(0.0, "random brightness/contrast change of up to this fraction", low=0.0, high=1.0)
    aug_noise: float = key(0.0, "Gaussian noise with this standard deviation (images in [0, 1])", low=0.0, high=1.0)
    # --- reproducibility ---
    seed: int = key(0, "random seed of the trial (model init, batch order, augmentation)", low=0)

    where: InitVar[str] = "config"
    """Names the config's origin (a file, a space) in the error a bad value raises."""

    def __post_init__(self, where: str) -> None:
        for name in CONFIG_KEYS:
            check_value(name, getattr(self, name), where)
        if self.builder_args is not None:
            if self.builder is None:
                raise SpaceError(f"{where}: builder_args={self.builder_args!r} without a builder; set builder "
                                 "(the space's `model: {builder: ...}`) or drop builder_args")
            object.__setattr__(self, "builder_args", dict(self.builder_args))  # a copy: the config stays as built

    @classmethod
    def from_dict(cls, partial: Mapping[str, Any], where: str = "config") -> TrialConfig:
        """The config that sets ``partial``'s keys and leaves every other key at its default.

        Raises :class:`SpaceError` (one line starting with ``where``) for a key the trainer
        does not know, with the closest known name, or a value outside its key's domain.
        A ``TrialConfig`` is returned as it is: it was checked when it was built.
        """
        if isinstance(partial, TrialConfig):
            return partial
        for name in partial:
            if name not in CONFIG_KEYS:
                raise SpaceError(unknown_key_message(name, where))
        return cls(**partial, where=where)

    def to_dict(self) -> dict[str, Any]:
        """Every key and its value, in field order: plain JSON and YAML scalars, read back by :meth:`from_dict`."""
        data = {name: getattr(self, name) for name in CONFIG_KEYS}
        if data["builder_args"] is not None:
            data["builder_args"] = dict(data["builder_args"])
        return data

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with ``changes`` applied, checked as :meth:`from_dict` checks a dict."""
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def __getitem__(self, name: str) -> Any:
        if name not in CONFIG_KEYS:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(CONFIG_KEYS)

    def __len__(self) -> int:
        return len(CONFIG_KEYS)


def _config_keys() -> dict[str, Key]:
    """Each :class:`TrialConfig` field as a :class:`Key`: its type and nullability read from its annotation."""
    hints = get_type_hints(TrialConfig)
    keys = {}
    for f in fields(TrialConfig):
        hint = hints[f.name]
        nullable = type(None) in get_args(hint)  # `int | None`
        kind = next(t for t in get_args(hint) if t is not type(None)) if nullable else hint
        keys[f.name] = Key(default=f.default, kind=kind, nullable=nullable, **f.metadata["key"])
    return keys


CONFIG_KEYS: dict[str, Key] = _config_keys()
"""Config key name -> its :class:`Key`, in :class:`TrialConfig` field order."""

DEFAULT_CONFIG: dict[str, Any] = {name: k.default for name, k in CONFIG_KEYS.items()}

AUGMENTATION_KEYS = tuple(name for name in CONFIG_KEYS if name.startswith("aug_"))
"""The training-time augmentation keys (batched tensor ops on the device)."""


ALIASES = {"learning_rate": "lr", "bs": "batch_size", "batchsize": "batch_size", "bn": "batch_norm",
           "batchnorm": "batch_norm", "kernel_size": "kernel", "filters": "width", "num_layers": "layers",
           "n_layers": "layers", "wd": "weight_decay", "lr_schedule": "schedule", "scheduler": "schedule",
           "optim": "optimizer", "n_epochs": "epochs", "num_epochs": "epochs"}
"""Names other tools use for our keys, so a typo-ish name gets the right suggestion."""


def unknown_key_message(name: str, where: str) -> str:
    """The one-line error for a key the trainer does not know, with the closest match."""
    close = [ALIASES[name.lower()]] if name.lower() in ALIASES else difflib.get_close_matches(name, CONFIG_KEYS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown parameter {name!r}{hint}; known parameters: {', '.join(CONFIG_KEYS)}"


def check_value(name: str, value: Any, where: str) -> None:
    """Raise :class:`SpaceError` unless ``value`` is in the domain of key ``name``."""
    if name not in CONFIG_KEYS:
        raise SpaceError(unknown_key_message(name, where))
    key = CONFIG_KEYS[name]
    if not key.check(value):
        raise SpaceError(f"{where}: {name}={value!r} is not accepted; {name} takes {key.accepts()}")


# --- combinations that do nothing ------------------------------------------------------


@dataclass(frozen=True)
class Inert:
    """A key whose value has no effect in configs where ``holds(value, config)``: ``why`` says why, ``fix`` what to do.

    ``reads`` names the other keys ``holds`` looks at: a space that searches one of them
    has the combination in some trials only (each such trial notes it), one that fixes
    them (or leaves them at their defaults) has it in every trial and is refused.
    """

    key: str
    reads: tuple[str, ...]
    holds: Callable[[Any, Mapping[str, Any]], bool]
    why: Callable[[Any, Mapping[str, Any]], str]
    fix: str


def _trains_frozen(config: Mapping[str, Any]) -> bool:
    return config["freeze"] != "none"


INERT: tuple[Inert, ...] = (
    Inert("unfreeze_epoch", ("freeze",), lambda v, c: v is not None and not _trains_frozen(c),
          lambda v, c: "freeze is none, so nothing is frozen to release",
          "give freeze: body or stages, or leave unfreeze_epoch out"),
    Inert("unfreeze_epoch", ("freeze",), lambda v, c: v == 1 and _trains_frozen(c),
          lambda v, c: "epoch 1 releases the frozen layers before the first step, so nothing is ever frozen",
          "give unfreeze_epoch 2 or later, or freeze: none"),
    Inert("unfreeze_epoch", ("freeze", "epochs"), lambda v, c: v is not None and v > c["epochs"] and _trains_frozen(c),
          lambda v, c: f"training ends after epoch {c['epochs']}, so the frozen layers are never released",
          "give unfreeze_epoch <= epochs, or leave it out to keep them frozen"),
    Inert("freeze_stages", ("freeze",), lambda v, c: c["freeze"] != "stages",
          lambda v, c: f"freeze is {c['freeze']}, and freeze_stages counts the stages frozen by freeze: stages",
          "give freeze: stages, or leave freeze_stages out"),
    Inert("body_lr_mult", ("freeze", "unfreeze_epoch"),
          lambda v, c: c["freeze"] == "body" and c["unfreeze_epoch"] is None,
          lambda v, c: "freeze is body and unfreeze_epoch is null, so the body never trains",
          "give unfreeze_epoch, or freeze: none or stages, or leave body_lr_mult out"),
    Inert("gray_to_rgb", ("pretrained",), lambda v, c: not c["pretrained"],
          lambda v, c: "pretrained is false, and gray_to_rgb adapts pretrained RGB weights to grey images",
          "set pretrained: true, or leave gray_to_rgb out"),
    Inert("weights_path", ("pretrained",), lambda v, c: v is not None and not c["pretrained"],
          lambda v, c: "pretrained is false, so no weights are loaded",
          "set pretrained: true, or leave weights_path out"),
    Inert("input_size", ("model",), lambda v, c: v is not None and c["model"] == "cnn" and c["builder"] is None,
          lambda v, c: "model 'cnn' is built for the data's size; input_size resizes a backbone's input",
          "pick a backbone (model: resnet18, ...), or leave input_size out"),
    Inert("stem_stride", ("model",), lambda v, c: c["model"] != "cnn" and c["builder"] is None,
          lambda v, c: f"model {c['model']!r} has its own first layer; stem_stride strides the custom CNN's",
          "give model: cnn, or leave stem_stride out (input_size resizes a backbone's images)"),
    Inert("pretrained", ("model",), lambda v, c: v is True and c["model"] in ("cnn", "lenet5") and c["builder"] is None,
          lambda v, c: f"model {c['model']!r} has no published pretrained weights (its trials would fail)",
          f"pick a backbone with weights ({', '.join(b for b in BACKBONES if b != 'lenet5')}), or pretrained: false"),
)
"""Every combination of keys in which a key does nothing (or, for ``pretrained``, cannot be built)."""


def inert_message(rule: Inert, value: Any, config: Mapping[str, Any], shown: str | None = None,
                  aside: str = "") -> str:
    """``unfreeze_epoch=3 has no effect: <why>; <fix>``: the key, its value (or ``shown``), the reason and the fix."""
    verb = "cannot be used" if rule.key == "pretrained" else "has no effect"
    return f"{rule.key}{shown or f'={value!r}'} {verb}: {rule.why(value, config)}{aside}; {rule.fix}"


def ineffective(config: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """One line per key of ``config`` (among ``keys``, default all) set off its default that does nothing there.

    A trial's config can hold such a value when the space searches the keys involved
    (``freeze`` searched, ``unfreeze_epoch`` too): the trial trains as if the key were at its
    default, and records these lines as its notes. A space that fixes the combination is
    refused when it is loaded (:func:`spaces.loader.parse_space`).
    """
    wanted = set(CONFIG_KEYS if keys is None else keys)
    return [inert_message(rule, config[rule.key], config) for rule in INERT
            if rule.key in wanted and config[rule.key] != CONFIG_KEYS[rule.key].default
            and rule.holds(config[rule.key], config)]
