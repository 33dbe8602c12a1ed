"""Training loss of PIPs++."""

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / (mask.sum() + 1e-6)


def sequence_loss(
    coords: list[torch.Tensor], trajs_g: torch.Tensor, valids: torch.Tensor, gamma: float = 0.8
) -> torch.Tensor:
    """Exponentially weighted L1 over the per-iteration predictions.

    Args:
        coords: n predictions, each B,S,N,2 in pixels, first to last iteration (PipsOutput.preds).
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


CONF_PX = 8.0  # a track within this many pixels of the ground truth counts as confident


def visibility_loss(
    vis: torch.Tensor,
    conf: torch.Tensor,
    tracks: torch.Tensor,
    trajs_g: torch.Tensor,
    visibs: torch.Tensor,
    valids: torch.Tensor,
    conf_px: float = CONF_PX,
) -> torch.Tensor:
    """Loss of the visibility head: binary cross-entropy of the visibility logits against `visibs`, plus
    that of the confidence logits against "the final track is within conf_px pixels of the ground truth",
    both averaged over the valid entries.

    Args:
        vis, conf: B,S,N logits. tracks, trajs_g: B,S,N,2 final prediction (not differentiated) and
            ground truth, pixels. visibs, valids: B,S,N, 1 = visible / annotation valid.
    """
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    close = (torch.linalg.vector_norm(tracks.detach() - trajs_g, dim=-1) < conf_px).float()  # B,S,N
    vis_term = masked_mean(bce(vis.float(), visibs.float(), reduction="none"), valids)
    conf_term = masked_mean(bce(conf.float(), close, reduction="none"), valids)
    return vis_term + conf_term
