"""Torchvision backbones (and a hand-written LeNet-5) adapted to any image shape and class count.

Each backbone is the torchvision builder with ``weights=None`` and these adaptations:

- the first conv takes the dataset's C channels instead of 3 (pretrained weights on
  grayscale images: the RGB filters averaged, or with ``gray_to_rgb: replicate`` the
  first conv keeps its 3 channels and the grey channel is repeated);
- the last Linear of the classifier is replaced for ``num_classes``;
- inputs are resized (bilinear, batched, on the device) inside the module, as its first
  op: to ``input_size`` when the config gives one, else to the backbone's native size
  (224) when pretrained, else only when smaller than the family's minimum;
- pretrained: the input, normalised with the dataset's statistics as every model's is,
  is renormalised with the ImageNet mean and std the weights were trained with.

Inputs smaller than the family's minimum are always upsampled. ResNet, MobileNet,
EfficientNet and VGG downsample by 32, so 32x32 is the smallest input whose last stage
still has a 1x1 map (VGG's fifth pool fails below it); AlexNet's stride-4 11x11 stem and
three 3x3/2 pools need 63x63; LeNet-5 is upsampled to 28x28, the geometry it was designed
for (28 padded = the paper's 32 unpadded). Resizing inside the model, rather than in the
data pipeline, keeps the stored dataset small and lets the same recipe run on the
original images.

Pretrained weights come from ``config.weights_path`` or the torch hub cache (downloaded
into it only with ``--download-weights``), and a missing file is a :class:`ModelError`
that says which file to place where. The custom family's keys
(depth, width, ...) are ignored. :attr:`Backbone.stages` lists the body's stages from the
input, for ``freeze: stages`` (:mod:`search.trial.finetune`).
"""

from __future__ import annotations

import fcntl
import logging
import os
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from search.trial.errors import ModelError
from spaces.schema import TrialConfig, ineffective

log = logging.getLogger(__name__)

MIN_INPUT_SIZE = {"alexnet": 63, "lenet5": 28}
DEFAULT_MIN_INPUT_SIZE = 32


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998), which torchvision does not ship, with its tanh activations.

    conv6 5x5 pad 2 -> tanh -> avgpool 2 -> conv16 5x5 -> tanh -> adaptive avgpool 5x5 ->
    fc120 -> tanh -> fc84 -> tanh -> classes. The adaptive pool equals the paper's 2x2
    pool on a 28x28 input and lets larger inputs through unchanged otherwise.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Resize(nn.Module):
    """Bilinear resize of a batch to ``size`` (H, W); antialiased when it shrinks, as torchvision's Resize is."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=shrink)


class Renormalize(nn.Module):
    """From input normalised with the data's statistics to input normalised as the weights expect.

    ``data_mean``/``data_std`` (buffers, saved with the model's state dict) are what the
    input was normalised with: (0, 1), i.e. ``x / 255``, until :meth:`Backbone.expect_input`
    sets the training data's. ``channels`` is how many channels the net takes: a grey input
    is repeated to them (broadcasting), each channel then normalised with its own ImageNet
    statistics, exactly what the weights saw for a grey RGB image.
    """

    def __init__(self, in_channels: int, mean: list[float], std: list[float], channels: int) -> None:
        super().__init__()
        if channels != len(mean):  # the averaged first conv sees one value per pixel: average statistics
            mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
        self.register_buffer("data_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("data_std", torch.ones(1, in_channels, 1, 1))
        self.register_buffer("weights_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("weights_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.data_std + self.data_mean - self.weights_mean) / self.weights_std


class Backbone(nn.Module):
    """A backbone ``net`` behind ``resize`` (a :class:`Resize`, or identity) and ``renormalize``.

    ``notes`` lists what was adapted for this input (resizing, channel averaging);
    ``stages`` the body's stages from the input (each a list of modules), for freezing.
    """

    def __init__(self, net: nn.Module, resize: nn.Module, notes: list[str], renormalize: nn.Module | None = None,
                 stages: list[list[nn.Module]] | None = None) -> None:
        super().__init__()
        self.resize = resize
        self.renormalize = renormalize if renormalize is not None else nn.Identity()
        self.net = net
        self.notes = notes
        self.stages = stages or []

    def expect_input(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Say the input is normalised with per-channel ``mean`` and ``std`` (the training data's statistics)."""
        if isinstance(self.renormalize, Renormalize):
            self.renormalize.data_mean.copy_(mean.view(self.renormalize.data_mean.shape))
            self.renormalize.data_std.copy_(std.view(self.renormalize.data_std.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.renormalize(self.resize(x)))


def build_backbone(config: TrialConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build backbone ``config.model`` for ``input_shape`` (C, H, W) and ``num_classes``.

    Returns a :class:`Backbone` with ``notes``. Weights start from torch's default init
    (drawn from the global RNG: :func:`search.trial.models.build_model` seeds it), or from
    ImageNet weights read from a local file when ``config.pretrained``. Raises
    :class:`ModelError` when pretrained weights are asked for and cannot be read.
    """
    name = config.model
    channels, height, width = input_shape
    notes: list[str] = []
    renormalize = None
    notes += ineffective(config, ("weights_path", "gray_to_rgb"))
    if name == "lenet5":
        if config.pretrained:
            raise ModelError("config: pretrained=true is not accepted for model 'lenet5' (there are no "
                             "published weights for it); set pretrained: false or pick another backbone")
        net: nn.Module = LeNet5(channels, num_classes)
    else:
        # Look for the weights first: a missing file is reported before seconds of building VGG.
        path = find_weights(name, config.weights_path) if config.pretrained else None
        net = torchvision.models.get_model(name, weights=None)
        if path is not None:
            load_pretrained(net, name, path)
        replicate = config.pretrained and config.gray_to_rgb == "replicate" and channels == 1
        if config.pretrained and config.gray_to_rgb == "replicate" and channels != 1:
            notes.append(f"gray_to_rgb='replicate' has no effect: the images have {channels} channels, not 1")
        if replicate:
            notes.append("the grey channel is repeated for the first conv's 3 RGB channels")
        else:
            notes += _adapt_first_conv(net, channels, averaged=config.pretrained)
        if config.pretrained:
            preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
            renormalize = Renormalize(channels, list(preset.mean), list(preset.std), 3 if replicate else channels)
            notes.append("the input is renormalised with the ImageNet mean and std the weights were trained with")
        _replace_classifier(net, num_classes)
    resize = _resize(config, name, height, width, notes)
    return Backbone(net, resize, notes, renormalize, _stages(net))


def native_size(name: str) -> int:
    """The side of the images torchvision's weights for backbone ``name`` were evaluated at (224)."""
    return torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]


def _resize(config: TrialConfig, name: str, height: int, width: int, notes: list[str]) -> nn.Module:
    """The resize in front of the net: to ``input_size``, else native size when pretrained, else the minimum."""
    minimum = MIN_INPUT_SIZE.get(name, DEFAULT_MIN_INPUT_SIZE)
    if config.input_size is not None:
        side, why = config.input_size, "input_size"
    elif config.pretrained:
        side, why = native_size(name), f"{name}'s native size with pretrained weights"
    else:
        side, why = None, ""
    if side is not None and side < minimum:
        notes.append(f"input_size {side} raised to {minimum}: {name} needs at least {minimum}x{minimum}")
        side = minimum
    if side is not None:
        size = (side, side)
    elif height < minimum or width < minimum:
        size = (max(height, minimum), max(width, minimum))
        why = f"{name} needs at least {minimum}x{minimum}"
    else:
        return nn.Identity()
    if size == (height, width):
        return nn.Identity()
    verb = "upsampled" if size[0] >= height and size[1] >= width else "resized"
    notes.append(f"the {height}x{width} input is {verb} to {size[0]}x{size[1]} inside the model: {why}")
    return Resize(size)


def _stages(net: nn.Module) -> list[list[nn.Module]]:
    """The body's stages from the input, each the modules it is made of; stages without parameters are left out.

    ResNet: the stem (conv1, bn1), then layer1..layer4. MobileNet and EfficientNet: each
    block of ``features``. VGG, AlexNet and LeNet-5, whose ``features`` are flat: the layers
    up to and including each pooling layer.
    """
    if isinstance(net, torchvision.models.ResNet):
        stages = [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
    else:
        children = list(net.features.children())
        pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
        if any(isinstance(child, pools) for child in children):
            stages, current = [], []
            for child in children:
                current.append(child)
                if isinstance(child, pools):
                    stages.append(current)
                    current = []
            stages.append(current)
        else:
            stages = [[child] for child in children]
    return [stage for stage in stages if any(True for m in stage for _ in m.parameters())]


def hub_cache_path(name: str) -> str:
    """Where torch hub keeps the default ImageNet weights of torchvision model ``name``."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def find_weights(name: str, weights_path: str | None) -> str:
    """The local file holding ``name``'s ImageNet weights: ``weights_path``, else the hub cache copy.

    When neither exists and ``$CNNSEARCH_DOWNLOAD_WEIGHTS`` is 1 (``--download-weights``), the
    hub cache copy is downloaded first (:func:`download_weights`). Raises :class:`ModelError`
    (saying which file to place where) when there is no file.
    """
    path = weights_path if weights_path is not None else hub_cache_path(name)
    if not os.path.isfile(path):
        filename = os.path.basename(hub_cache_path(name))
        if weights_path is not None:
            raise ModelError(f"config: weights_path={weights_path!r} does not exist on this machine; the "
                             f"config fine-tunes from that file: copy it there, or point weights_path at a "
                             f"local copy of the {name} weights ({filename} for ImageNet's)")
        if os.environ.get(DOWNLOAD_WEIGHTS_ENV) == "1":
            return download_weights(name)
        raise ModelError(f"{name} pretrained weights not found: looked for {path} (torch hub cache); put "
                         f"{filename} there, or set weights_path in the config to a local copy, or allow the "
                         "download with --download-weights")
    return path


DOWNLOAD_WEIGHTS_ENV = "CNNSEARCH_DOWNLOAD_WEIGHTS"
"""Set to 1 (by ``--download-weights``) to let :func:`find_weights` download missing hub cache weights."""


def download_weights(name: str) -> str:
    """Download ``name``'s default ImageNet weights into the torch hub cache, once per host; returns the path.

    Workers on one host share the cache: the first takes a file lock beside the file and
    downloads, the others wait on the lock and then find the file. The download is
    torch hub's (a temporary file moved into place only when its SHA-256 matches the
    prefix in torchvision's file name). Raises :class:`ModelError` when it fails.
    """
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    path = hub_cache_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.isfile(path):  # another worker downloaded it while this one waited
                return path
            match = torch.hub.HASH_REGEX.search(os.path.basename(path))
            log.info("downloading %s pretrained weights from %s to %s", name, url, path)
            try:
                torch.hub.download_url_to_file(url, path, match.group(1) if match else None, progress=False)
            except Exception as err:  # offline, refused, a checksum mismatch: all end the same way
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ModelError(f"{name} pretrained weights: downloading {url} failed ({reason}); put "
                                 f"{os.path.basename(path)} at {path}, or set weights_path in the config to a "
                                 "local copy") from err
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def load_pretrained(net: nn.Module, name: str, path: str) -> None:
    """Load the state dict in ``path`` into torchvision model ``net`` (named ``name``).

    The file must be a ``torch.save``-d state dict of the unmodified torchvision model
    (what the hub cache holds); it is read with ``weights_only=True``.
    """
    where = f"{name} pretrained weights"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, a pickle of arbitrary objects, not a torch file at all
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"{where}: cannot read {path} as a state dict ({reason})") from err
    if not isinstance(state, dict):
        raise ModelError(f"{where}: {path} holds a {type(state).__name__}, expected a state dict "
                         "(torch.save(model.state_dict(), path))")
    expected = net.state_dict()
    mismatched = sorted(key for key in expected.keys() | state.keys()
                        if key not in state or key not in expected
                        or getattr(state[key], "shape", None) != expected[key].shape)
    if mismatched:
        raise ModelError(f"{where}: {path} is not a state dict of torchvision's {name} ({len(mismatched)} "
                         f"key(s) missing, extra or of another shape, e.g. {mismatched[0]!r})")
    net.load_state_dict(state)


def _adapt_first_conv(net: nn.Module, channels: int, averaged: bool) -> list[str]:
    """Give ``net``'s first conv ``channels`` input channels; returns the note it leaves.

    With pretrained weights the new filters are the mean of the RGB filters over their
    input channels, scaled by 3 / C: an image whose C channels all equal a grey image
    then gives the stem exactly the response the ImageNet network gives that grey image
    as RGB, so the pretrained features downstream see activations of the size they
    were trained on (a plain mean would shrink them 3x for grey input).
    """
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == channels:
        return []
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    if not averaged:
        net.set_submodule(name, new)
        return []
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, channels, 1, 1) * (conv.in_channels / channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    net.set_submodule(name, new)
    return [f"first conv takes {channels} channel(s): its pretrained RGB filters are averaged "
            f"(scaled by {conv.in_channels}/{channels})"]


def _replace_classifier(net: nn.Module, num_classes: int) -> None:
    # In every torchvision classifier we use, the output layer is the last Linear registered.
    name, linear = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    net.set_submodule(name, nn.Linear(linear.in_features, num_classes, bias=linear.bias is not None))
