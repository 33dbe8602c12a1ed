"""Correlation pyramid sampled locally around each point.

The official model builds full cost volumes targets @ fmaps (B,S,N,H,W per level) and bilinearly samples
a (2R+1)^2 window from them. Bilinear sampling is linear, so sampling the volume equals the dot product of
the target with bilinearly sampled features. All offsets of one window share the same sub-pixel fraction,
so we read the (2R+2)^2 integer-position features once, take their dot products with the target, and
blend those bilinearly into the (2R+1)^2 window. Memory grows with S*N, never with S*N*H*W.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nets import corr_triton


def build_pyramid(fmaps: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """fmaps B,S,C,H8,W8 -> num_levels maps (B*S,C,H_l,W_l), each a 2x2 average pool of the previous."""
    B, S, C, H, W = fmaps.shape
    level = fmaps.reshape(B * S, C, H, W)
    pyramid = [level]
    for _ in range(num_levels - 1):
        level = F.avg_pool2d(level, 2, stride=2)
        pyramid.append(level)
    return pyramid


GATHER_BUDGET = 1 << 25  # window features gathered at once (floats), bounding the transient memory


def _window_dots(fmap: torch.Tensor, targets: torch.Tensor, corner: torch.Tensor, K: int) -> torch.Tensor:
    """Dot products of each target with the K x K integer-position features from `corner` (zero outside).

    fmap BS,C,H,W; targets BS,N,C; corner BS,N,2 (long, x,y) -> BS,N,K(y),K(x).
    """
    BS, C, H, W = fmap.shape
    N = targets.shape[1]
    feat = fmap.permute(0, 2, 3, 1).reshape(BS * H * W, C)  # BS*H*W,C
    offs = torch.arange(K, device=fmap.device)
    xs = corner[..., 0:1] + offs  # BS,N,K
    ys = corner[..., 1:2] + offs  # BS,N,K
    inside = ((ys >= 0) & (ys < H))[..., :, None] & ((xs >= 0) & (xs < W))[..., None, :]  # BS,N,K,K
    base = torch.arange(BS, device=fmap.device).view(BS, 1, 1, 1) * (H * W)
    idx = ys.clamp(0, H - 1)[..., :, None] * W + xs.clamp(0, W - 1)[..., None, :] + base  # BS,N,K,K

    def dots(n0: int, n: int) -> torch.Tensor:
        win = feat[idx[:, n0 : n0 + n].reshape(-1)].view(BS * n, K * K, C)  # BSn,KK,C
        tgt = targets[:, n0 : n0 + n].reshape(BS * n, C, 1)
        return torch.bmm(win, tgt).view(BS, n, K, K)

    if isinstance(N, torch.SymInt):  # a graph export with N symbolic: chunks would fix N in the graph
        return dots(0, N) * inside
    step = max(1, GATHER_BUDGET // (BS * K * K * C))  # points per chunk
    chunks = [dots(n0, min(step, N - n0)) for n0 in range(0, N, step)]
    return (chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)) * inside  # BS,N,K,K


def sample_corr_level(
    fmap: torch.Tensor, targets: torch.Tensor, coords: torch.Tensor, radius: int
) -> torch.Tensor:
    """Correlation window of one pyramid level, equal to bilinear (zero-padded) sampling of targets @ fmap.

    Args:
        fmap: BS,C,H,W features of this level.
        targets: BS,N,C template features.
        coords: BS,N,2 window centres (x, y) in this level's pixels.
        radius: R; the window is (2R+1)^2.
    Returns:
        BS,N,(2R+1)^2, flattened x-offset-major (index = ix*(2R+1) + iy) as the official model.
    """
    BS, C, H, W = fmap.shape
    K = 2 * radius + 2
    # far-away points only see zeros; clamping keeps the integer corner in range without changing that
    coords = torch.stack([coords[..., 0].clamp(-K - 1, W + K), coords[..., 1].clamp(-K - 1, H + K)], -1)
    floor = coords.detach().floor()
    frac = (coords - floor).to(fmap.dtype)  # BS,N,2
    corner = floor.long() - radius  # BS,N,2
    dots = _window_dots(fmap, targets, corner, K) / math.sqrt(C)  # BS,N,K,K
    fx = frac[..., 0, None, None]
    fy = frac[..., 1, None, None]
    top = dots[:, :, :-1, :-1] * (1 - fx) + dots[:, :, :-1, 1:] * fx  # BS,N,2R+1,2R+1
    bottom = dots[:, :, 1:, :-1] * (1 - fx) + dots[:, :, 1:, 1:] * fx
    window = top * (1 - fy) + bottom * fy  # BS,N,R(y),R(x)
    return window.transpose(-1, -2).reshape(BS, targets.shape[1], -1)  # BS,N,(2R+1)^2


SELF_CHECK_TOLERANCE = 1e-4  # largest error relative to the largest value; float32 rounding is ~1e-6


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


def fused_disagreement(
    device: torch.device, channels: int, templates: int, levels: int, radius: int, backward: bool
) -> str | None:
    """How the fused kernel disagrees with the PyTorch path on `device`, or None if it agrees: both run in
    float32 on a small random problem of the model's shape, with windows inside, across and beyond the maps'
    border; with `backward`, the gradients of the features and templates are compared too."""
    g = torch.Generator().manual_seed(0)
    S, N = 2, 5
    H, W = 3 * 2 ** (levels - 1), 4 * 2 ** (levels - 1)  # the coarsest level is still 3x4
    fmaps = torch.randn(1, S, channels, H, W, generator=g).to(device).requires_grad_(backward)
    targets = torch.randn(templates, 1, S, N, channels, generator=g).to(device).requires_grad_(backward)
    coords = (torch.rand(1, S, N, 2, generator=g) * torch.tensor([W + 8.0, H + 8.0]) - 4).to(device)
    weights = torch.randn(1, S, N, templates * levels * (2 * radius + 1) ** 2, generator=g).to(device)
    paths = (
        lambda pyramid: corr_triton.fused_corr(pyramid, targets, coords, radius),
        lambda pyramid: torch.cat([CorrBlock(pyramid, radius).sample(t, coords) for t in targets], dim=-1),
    )
    results = []
    with torch.enable_grad() if backward else torch.no_grad():
        for path in paths:
            out = path(build_pyramid(fmaps, levels))  # B,S,N,T*L*(2R+1)^2
            grads = torch.autograd.grad((out * weights).sum(), [fmaps, targets]) if backward else []
            results.append([out.detach(), *grads])
    for name, fused, exact in zip(("forward", "feature gradients", "template gradients"), *results):
        error = _relative_error(fused, exact)
        if not error <= SELF_CHECK_TOLERANCE:
            return f"{name} off by {error:.2g} relative to the PyTorch path on {device}"
    return None


class CorrBlock:
    """Correlation of per-frame template features with a feature pyramid, sampled around coords; built once
    per forward, `sample` takes the templates and the current coords. Under autograd the window features are
    recomputed in backward; with `fused`, CUDA tensors and Triton, the kernel of nets/corr_triton.py runs."""

    def __init__(self, pyramid: list[torch.Tensor], radius: int = 3, fused: bool = False) -> None:
        self.pyramid = pyramid
        self.radius = radius
        self.fused = fused

    def sample(self, targets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """targets B,S,N,C and coords B,S,N,2 (stride-8 feature pixels) -> B,S,N,L*(2R+1)^2."""
        B, S, N, C = targets.shape
        targets = targets.reshape(B * S, N, C)  # BS,N,C
        out = []
        for level, fmap in enumerate(self.pyramid):
            xy = coords.reshape(B * S, N, 2) / 2**level  # BS,N,2
            if torch.is_grad_enabled() and (fmap.requires_grad or targets.requires_grad):
                corr = checkpoint(sample_corr_level, fmap, targets, xy, self.radius, use_reentrant=False)
            else:
                corr = sample_corr_level(fmap, targets, xy, self.radius)
            out.append(corr.view(B, S, N, -1))
        return torch.cat(out, dim=-1)  # B,S,N,L*(2R+1)^2

    def sample_concat(self, targets: Sequence[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """T templates, each B,S,N,C, at coords B,S,N,2 -> B,S,N,T*L*(2R+1)^2, the `sample`s concatenated.

        The fused kernel is used only once it has agreed with this PyTorch path on the device (forward, and
        backward when gradients are needed); a kernel that fails to build or disagrees is switched off.
        """
        if self.fused and corr_triton.available(coords) and not coords.requires_grad:
            backward = torch.is_grad_enabled() and any(t.requires_grad for t in [*targets, *self.pyramid])
            try:
                if self._fused_proven(targets, coords.device, backward):
                    stacked = torch.stack(list(targets))  # T,B,S,N,C
                    return corr_triton.fused_corr(self.pyramid, stacked, coords, self.radius)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:  # the kernel does not build or run here: fall back, once, loudly
                corr_triton.disable(f"{type(error).__name__}: {error}")
        return torch.cat([self.sample(t, coords) for t in targets], dim=-1)

    def _fused_proven(self, targets: Sequence[torch.Tensor], device: torch.device, backward: bool) -> bool:
        """Whether the fused kernel agrees with the PyTorch path on `device`, checked on first use."""
        if not corr_triton.needs_check(device, backward):
            return True
        shape = (targets[0].shape[-1], len(targets), len(self.pyramid), self.radius)
        problem = fused_disagreement(device, *shape, backward)
        if problem is not None:
            corr_triton.disable(f"it failed its check: {problem}")
            return False
        corr_triton.passed_check(device, backward)
        return True
