import torch

from utils.sampling import bilinear_sample_border, coords_grid


def test_identity_sampling_on_pixel_centres() -> None:
    fmap = torch.randn(2, 3, 5, 7)
    xy = coords_grid(5, 7).reshape(1, -1, 2).expand(2, -1, -1)  # B,HW,2
    out = bilinear_sample_border(fmap, xy)  # B,HW,C
    torch.testing.assert_close(out, fmap.flatten(2).transpose(1, 2))


def test_bilinear_midpoint_and_border_clamp() -> None:
    fmap = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])  # 1,1,2,2
    xy = torch.tensor([[[0.5, 0.5], [0.25, 0.0], [-3.0, 0.0], [5.0, 7.0], [1.0, -2.0]]])
    out = bilinear_sample_border(fmap, xy)[0, :, 0]
    torch.testing.assert_close(out, torch.tensor([15.0, 2.5, 0.0, 30.0, 10.0]))
