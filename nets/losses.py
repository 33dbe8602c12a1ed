"""Training loss of PIPs++."""

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / (mask.sum() + 1e-6)


def sequence_loss(
    coords: list[torch.Tensor], trajs_g: torch.Tensor, valids: torch.Tensor, gamma: float = 0.8
) -> torch.Tensor:
    """Exponentially weighted L1 over the per-iteration predictions.

    Args:
        coords: n predictions, each B,S,N,2 in pixels (Pips' `coords[:-1]`).
        trajs_g: B,S,N,2 ground truth in pixels.
        valids: B,S,N; occluded points are supervised too, as in the official model.
        gamma: weight of prediction i is gamma^(n-1-i).
    Returns:
        Scalar: sum_i gamma^(n-1-i) * masked_mean(mean_xy |pred_i - gt|) / n.
    """
    n = len(coords)
    loss = trajs_g.new_zeros(())
    for i, pred in enumerate(coords):
        err = (pred - trajs_g).abs().mean(dim=-1)  # B,S,N
        loss = loss + gamma ** (n - 1 - i) * masked_mean(err, valids)
    return loss / n
