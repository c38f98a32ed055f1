"""The configuration keys a trial understands, with their documented defaults.

A *config* is the plain dict one trial trains from (JSON round-trips it unchanged). A
space names some of these keys as parameters or fixed values; every key it leaves out
takes the default below, so a three-line space file is a valid space.

Each key also declares its domain, so a space that could suggest a value the trainer
would reject (``optimizer: rmsprop``, ``dropout: 1.5``) is refused when it is loaded,
not an hour into a study.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from spaces.errors import SpaceError

BACKBONES = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11_bn", "alexnet", "lenet5")


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
        elif self.kind is bool:
            text = "true or false"
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


CONFIG_KEYS: dict[str, Key] = {
    # --- model family ---
    "model": Key("cnn", str, "the custom CNN family, or a torchvision backbone",
                 choices=("cnn", *BACKBONES)),
    "pretrained": Key(False, bool, "backbones: start from ImageNet weights (local file or torch hub cache only)"),
    "weights_path": Key(None, str, "backbones: a local weights file to start from", nullable=True),
    # --- custom CNN architecture ---
    "depth": Key(2, int, "number of conv stages; each stage halves the feature map", low=1, high=8),
    "layers": Key(None, int, "total conv layers spread over the stages (default: one per stage)",
                  low=1, high=64, nullable=True),
    "width": Key(32, int, "filters of the first stage", low=1, high=1024),
    "growth": Key(2.0, float, "filter multiplier from one stage to the next", low=1.0, high=4.0),
    "kernel": Key(3, int, "conv filter size (odd)", choices=(1, 3, 5, 7, 9, 11)),
    "activation": Key("relu", str, "activation function", choices=("relu", "gelu", "silu", "leaky_relu")),
    "batch_norm": Key(True, bool, "batch normalisation after each conv"),
    "residual": Key(False, bool, "residual connections (projection when shapes change)"),
    "attention": Key("none", str, "attention per stage: squeeze-excitation (channel), spatial, or CBAM-style both",
                     choices=("none", "channel", "spatial", "both")),
    "pool": Key("max", str, "downsampling between stages", choices=("max", "avg")),
    "head": Key("flatten", str, "classifier head: flatten the feature map, or global average pool",
                choices=("gap", "flatten")),
    "fc_units": Key(0, int, "hidden units of an extra fully connected layer in the head (0: none)",
                    low=0, high=8192),
    "dropout": Key(0.0, float, "dropout before the classifier", low=0.0, high=1.0, high_open=True),
    "init": Key("default", str, "weight initialisation", choices=("default", "kaiming", "xavier")),
    # --- optimisation ---
    "optimizer": Key("adam", str, "optimizer", choices=("sgd", "adam", "adamw")),
    "lr": Key(1e-3, float, "peak learning rate", low=1e-7, high=10.0),
    "momentum": Key(0.9, float, "SGD momentum", low=0.0, high=1.0, high_open=True),
    "weight_decay": Key(0.0, float, "L2 weight decay", low=0.0, high=1.0),
    "schedule": Key("cosine", str, "learning-rate schedule over the epochs",
                    choices=("constant", "step", "cosine", "onecycle")),
    "batch_size": Key(64, int, "training batch size", low=1, high=65536),
    "epochs": Key(5, int, "training epochs (the pruners' resource)", low=1, high=1000),
    "loss": Key("cross_entropy", str, "training loss", choices=("cross_entropy", "focal")),
    "focal_gamma": Key(2.0, float, "focal loss focusing parameter", low=0.0, high=10.0),
    "label_smoothing": Key(0.0, float, "label smoothing", low=0.0, high=1.0, high_open=True),
    # --- augmentation (batched tensor ops on the device) ---
    "aug_flip": Key(False, bool, "random horizontal flip"),
    "aug_translate": Key(0, int, "random translation by up to this many pixels (padded crop)", low=0, high=64),
    "aug_rotate": Key(0.0, float, "random rotation by up to this many degrees", low=0.0, high=180.0),
    "aug_jitter": Key(0.0, float, "random brightness/contrast change of up to this fraction", low=0.0, high=1.0),
    "aug_noise": Key(0.0, float, "Gaussian noise with this standard deviation (images in [0, 1])",
                     low=0.0, high=1.0),
    # --- reproducibility ---
    "seed": Key(0, int, "random seed of the trial (model init, batch order, augmentation)", low=0),
}

DEFAULT_CONFIG: dict[str, Any] = {name: key.default for name, key in CONFIG_KEYS.items()}


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


def complete_config(partial: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Fill every key ``partial`` leaves out with its default, checking the keys it sets."""
    for name, value in partial.items():
        check_value(name, value, where)
    config = dict(DEFAULT_CONFIG)
    config.update(partial)
    if config["kernel"] % 2 == 0:
        raise SpaceError(f"{where}: kernel={config['kernel']!r} must be odd")
    return config
