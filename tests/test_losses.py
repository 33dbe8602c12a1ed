import pytest
import torch

from nets.losses import masked_mean, sequence_loss


def test_masked_mean_has_the_official_epsilon():
    x = torch.tensor([2.0, 4.0, 100.0], dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    assert masked_mean(x, mask).item() == pytest.approx(6.0 / (2.0 + 1e-6), rel=1e-12)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_sequence_loss_by_hand():
    # B=1, S=2, N=2 in float64; point 1 is invalid at frame 1 (its error there must not count)
    trajs_g = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    valids = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    first = trajs_g.clone()
    first[0, 1, 0] = torch.tensor([2.0, 4.0])  # mean |error| over x,y: 3
    first[0, 1, 1] = torch.tensor([50.0, 50.0])  # invalid
    second = trajs_g.clone()
    second[0, 0, 1] = torch.tensor([-1.0, 0.0])  # 0.5
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
