"""Random augmentation of whole batches, as tensor ops on the batch's device.

One :class:`Augmenter` per trial, built from the trial's config (``aug_flip``,
``aug_translate``, ``aug_rotate``, ``aug_jitter``, ``aug_noise`` of
:class:`spaces.schema.TrialConfig`). Each call draws fresh per-image parameters for the
whole batch from its generator: no per-sample Python, and the same generator seed gives
the same augmented batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from spaces.schema import TrialConfig


class Augmenter:
    """Random flips, shifts, rotations, brightness/contrast jitter and noise for image batches.

    ``config`` is the trial's config (valid by construction; a partial dict becomes one
    through ``TrialConfig.from_dict``). ``input_shape`` is (C, H, W) of the images it will
    see. Every random draw uses ``generator`` (the global RNG when None);
    draws happen on the generator's device, so give it one on the images' device: a CPU
    generator with CUDA images works but moves the noise tensor across the bus.
    """

    def __init__(
        self, config: TrialConfig, input_shape: Sequence[int], generator: torch.Generator | None = None
    ) -> None:
        self.flip: bool = config.aug_flip
        self.translate: int = config.aug_translate
        self.rotate: float = float(config.aug_rotate)
        self.jitter: float = float(config.aug_jitter)
        self.noise: float = float(config.aug_noise)
        self.input_shape = tuple(input_shape)
        self.generator = generator

    @property
    def active(self) -> bool:
        """False when every augmentation is off: the training loop can skip the call."""
        return bool(self.flip or self.translate > 0 or self.rotate > 0 or self.jitter > 0 or self.noise > 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A randomly augmented copy of ``x``: float N x C x H x W in [0, 1], same shape and range.

        Order: flip, then rotation/translation (zero padding), then jitter, then noise.
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"Augmenter built for images of shape {self.input_shape} got a batch of "
                             f"shape {tuple(x.shape)}")
        if not self.active or len(x) == 0:
            return x
        if self.flip:
            flip = self._uniform(len(x), x) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.rotate > 0:
            x = self._rotate_and_shift(x)
        elif self.translate > 0:
            x = self._shift(x)
        if self.jitter > 0:
            brightness = (2 * self._uniform(len(x), x) - 1) * self.jitter
            contrast = 1 + (2 * self._uniform(len(x), x) - 1) * self.jitter
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
            x = x.clamp(0, 1)
        if self.noise > 0:
            x = (x + self.noise * self._normal(x)).clamp(0, 1)
        return x

    def _rotate_and_shift(self, x: torch.Tensor) -> torch.Tensor:
        """Rotation by up to ``rotate`` degrees and shift by up to ``translate`` pixels, one resample."""
        n, _, height, width = x.shape
        angle = (2 * self._uniform(n, x) - 1) * math.radians(self.rotate)
        cos, sin = angle.cos(), angle.sin()
        # affine_grid works in [-1, 1] coordinates: one pixel is 2/W wide, 2/H high, and
        # the off-diagonal terms carry H/W so non-square images rotate without shearing.
        shift_x = (2 * self._uniform(n, x) - 1) * (self.translate * 2 / width)
        shift_y = (2 * self._uniform(n, x) - 1) * (self.translate * 2 / height)
        theta = torch.stack([
            torch.stack([cos, -sin * (height / width), shift_x], dim=1),
            torch.stack([sin * (width / height), cos, shift_y], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        """Shift each image by a random whole number of pixels in [-translate, translate], zero fill.

        A crop of the zero-padded batch at a per-image offset, as one gather over the
        flattened pixels: exact (no interpolation), and on CPU about 1.3-2x faster than
        ``grid_sample(mode="nearest")`` (measured on 64x1x28x28 and 256x3x32x32 batches).
        """
        n, channels, height, width = x.shape
        pad = self.translate
        padded_width = width + 2 * pad
        padded = F.pad(x, (pad, pad, pad, pad)).reshape(n, channels, -1)
        dy = self._integers(2 * pad + 1, n, x)
        dx = self._integers(2 * pad + 1, n, x)
        rows = torch.arange(height, device=x.device)[:, None] * padded_width
        crop = (rows + torch.arange(width, device=x.device)[None, :]).reshape(1, -1)
        index = crop + (dy * padded_width + dx)[:, None]
        return padded.gather(2, index[:, None, :].expand(-1, channels, -1)).reshape(x.shape)

    def _draw_device(self, x: torch.Tensor) -> torch.device:
        return self.generator.device if self.generator is not None else x.device

    def _uniform(self, n: int, x: torch.Tensor) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator, device=self._draw_device(x), dtype=torch.float32)
        return u.to(device=x.device, dtype=x.dtype)

    def _integers(self, high: int, n: int, x: torch.Tensor) -> torch.Tensor:
        draws = torch.randint(high, (n,), generator=self.generator, device=self._draw_device(x))
        return draws.to(x.device)

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.randn(x.shape, generator=self.generator, device=self._draw_device(x), dtype=torch.float32)
        return z.to(device=x.device, dtype=x.dtype)
