"""Bilinear sampling in pixel coordinates (integer = pixel centre), shared by nets and metrics."""

import torch
import torch.nn.functional as F


def normalize_coords(xy: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Pixel x,y -> grid_sample's [-1, 1] with align_corners=True (-1 = centre of pixel 0)."""
    # Python scalars go to the kernels as arguments: no tensor is copied to the device, so no sync
    x, y = xy.unbind(-1)
    return torch.stack([x * (2.0 / max(W - 1, 1)), y * (2.0 / max(H - 1, 1))], dim=-1) - 1.0


def bilinear_sample_border(fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Sample fmap at N points, clamping to the border.

    Args:
        fmap: B,C,H,W.
        xy: B,N,2 pixel coordinates (x, y) of fmap.
    Returns:
        B,N,C. Points outside the map take the value of the nearest border pixel.
    """
    B, C, H, W = fmap.shape
    grid = normalize_coords(xy.to(fmap.dtype), H, W).unsqueeze(1)  # B,1,N,2
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)  # B,C,1,N
    return out[:, :, 0].transpose(1, 2)  # B,N,C


def coords_grid(H: int, W: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """H,W,2 grid of pixel-centre coordinates (x, y)."""
    ys, xs = torch.meshgrid(
        torch.arange(H, device=device, dtype=torch.float32),
        torch.arange(W, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1)  # H,W,2
