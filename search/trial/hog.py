"""Histogram-of-Oriented-Gradients features of a batch of images, as tensor ops on its device.

The custom CNN fuses these with its pooled features when a config sets ``hog: true``
(:mod:`search.trial.models`). The computation is scikit-image's ``skimage.feature.hog``
(Dalal & Triggs 2005, without gamma correction), batched, so that a study's HOG is the
HOG of the literature; ``tests/search/test_hog.py`` checks it against scikit-image:

1. gradients by convolution with ``[-1, 0, 1]`` along rows and columns, zero on the image
   border; on colour images each pixel takes the gradient of the channel where it is
   largest (scikit-image's ``channel_axis`` rule);
2. unsigned orientation in [0, 180) degrees, binned hard into ``orientations`` equal bins;
   each cell of ``cell x cell`` pixels sums its pixels' gradient magnitudes per bin,
   divided by the cell's pixel count (pixels past the last whole cell are left out);
3. overlapping blocks of ``block x block`` cells, stride one cell, each normalised on its
   own (L1, L1-sqrt, L2 or L2-Hys, eps 1e-5), flattened in scikit-image's order
   (block row, block column, cell row, cell column, orientation).

The features are a fixed function of the input: no parameters, computed without autograd
and in float32 whatever the autocast precision (the orientation bins need the angle's bits).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5  # scikit-image's, so that blank blocks normalise to zero the same way
HYS_CLIP = 0.2  # L2-Hys: clip after L2, then renormalise (Lowe's SIFT threshold)


class Hog(nn.Module):
    """HOG features of (N, C, H, W) images: a (N, :attr:`size`) float32 tensor.

    ``cell``, ``orientations``, ``block`` and ``norm`` are the config's ``hog_cell``,
    ``hog_orientations``, ``hog_block`` and ``hog_norm``. A cell larger than the image is
    shrunk to the image's shorter side and a block larger than the cell grid to the grid;
    each such adjustment is a line in :attr:`notes`.
    """

    def __init__(self, input_shape: tuple[int, int, int], cell: int, orientations: int, block: int,
                 norm: str) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.notes: list[str] = []
        if cell > min(height, width):
            self.notes.append(f"hog_cell {cell} shrunk to {min(height, width)}: the {height}x{width} input "
                              "holds no larger cell")
            cell = min(height, width)
        cells = (height // cell, width // cell)
        if block > min(cells):
            self.notes.append(f"hog_block {block} shrunk to {min(cells)}: {height}x{width} pixels hold "
                              f"{cells[0]}x{cells[1]} cells of {cell}x{cell}")
            block = min(cells)
        self.cell, self.orientations, self.block, self.norm = cell, orientations, block, norm
        self.cells = cells
        blocks = (cells[0] - block + 1) * (cells[1] - block + 1)
        self.size = blocks * block * block * orientations
        # Constants are non-persistent buffers: they follow the model to its device but stay out
        # of the state_dict, which holds learned weights only. Both derivatives of every channel
        # come from one grouped 3x3 conv (two outputs a channel): on CPU, oneDNN runs it ~6x
        # faster than 3x1 and 1x3 convs over the channels as separate images (batch 256, 32x32x3).
        kernels = torch.zeros(2, 1, 3, 3)
        kernels[0, 0, :, 1] = torch.tensor([-1.0, 0.0, 1.0])  # d/d row
        kernels[1, 0, 1, :] = torch.tensor([-1.0, 0.0, 1.0])  # d/d column
        self.register_buffer("kernels", kernels.repeat(channels, 1, 1, 1), persistent=False)
        border = torch.ones(2, height, width)  # scikit-image leaves each derivative 0 on its border
        border[0, [0, -1], :] = 0.0
        border[1, :, [0, -1]] = 0.0
        self.register_buffer("border", border, persistent=False)
        self.step = 180.0 / orientations
        # Bin i holds [step * i, step * (i + 1)), bounds computed as scikit-image computes them.
        self.register_buffer("bin_low", torch.tensor([self.step * i for i in range(orientations)]),
                             persistent=False)
        self.register_buffer("bin_high", torch.tensor([self.step * (i + 1) for i in range(orientations)]),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        no_autocast = (torch.autocast(x.device.type, enabled=False)
                       if torch.amp.is_autocast_available(x.device.type) else nullcontext())
        with torch.no_grad(), no_autocast:
            histogram = self.cell_histograms(x.float())
            return self.normalised_blocks(histogram).flatten(1)

    def cell_histograms(self, x: torch.Tensor) -> torch.Tensor:
        """(N, orientations, cell rows, cell columns): mean gradient magnitude per bin and cell."""
        n, channels, height, width = x.shape
        gradients = F.conv2d(x, self.kernels, padding=1, groups=channels).view(n, channels, 2, height, width)
        gradients = gradients * self.border
        g_row, g_col = gradients[:, 0, 0], gradients[:, 0, 1]
        if channels > 1:
            # The strongest channel by squared magnitude, exact where the gradients are, so that
            # equally strong channels tie exactly and the first wins, as in scikit-image. A loop
            # over the few channels: argmax over dim 1 is ~20x slower on CPU (measured).
            strength = g_row.square() + g_col.square()
            for c in range(1, channels):
                c_row, c_col = gradients[:, c, 0], gradients[:, c, 1]
                c_strength = c_row.square() + c_col.square()
                stronger = c_strength > strength
                g_row, g_col = torch.where(stronger, c_row, g_row), torch.where(stronger, c_col, g_col)
                strength = torch.where(stronger, c_strength, strength)
        g_row, g_col = g_row.unsqueeze(1), g_col.unsqueeze(1)
        magnitude = torch.hypot(g_row, g_col)
        orientation = torch.rad2deg(torch.atan2(g_row, g_col)) % 180.0
        # An angle a hair below 0 comes out of `% 180` as 180 - hair, which float32 may round to
        # 180: the top of no bin. Modulo 180 it is 0 (float64, as in scikit-image, rarely rounds so).
        orientation = orientation.masked_fill(orientation >= 180.0, 0.0)
        bins = torch.floor(orientation / self.step).long().clamp_(0, self.orientations - 1)
        # Where float rounding put an angle on the wrong side of a bound, the bounds decide.
        bins = bins - (orientation < self.bin_low[bins]).long()
        bins = bins + (orientation >= self.bin_high[bins]).long()
        rows, cols = self.cells[0] * self.cell, self.cells[1] * self.cell
        # One pass writing each pixel's magnitude into its bin: 2-3x faster on CPU than comparing
        # every pixel with every bin (measured at batch 256, 32x32, 9 bins).
        weighted = magnitude.new_zeros(n, self.orientations, rows, cols)
        weighted.scatter_(1, bins[:, :, :rows, :cols], magnitude[:, :, :rows, :cols])
        return F.avg_pool2d(weighted, self.cell)

    def normalised_blocks(self, histogram: torch.Tensor) -> torch.Tensor:
        """(N, blocks, block * block * orientations): each block normalised, in scikit-image's order."""
        n, b = histogram.shape[0], self.block
        blocks = histogram.unfold(2, b, 1).unfold(3, b, 1)  # (N, orientations, block rows, block cols, b, b)
        blocks = blocks.permute(0, 2, 3, 4, 5, 1).reshape(n, -1, b * b * self.orientations)
        if self.norm in ("l1", "l1_sqrt"):
            out = blocks / (blocks.abs().sum(dim=2, keepdim=True) + EPS)
            return out.sqrt() if self.norm == "l1_sqrt" else out
        out = blocks / torch.sqrt(blocks.square().sum(dim=2, keepdim=True) + EPS ** 2)
        if self.norm == "l2_hys":
            out = out.clamp_max(HYS_CLIP)
            out = out / torch.sqrt(out.square().sum(dim=2, keepdim=True) + EPS ** 2)
        return out
