import math

import pytest
import torch

from nets.losses import masked_mean, sequence_loss, visibility_loss


def test_masked_mean_has_the_official_epsilon():
    x = torch.tensor([2.0, 4.0, 100.0], dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    assert masked_mean(x, mask).item() == pytest.approx(6.0 / (2.0 + 1e-6), rel=1e-12)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_sequence_loss_by_hand():
    # B=1, S=2, N=2 in float64, ground truth away from 0; point 1 is invalid at frame 1 (its error there
    # must not count)
    trajs_g = torch.full((1, 2, 2, 2), 7.0, dtype=torch.float64)
    valids = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    first = trajs_g.clone()
    first[0, 1, 0] += torch.tensor([2.0, -4.0])  # mean |error| over x,y: 3
    first[0, 1, 1] += torch.tensor([50.0, 50.0])  # invalid
    second = trajs_g.clone()
    second[0, 0, 1] += torch.tensor([-1.0, 0.0])  # 0.5
    # per prediction, the masked mean over the 3 valid entries: 3/3 = 1 and 0.5/3
    mean_first, mean_second = 3.0 / (3 + 1e-6), 0.5 / (3 + 1e-6)
    expected = (0.5 * mean_first + 1.0 * mean_second) / 2  # weights gamma^(n-1-i) with gamma = 0.5
    loss = sequence_loss([first, second], trajs_g, valids, gamma=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    default = sequence_loss([first, second], trajs_g, valids)  # gamma 0.8, the official value
    assert default.item() == pytest.approx((0.8 * mean_first + mean_second) / 2, rel=1e-12)


def test_sequence_loss_backpropagates_to_every_prediction():
    trajs_g = torch.zeros(1, 3, 1, 2)
    preds = [torch.full((1, 3, 1, 2), float(i + 1), requires_grad=True) for i in range(3)]
    sequence_loss(preds, trajs_g, torch.ones(1, 3, 1)).backward()
    # d/dpred_i of gamma^(2-i) * mean|pred_i| / 3 over 6 numbers (x,y of 3 entries): gamma^(2-i) / 18 each
    for i, pred in enumerate(preds):
        torch.testing.assert_close(pred.grad, torch.full_like(pred, 0.8 ** (2 - i) / 18 * 3 / (3 + 1e-6)))


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_visibility_loss_by_hand():
    # B=1, S=2, N=3; point 1 is invalid at frame 1. Confident means strictly within 8 px of the ground truth:
    # frame 0 point 0 exact (yes), point 1 8 px off in y (no); frame 1 point 0 off by (3, 4) = 5 px (yes);
    # point 2 is 6 px off in x at both frames (yes)
    trajs_g = torch.tensor(
        [[[[10.0, 20.0], [30.0, 40.0], [0.0, 0.0]], [[12.0, 22.0], [31.0, 45.0], [0.0, 0.0]]]]
    )
    tracks = torch.tensor(
        [[[[10.0, 20.0], [30.0, 48.0], [6.0, 0.0]], [[15.0, 26.0], [31.0, 45.0], [6.0, 0.0]]]]
    )
    visibs = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])
    valids = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]])
    vis = torch.tensor([[[1.5, -0.5, -1.0], [0.25, 3.0, 2.0]]], requires_grad=True)
    conf = torch.tensor([[[2.0, -1.0, 1.0], [0.5, 4.0, -3.0]]], requires_grad=True)
    vis_term = (bce(1.5, 1) + bce(-0.5, 0) + bce(-1.0, 1) + bce(0.25, 1) + bce(2.0, 1)) / (5 + 1e-6)
    conf_term = (bce(2.0, 1) + bce(-1.0, 0) + bce(1.0, 1) + bce(0.5, 1) + bce(-3.0, 1)) / (5 + 1e-6)
    loss = visibility_loss(vis, conf, tracks, trajs_g, visibs, valids)
    assert loss.item() == pytest.approx(vis_term + conf_term, rel=1e-6)
    loss.backward()
    # d bce / d logit = sigmoid(logit) - target, over the 5 valid entries
    sigmoid = torch.sigmoid(vis.detach())
    torch.testing.assert_close(vis.grad, (sigmoid - visibs) * valids / (5 + 1e-6))
    closer = visibility_loss(vis, conf, tracks, trajs_g, visibs, valids, conf_px=8.5)  # now point 1 is close
    conf_term = (bce(2.0, 1) + bce(-1.0, 1) + bce(1.0, 1) + bce(0.5, 1) + bce(-3.0, 1)) / (5 + 1e-6)
    assert closer.item() == pytest.approx(vis_term + conf_term, rel=1e-6)
