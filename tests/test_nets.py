import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nets.losses import sequence_loss
from nets.pips2 import Pips

FIXTURE = Path(__file__).parent / "fixtures" / "pips2_ref_seed0.npz"


def reference_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The fixture's deterministic weights: per key, randn seeded by crc32(key), scaled by 1/sqrt(fan_in)."""
    state = {}
    for key, value in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        w = torch.randn(value.shape, generator=g, dtype=torch.float32)
        w *= 1 / math.sqrt(math.prod(value.shape[1:])) if w.dim() > 1 else 0.1
        state[key] = w
    return state


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def model() -> Pips:
    m = Pips(stride=8).eval()
    m.load_state_dict(reference_weights(m), strict=True)
    return m


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x))


def test_state_dict_matches_official_keys(model: Pips) -> None:
    state = model.state_dict()
    assert len(state) == 82
    assert sum(v.numel() for v in state.values()) == 17_565_410
    assert state["fnet.conv2.weight"].shape == (256, 416, 3, 3)
    assert state["delta_block.first_block_conv.conv.weight"].shape == (128, 718, 3)
    assert state["delta_block.basicblock_list.6.conv1.conv.weight"].shape == (1024, 512, 3)
    assert state["delta_block.dense.weight"].shape == (2, 1024)
    assert state["norm.weight"].shape == (128,)


def test_encoder_matches_fixture(model: Pips, ref: dict) -> None:
    with torch.no_grad():
        fmaps = model.encode(t(ref["rgbs"]).float())
    np.testing.assert_allclose(fmaps.numpy(), ref["fmaps"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("iters,tol", [(1, 0.01), (2, 0.05)])
def test_forward_matches_fixture(model: Pips, ref: dict, iters: int, tol: float) -> None:
    e0 = t(ref["trajs_e0"])
    with torch.no_grad():
        out = model(e0, t(ref["rgbs"]).float(), iters=iters)
    assert len(out.preds) == iters
    np.testing.assert_allclose(  # the official first output: each iteration's prediction, then the result
        torch.stack([*out.preds, out.tracks]).numpy(), ref[f"it{iters}_coord_predictions1"], atol=tol, rtol=0
    )
    # the official second output: the initial tracks, each iteration's with frame 0 locked, then the result
    locked = [torch.cat([e0[:, :1], pred[:, 1:]], dim=1) for pred in out.preds]
    np.testing.assert_allclose(
        torch.stack([e0, *locked, out.tracks]).numpy(), ref[f"it{iters}_coord_predictions2"], atol=tol, rtol=0
    )
    for i, name in enumerate(("feats1", "feats2", "feats4")):
        np.testing.assert_allclose(out.feats[i].numpy(), ref[f"it{iters}_{name}"], atol=1e-3, rtol=0)
    loss = sequence_loss(out.preds, t(ref["trajs_g"]), t(ref["valids"]), gamma=0.8)
    np.testing.assert_allclose(loss.item(), ref[f"it{iters}_loss"], rtol=1e-4)


def test_forward_under_autograd_with_recompute_matches_fixture(model: Pips, ref: dict) -> None:
    """Training's forward (autograd on, activations recomputed) gives the official numbers too."""
    model.set_recompute(True)
    try:
        out = model(t(ref["trajs_e0"]), t(ref["rgbs"]).float(), iters=2)
    finally:
        model.set_recompute(False)
    coords = torch.stack([*out.preds, out.tracks]).detach().numpy()
    np.testing.assert_allclose(coords, ref["it2_coord_predictions1"], atol=0.05, rtol=0)
    assert out.tracks.requires_grad
    loss = sequence_loss(out.preds, t(ref["trajs_g"]), t(ref["valids"]), gamma=0.8)
    np.testing.assert_allclose(loss.item(), ref["it2_loss"], rtol=1e-4)


def test_chained_window_matches_fixture(model: Pips, ref: dict) -> None:
    rgbs = t(ref["rgbs"]).float()
    with torch.no_grad():
        first = model(t(ref["trajs_e0"]), rgbs, iters=1)
        second = model(t(ref["chain_trajs_e0"]), rgbs.flip(1), iters=1, feat_init=first.feats)
    np.testing.assert_allclose(second.tracks.numpy(), ref["chain_out"], atol=0.01, rtol=0)


def test_frame0_locked_in_output(model: Pips, ref: dict) -> None:
    e0 = t(ref["trajs_e0"])
    with torch.no_grad():
        out = model(e0, t(ref["rgbs"]).float(), iters=1)
    torch.testing.assert_close(out.tracks[:, 0], e0[:, 0])
    assert not torch.allclose(out.preds[0][:, 0], e0[:, 0])


@pytest.mark.parametrize("recompute", [False, True])
def test_tiny_forward_backward_finite(recompute: bool) -> None:
    torch.manual_seed(0)
    model = Pips().set_recompute(recompute)
    rgbs = torch.rand(2, 5, 3, 64, 96) * 255
    trajs = torch.rand(2, 5, 7, 2) * torch.tensor([95.0, 63.0])
    out = model(trajs, rgbs, iters=2)
    assert out.tracks.shape == (2, 5, 7, 2)
    assert all(f.shape == (2, 5, 7, 128) for f in out.feats)
    loss = sequence_loss(out.preds, trajs, torch.ones(2, 5, 7))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == 80  # every parameter but the unused norm.*
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.fnet.conv1.weight.grad.abs().sum() > 0


def test_sequence_loss_by_hand() -> None:
    gt = torch.zeros(1, 2, 1, 2)
    preds = [torch.full((1, 2, 1, 2), 2.0), torch.full((1, 2, 1, 2), 1.0)]
    valids = torch.tensor([[[1.0], [0.0]]])
    expected = (0.8 * 2.0 + 1.0 * 1.0) / 2
    assert sequence_loss(preds, gt, valids, gamma=0.8).item() == pytest.approx(expected, rel=1e-5)


def test_too_small_frames_error() -> None:
    with pytest.raises(ValueError, match="frames of 48x96 are too small"):
        Pips()(torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 3, 48, 96))


def test_chunked_encoding_without_grad_matches_one_batch(model: Pips) -> None:
    rgbs = torch.rand(2, 11, 3, 64, 64) * 255  # 22 frames: two chunks
    with torch.no_grad():
        chunked = model.encode(rgbs)
    whole = model.encode(rgbs).detach()
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
