import pytest
import torch
import torch.nn.functional as F

from nets.corr import CorrBlock, build_pyramid, sample_corr_level


def brute_force_corr(fmaps: torch.Tensor, targets: torch.Tensor, coords: torch.Tensor, levels: int, r: int):
    """The official computation: full volume targets @ fmaps, grid_sample (zeros, align_corners) of a window
    whose first grid axis varies the x offset."""
    B, S, C, H, W = fmaps.shape
    N = targets.shape[2]
    out = []
    fm = fmaps.reshape(B * S, C, H, W)
    for i in range(levels):
        if i > 0:
            fm = F.avg_pool2d(fm, 2, stride=2)
        h, w = fm.shape[-2:]
        vol = targets.reshape(B * S, N, C) @ fm.reshape(B * S, C, h * w) / C**0.5  # BS,N,hw
        d = torch.linspace(-r, r, 2 * r + 1)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)  # first axis -> x offset
        xy = coords.reshape(B * S * N, 1, 1, 2) / 2**i + delta[None]  # BSN,7,7,2
        grid = torch.stack([2 * xy[..., 0] / (w - 1) - 1, 2 * xy[..., 1] / (h - 1) - 1], dim=-1)
        s = F.grid_sample(vol.reshape(B * S * N, 1, h, w), grid, align_corners=True, padding_mode="zeros")
        out.append(s.reshape(B, S, N, -1))
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("H,W", [(16, 24), (17, 21)])
def test_local_corr_equals_full_volume(H: int, W: int) -> None:
    torch.manual_seed(0)
    B, S, N, C = 2, 3, 9, 16
    fmaps = torch.randn(B, S, C, H, W, dtype=torch.float64)
    targets = torch.randn(B, S, N, C, dtype=torch.float64)
    # points inside, on the border, outside and far outside the map
    coords = torch.rand(B, S, N, 2, dtype=torch.float64) * torch.tensor([W + 10.0, H + 10.0]) - 5
    coords[0, 0, 0] = torch.tensor([-40.0, 300.0])
    coords[0, 0, 1] = torch.tensor([W - 1.0, H - 1.0])
    local = CorrBlock(build_pyramid(fmaps, 4), radius=3).sample(targets, coords)
    assert local.shape == (B, S, N, 4 * 49)
    torch.testing.assert_close(local, brute_force_corr(fmaps, targets, coords, 4, 3), atol=1e-9, rtol=1e-9)


def test_window_order_is_x_major() -> None:
    # a feature map that is 1 at one pixel: the window lights up where offset (dx, dy) hits it
    fmap = torch.zeros(1, 1, 11, 11)
    fmap[0, 0, 5, 7] = 1.0  # y=5, x=7
    out = sample_corr_level(fmap, torch.ones(1, 1, 1), torch.tensor([[[5.0, 5.0]]]), radius=3)
    hot = out[0, 0].argmax().item()
    assert divmod(hot, 7) == (2 + 3, 0 + 3)  # (ix, iy) = (dx + R, dy + R) with dx=2, dy=0


def test_corr_gradients_match_full_volume() -> None:
    torch.manual_seed(1)
    fmaps = torch.randn(1, 2, 8, 10, 12, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    coords = torch.rand(1, 2, 5, 2, dtype=torch.float64) * 10
    local = CorrBlock(build_pyramid(fmaps, 2), radius=2).sample(targets, coords)
    g_local = torch.autograd.grad(local.square().sum(), (fmaps, targets))
    full = brute_force_corr(fmaps, targets, coords, 2, 2)
    g_full = torch.autograd.grad(full.square().sum(), (fmaps, targets))
    for a, b in zip(g_local, g_full):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
