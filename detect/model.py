"""A fully sparse FCAF3D-style detector on Gaussian features (the card's detector, axis-aligned).

Backbone: a MinkResNet-like stack — a submanifold stem, then per level a stride-2 convolution and
a residual block of submanifold convolutions — giving 4 levels at strides 2, 4, 8, 16 voxels.
Neck and head, coarse to fine as in FCAF3D: each finer level adds a generative transposed
convolution of the coarser one (so voxels can appear at object centres, away from the surface)
to its backbone features, keeping only the `prune_top` voxels of highest classification score;
shared heads predict centerness (1), six face distances as exp(scale_level · x) (6) and class
logits (C, bias for a prior of 0.01) at every voxel centre. Predictions are listed fine to coarse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from detect.sparse import SparseTensor, add, generative_transpose, select, strided, submanifold, voxel_keys, with_features


@dataclass(frozen=True)
class DetectorShape:
    in_channels: int = 11  # Gaussian features (detect.sampling.FEATURES)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # FCAF3D's MinkResNet widths per level
    head_width: int = 128
    num_classes: int = 18
    prune_top: int = 100_000  # voxels kept per scene at each generative up-sampling


class _Norm(nn.Module):
    """BatchNorm + ReLU on a sparse tensor's features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return with_features(x, torch.relu(self.norm(x.features)))


class _Residual(nn.Module):
    """Two submanifold 3³ convolutions with a skip connection."""

    def __init__(self, channels: int, key: str) -> None:
        super().__init__()
        self.conv1, self.norm1 = submanifold(channels, channels, 3, key), _Norm(channels)
        self.conv2, self.norm2 = submanifold(channels, channels, 3, key), nn.BatchNorm1d(channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        y = self.norm1(self.conv1(x))
        y = self.conv2(y)
        return with_features(y, torch.relu(self.norm2(y.features) + x.features))


class Detector(nn.Module):
    def __init__(self, shape: DetectorShape) -> None:
        super().__init__()
        self.shape = shape
        w = shape.widths
        self.stem = nn.ModuleList([submanifold(shape.in_channels, w[0], 3, "stem"), _Norm(w[0])])
        self.down = nn.ModuleList(
            nn.ModuleList([strided(w[max(i - 1, 0)], w[i]), _Norm(w[i]), _Residual(w[i], f"level{i}")]) for i in range(len(w)))
        self.up = nn.ModuleList(nn.ModuleList([generative_transpose(w[i + 1], w[i]), _Norm(w[i])]) for i in range(len(w) - 1))
        self.out = nn.ModuleList(nn.ModuleList([submanifold(w[i], shape.head_width, 3, f"out{i}"), _Norm(shape.head_width)]) for i in range(len(w)))
        self.centerness = nn.Linear(shape.head_width, 1)
        self.distances = nn.Linear(shape.head_width, 6)
        self.classes = nn.Linear(shape.head_width, shape.num_classes)
        self.scales = nn.Parameter(torch.zeros(len(w)))  # log of the per-level distance scale
        nn.init.constant_(self.classes.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x: SparseTensor) -> list[dict[str, torch.Tensor]]:
        """Per level, fine to coarse: "voxels" [M, 4] (batch, i, j, k), "stride" (voxels per cell),
        "centerness" [M], "distances" [M, 6] (in voxels), "classes" [M, C] logits."""
        x = self.stem[1](self.stem[0](x))
        features = []
        for conv, norm, block in self.down:
            x = block(norm(conv(x)))
            features.append(x)
        outputs = [None] * len(features)
        x = features[-1]
        for i in range(len(features) - 1, -1, -1):
            if i < len(features) - 1:
                conv, norm = self.up[i]
                grown = norm(conv(x))
                x = add(grown, features[i])
                x = self._prune(x, outputs[i + 1])
            head_conv, head_norm = self.out[i]
            h = head_norm(head_conv(x)).features
            outputs[i] = {
                "voxels": x.indices.long(), "stride": 2 ** (i + 1), "centerness": self.centerness(h)[:, 0],
                "distances": torch.exp(self.scales[i] + self.distances(h)) * 2 ** (i + 1), "classes": self.classes(h),
            }
        return outputs

    def _prune(self, x: SparseTensor, coarser: dict[str, torch.Tensor]) -> SparseTensor:
        """Keep the prune_top voxels per scene whose coarser parent scores highest."""
        if len(x.indices) <= self.shape.prune_top:
            return x
        fine = x.indices.long()
        parents = voxel_keys(torch.cat([fine[:, :1], fine[:, 1:] // 2], 1))
        coarse_keys, order = voxel_keys(coarser["voxels"]).sort()
        where = torch.searchsorted(coarse_keys, parents).clamp_max(len(coarse_keys) - 1)
        found = coarse_keys[where] == parents
        score = torch.where(found, coarser["classes"].max(1).values.detach()[order[where]], torch.full_like(parents, -1e9, dtype=torch.float32))
        keep = torch.zeros(len(score), dtype=torch.bool, device=score.device)
        for b in range(x.batch_size):
            rows = torch.nonzero(x.indices[:, 0] == b).squeeze(1)
            keep[rows[score[rows].topk(min(self.shape.prune_top, len(rows))).indices]] = True
        return select(x, keep)
