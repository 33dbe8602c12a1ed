"""Pips.set_recompute: the gradients and the training of the store-everything path, in less memory."""

import ctypes
import ctypes.util

import pytest
import torch

import nets.pips2
import nets.precision
import train
from datasets.sample import collate_clips
from datasets.synthetic import SyntheticClips
from nets.delta import DeltaBlock
from nets.losses import sequence_loss
from nets.pips2 import Pips


@pytest.fixture(autouse=True)
def deterministic() -> None:
    """Deterministic kernels on one thread for each test. With several threads, the backward of the
    correlation's feature gather (an accumulating index_put_) sums in a varying order, so two runs of one step
    differ by rounding, which the random-weight iterations amplify; without that noise any difference is the
    switch's. One thread is also the quickest for these tiny tensors on a shared machine."""
    enabled, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(enabled)
    torch.set_num_threads(threads)


def clip(B: int, S: int, N: int, H: int, W: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgbs = torch.rand(B, S, 3, H, W, generator=g) * 255  # B,S,3,H,W
    trajs = torch.rand(B, S, N, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0])  # B,S,N,2
    return trajs, rgbs


def gradients(model: Pips, trajs: torch.Tensor, rgbs: torch.Tensor, iters: int) -> dict[str, torch.Tensor]:
    out = model(trajs, rgbs, iters=iters)
    sequence_loss(out.preds, trajs, torch.ones(trajs.shape[:3])).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def count_encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by the number of frames of every call of Pips._encode_frames (recomputations too)."""
    calls = []
    encode_frames = Pips._encode_frames

    def counted(self: Pips, frames: torch.Tensor) -> torch.Tensor:
        calls.append(frames.shape[0])
        return encode_frames(self, frames)

    monkeypatch.setattr(Pips, "_encode_frames", counted)
    return calls


def test_gradients_equal_with_and_without_recompute(monkeypatch: pytest.MonkeyPatch) -> None:
    trajs, rgbs = clip(1, 5, 6, 64, 64)
    monkeypatch.setattr(nets.pips2, "GRAD_CHUNK_PIXELS", 2 * 64 * 64)  # 5 frames: chunks of 2,2,1
    calls = count_encoder_calls(monkeypatch)
    grads, chunks = {}, {}
    for recompute in (False, True):
        torch.manual_seed(0)
        grads[recompute] = gradients(Pips().set_recompute(recompute), trajs, rgbs, iters=2)
        chunks[recompute], calls[:] = calls[:], []
    assert chunks[False] == [2, 2, 1]
    assert chunks[True] == [2, 2, 1, 1, 2, 2]  # each chunk again in backward, the last one first
    assert grads[True].keys() == grads[False].keys() and len(grads[False]) == 80
    largest = max(g.norm() for g in grads[False].values())
    for name, off in grads[False].items():
        on = grads[True][name]
        if off.norm() < 1e-6 * largest:
            # zero but for rounding: the bias of a convolution followed by an instance norm, which removes it
            assert name.endswith("bias") and on.norm() < 1e-6 * largest, name
        else:
            assert (on - off).norm() <= 1e-5 * off.norm(), name


def test_fast_path_gradients_equal_with_and_without_recompute() -> None:
    trajs, rgbs = clip(1, 3, 4, 64, 64)
    grads = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        model = Pips().set_fast(True, torch.bfloat16).set_recompute(recompute)
        grads[recompute] = torch.cat([g.flatten() for g in gradients(model, trajs, rgbs, iters=2).values()])
    assert torch.isfinite(grads[True]).all()
    # The same bf16 operations, but storing everything lets autocast cast each weight once for all
    # iterations and sums that cast's gradients in bf16; recomputing casts per iteration and sums in float32
    assert (grads[True] - grads[False]).norm() <= 2e-3 * grads[False].norm()


def autocast_nesting() -> int:
    depth = torch.autocast_increment_nesting() - 1
    torch.autocast_decrement_nesting()
    return depth


def test_compiled_parts_recompute_the_eager_delta_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recomputing code compiled by torch.compile gives wrong gradients and leaves autocast's nesting count
    raised (its cast cache would then never be cleared): under recomputation the compiled delta block runs
    its eager forward, selectively recomputed like an uncompiled one. (The eager backend compiles quickly.)"""
    policy_calls = []
    keep = nets.precision._keep_layer_outputs
    monkeypatch.setattr(
        nets.precision, "_keep_layer_outputs", lambda *a, **k: policy_calls.append(1) or keep(*a, **k)
    )
    trajs, rgbs = clip(1, 3, 4, 64, 64)
    grads = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Pips().set_recompute(True)
        if compiled:
            model.compile_parts(backend="eager")
        policy_calls.clear()
        grads[compiled] = gradients(model, trajs, rgbs, iters=2)
        assert policy_calls
        assert autocast_nesting() == 0
    for name, expected in grads[False].items():
        torch.testing.assert_close(grads[True][name], expected, rtol=1e-5, atol=1e-7, msg=name)


def test_thirty_steps_on_a_fixed_batch_give_the_same_losses() -> None:
    batch = collate_clips([SyntheticClips(S=4, N=8, crop_size=(32, 32), length=1, seed=3)[0]])
    losses, weights = {}, {}
    for recompute in (False, True):
        torch.manual_seed(0)
        model = Pips(latent_dim=32, corr_levels=2, corr_radius=2).set_recompute(recompute)
        model.delta_block = DeltaBlock(32, 2, 2, base_filters=16, num_blocks=4)  # tiny: seconds, not minutes
        params = [p for n, p in model.named_parameters() if not n.startswith("norm.")]
        opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-6)
        losses[recompute] = []
        state = train.TrainState(
            model, params, opt, train.TrainConfig(iters=2, grad_clip=5.0, vis_weight=0.0)
        )
        for step in range(30):
            out = train.train_step(state, [batch], train.step_generator(0, step, 0))
            assert not out.skipped
            losses[recompute].append(out.loss)
        weights[recompute] = model.delta_block.dense.weight.detach()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[False][-1] < losses[False][0]  # it trained
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-4, atol=1e-6)


def test_inference_is_untouched_by_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    trajs, rgbs = clip(1, nets.pips2.ENCODE_CHUNK + 2, 3, 64, 64)
    calls = count_encoder_calls(monkeypatch)
    outs = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        with torch.no_grad():
            outs[recompute] = Pips().set_recompute(recompute)(trajs, rgbs, iters=2)
    assert calls == [nets.pips2.ENCODE_CHUNK, 2] * 2
    for a, b in zip(outs[True].preds, outs[False].preds):
        assert torch.equal(a, b)


def _live_heap_bytes() -> int | None:
    """Bytes the C heap has handed out (glibc's mallinfo2, all arenas and mmapped blocks); None elsewhere."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (f, ctypes.c_size_t)
            for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
            + ("fordblks", "keepcost")
        ]

    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


@pytest.mark.skipif(_live_heap_bytes() is None, reason="needs glibc's mallinfo2")
@pytest.mark.parametrize(
    "shape,at_most",
    [
        ((1, 4, 16, 128, 192), 0.2),  # the encoder's activations dominate: only its feature maps stay
        ((1, 4, 128, 64, 64), 0.6),  # the delta block's dominate: the outputs of its layers stay
    ],
)
def test_recompute_holds_less_after_forward(shape: tuple[int, ...], at_most: float) -> None:
    trajs, rgbs = clip(*shape)
    held = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        model = Pips().set_recompute(recompute)
        before = _live_heap_bytes()
        out = model(trajs, rgbs, iters=2)
        held[recompute] = _live_heap_bytes() - before
        del out
    assert held[True] < at_most * held[False], held
