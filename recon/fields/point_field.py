"""GPF's generalizable neural point field (method card ../shared/notes/gpf.md, Eq. 1–10): per-view
image features, visibility-aware fetching onto scaffold points, and a learnable kernel over each
sample's K nearest points decoding density and colour.

- `FeatureNet`: the card's FPN — low level [feat0 (8), RGB] = 11 channels at full resolution,
  high level [feat2 (32), RGB at ¼] = 35 channels at ¼ resolution.
- `visibility_scores`: score_s(p) = max(0, 1 − |P_z − D_s(π_s(p))| / P_z) with D_s sampled
  bilinearly, zero outside the image (so off-image points score 0); the card's clamp at 0.
- `PointFeatures`: per point, its top-k source views by score; both levels fetched bilinearly
  (border padding) with PE(score) (the raw score and 4 sin/cos frequencies, 9-D); the low branch
  g_v = ReLU(W x_v), f_low = Σ softmax_v(ReLU(W' g_v))·g_v; the high branch
  h_v = MLP([var_v(y), mean_v(y), y_v]), f_high = Σ softmax_v(MLP(h_v))·h_v. A point whose best
  score is ≤ `min_visibility` is invalid (its kernel weight is 0).
- `KernelDecoder`: relative encoding e_k = [‖p_k − x‖, p_k − x, p_k] in the target camera frame;
  w_k = softmax_k(softmax_k(MLP([f_k, u_k])/0.9) ⊙ softmax_k(MLP(u_k)/0.9)) separately for density
  (f_high) and colour (f_low); σ = Softplus(MLP(Σ w_k g_k)), c = Sigmoid(W ReLU(W'[Σ w'_k h_k, view dir])).
  Invalid neighbours are masked out of both softmaxes; a sample with none has σ = 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recon.fields.encodings import PositionalEncoding
from recon.fields.mlp import MLP
from renderers.projection import project_to_views

KERNEL_TEMPERATURE = 0.9
LOW_CHANNELS, HIGH_CHANNELS = 11, 35


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FeatureNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(3, 8), _conv(8, 8))
        self.conv1 = nn.Sequential(_conv(8, 16, 5, 2), _conv(16, 16))
        self.conv2 = nn.Sequential(_conv(16, 32, 5, 2), _conv(32, 32))
        self.lateral1, self.lateral0 = nn.Conv2d(16, 32, 1), nn.Conv2d(8, 32, 1)
        self.out0 = nn.Conv2d(32, 8, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [V, 3, H, W] (H, W divisible by 4) → low [V, 11, H, W], high [V, 35, H/4, W/4]."""
        v, _, h, w = images.shape
        assert h % 4 == 0 and w % 4 == 0, f"FeatureNet needs sides divisible by 4, got {h}×{w}"
        c0 = self.conv0(images)
        c1 = self.conv1(c0)
        c2 = self.conv2(c1)
        top1 = F.interpolate(c2, scale_factor=2.0, mode="bilinear", align_corners=False) + self.lateral1(c1)
        top0 = F.interpolate(top1, scale_factor=2.0, mode="bilinear", align_corners=False) + self.lateral0(c0)
        low = torch.cat([self.out0(top0), images], 1)
        high = torch.cat([c2, F.interpolate(images, size=(h // 4, w // 4), mode="area")], 1)
        return low, high


def visibility_scores(
    points: torch.Tensor,  # [P, 3] world
    depths: torch.Tensor,  # [S, H, W] source z-depth maps
    K: torch.Tensor,  # [S, 3, 3]
    c2w: torch.Tensor,  # [S, 4, 4]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores [P, S] in [0, 1], pixel coordinates [P, S, 2] and z-depths [P, S] of the points in each source."""
    s, h, w = depths.shape
    uv, z = project_to_views(points[None], K[None], c2w[None])  # [1, S, P, 2], [1, S, P]
    uv, z = uv[0].transpose(0, 1), z[0].T  # [P, S, 2], [P, S]
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1).transpose(0, 1)[:, None]  # [S, 1, P, 2]
    seen = F.grid_sample(depths[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, 0].T  # [P, S]
    score = 1 - (z - seen).abs() / z.clamp_min(1e-9)
    return torch.where((z > 0) & (seen > 0), score.clamp_min(0), torch.zeros_like(score)), uv, z


def _fetch(features: torch.Tensor, views: torch.Tensor, uv: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear samples [P, k, C] of features [S, C, h, w] in views [P, k] at full-resolution pixel
    coordinates uv [P, k, 2] (scaled by `scale` to the map), border padding."""
    s, c, h, w = features.shape
    p, k = views.shape
    out = features.new_zeros(p, k, c)
    for view in range(s):
        chosen = views == view
        if chosen.any():
            xy = uv[chosen] * scale
            grid = torch.stack([xy[:, 0] / w * 2 - 1, xy[:, 1] / h * 2 - 1], -1).view(1, 1, -1, 2)
            out[chosen] = F.grid_sample(features[view : view + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T
    return out


class PointFeatures(nn.Module):
    def __init__(self, hidden: int = 32, top_k: int = 3, min_visibility: float = 1e-3) -> None:
        super().__init__()
        self.top_k, self.min_visibility = top_k, min_visibility
        self.score_encoding = PositionalEncoding(1, 4)  # 9-D
        e = self.score_encoding.out_dim
        self.low_embed, self.low_weight = nn.Linear(LOW_CHANNELS + e, hidden), nn.Linear(hidden, 1)
        self.high_embed = MLP(3 * (HIGH_CHANNELS + e), hidden, 1, hidden)
        self.high_weight = MLP(hidden, hidden, 1, 1)
        self.hidden = hidden

    def forward(self, points: torch.Tensor, low: torch.Tensor, high: torch.Tensor, depths: torch.Tensor, K: torch.Tensor,
                c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f_low [P, hidden], f_high [P, hidden] and validity [P] of points [P, 3] seen by sources
        with features low [S, 11, H, W], high [S, 35, H/4, W/4], depths [S, H, W], K, c2w."""
        score, uv, _ = visibility_scores(points, depths, K, c2w)
        k = min(self.top_k, score.shape[1])
        best, views = score.topk(k, dim=1)  # [P, k]
        valid = best[:, 0] > self.min_visibility
        chosen_uv = uv.gather(1, views[..., None].expand(-1, -1, 2))
        encoded = self.score_encoding(best[..., None])  # [P, k, 9]
        x = torch.cat([_fetch(low, views, chosen_uv, 1.0), encoded], -1)
        g = F.relu(self.low_embed(x))  # [P, k, hidden]
        f_low = (torch.softmax(F.relu(self.low_weight(g)), dim=1) * g).sum(1)
        y = torch.cat([_fetch(high, views, chosen_uv, high.shape[-1] / low.shape[-1]), encoded], -1)  # [P, k, 44]
        stats = torch.cat([y.var(1, unbiased=False, keepdim=True), y.mean(1, keepdim=True)], -1).expand(-1, k, -1)
        h = self.high_embed(torch.cat([stats, y], -1))
        f_high = (torch.softmax(self.high_weight(h), dim=1) * h).sum(1)
        return f_low, f_high, valid


class KernelDecoder(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.relative, self.relative_colour = nn.Linear(7, hidden), nn.Linear(7, hidden)
        self.density_kernel = nn.ModuleList([MLP(2 * hidden, hidden, 1, 1), MLP(hidden, hidden, 1, 1)])
        self.colour_kernel = nn.ModuleList([MLP(2 * hidden, hidden, 1, 1), MLP(hidden, hidden, 1, 1)])
        self.geometry = MLP(2 * hidden, hidden, 1, hidden)
        self.density = MLP(hidden, hidden, 1, 1)
        self.appearance = MLP(3 * hidden, hidden, 1, hidden)
        self.colour = MLP(hidden + 3, hidden, 1, 3)

    @staticmethod
    def kernel_weights(f: torch.Tensor, u: torch.Tensor, valid: torch.Tensor, mlps: nn.ModuleList) -> torch.Tensor:
        """w [Q, K] (sums to 1 over valid neighbours; 0 where none is valid) from features f [Q, K, C]
        and relative encodings u [Q, K, C]."""
        def masked_softmax(logits: torch.Tensor) -> torch.Tensor:
            return torch.softmax(logits.masked_fill(~valid, -1e9), dim=1) * valid
        both = masked_softmax(mlps[0](torch.cat([f, u], -1))[..., 0] / KERNEL_TEMPERATURE)
        where = masked_softmax(mlps[1](u)[..., 0] / KERNEL_TEMPERATURE)
        return masked_softmax(both * where)

    def forward(self, relative: torch.Tensor, f_low: torch.Tensor, f_high: torch.Tensor, valid: torch.Tensor,
                view_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """σ [Q] and colour [Q, 3] of samples from their K neighbours: relative encodings [Q, K, 7],
        features [Q, K, hidden] (low, high), validity [Q, K], unit view directions [Q, 3]."""
        u, u_colour = F.relu(self.relative(relative)), F.relu(self.relative_colour(relative))
        w = self.kernel_weights(f_high, u, valid, self.density_kernel)  # [Q, K]
        w_colour = self.kernel_weights(f_low, u_colour, valid, self.colour_kernel)
        g = self.geometry(torch.cat([f_high, u], -1))  # [Q, K, hidden]
        sigma = F.softplus(self.density((w[..., None] * g).sum(1)))[:, 0] * valid.any(1)
        h = self.appearance(torch.cat([f_low, g, u_colour], -1))
        a = (w_colour[..., None] * h).sum(1)
        return sigma, torch.sigmoid(self.colour(torch.cat([a, view_dirs], -1)))


def relative_encoding(samples: torch.Tensor, neighbours: torch.Tensor, c2w: torch.Tensor, length: float) -> torch.Tensor:
    """e_k = [‖p_k − x‖, p_k − x, p_k] [Q, K, 7] in the target camera's frame, lengths divided by
    `length` (the scene's unit of offsets × 100, so the encodings are of order 1)."""
    rotation, centre = c2w[:3, :3], c2w[:3, 3]
    p = (neighbours - centre) @ rotation / length  # [Q, K, 3]
    x = ((samples - centre) @ rotation / length)[:, None]  # [Q, 1, 3]
    return torch.cat([(p - x).norm(dim=-1, keepdim=True), p - x, p], -1)
