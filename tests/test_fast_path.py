import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nets.corr_triton
from nets.corr import CorrBlock, build_pyramid
from nets.norm import InstanceNorm
from nets.pips2 import Pips
from nets.precision import EXACT, Precision, choose_precision
from tracking.predictor import Float16Guard

needs_cuda_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() and nets.corr_triton.triton is not None), reason="needs CUDA and Triton"
)


@pytest.fixture(scope="module")
def model() -> Pips:
    torch.manual_seed(0)
    return Pips().eval()


@pytest.fixture(scope="module")
def clip() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    rgbs = torch.rand(1, 4, 3, 64, 96, generator=g) * 255  # B,S,3,H,W
    xy = torch.rand(1, 1, 6, 2, generator=g) * torch.tensor([95.0, 63.0])
    return xy.expand(1, 4, 6, 2).contiguous(), rgbs  # B,S,N,2 still points


DTYPES = (torch.bfloat16, torch.float16)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 5, 6, 7)])
def test_fast_instance_norm_matches_exact(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 2
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    norm = InstanceNorm()
    exact = norm(x)
    norm.fast = True
    fast = norm(x)
    torch.testing.assert_close(fast, exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, F.instance_norm(x.contiguous()), atol=1e-5, rtol=1e-5)
    half = norm(x.bfloat16())
    assert half.dtype == torch.bfloat16
    if x.dim() == 4:
        assert fast.is_contiguous(memory_format=torch.channels_last)
        assert half.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(half.float(), exact, atol=0.05, rtol=0.02)


def test_fast_float32_path_matches_exact_and_switches_back(model: Pips, clip: tuple) -> None:
    trajs_e0, rgbs = clip
    with torch.no_grad():
        fmaps = model.encode(rgbs)
        exact = model(trajs_e0, rgbs, iters=1)
        model.set_fast(True, torch.float32)
        assert model.fnet.conv2.weight.is_contiguous(memory_format=torch.channels_last)
        fast_fmaps = model.encode(rgbs)
        fast = model(trajs_e0, rgbs, iters=1)
        model.set_fast(False)
        again = model(trajs_e0, rgbs, iters=1)
    torch.testing.assert_close(fast_fmaps, fmaps, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.tracks, exact.tracks, atol=1e-2, rtol=0)
    assert torch.equal(again.tracks, exact.tracks)


def test_bf16_fast_path_keeps_coords_float32(model: Pips, clip: tuple) -> None:
    trajs_e0, rgbs = clip
    torch.manual_seed(2)
    # instance norms over very short sequences amplify rounding (30% at S=4); S=16 gives about 3.5%
    fcorrs, flows = torch.randn(6, 16, 588), torch.randn(6, 16, 2)  # BN,S,588 and BN,S,2
    with torch.no_grad():
        fmaps, delta = model.encode(rgbs), model.delta_block(fcorrs, flows)
        model.set_fast(True)
        fast_fmaps = model.encode(rgbs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_delta = model.delta_block(fcorrs, flows)
        out = model(trajs_e0, rgbs, iters=2)
    model.set_fast(False)
    # bf16 keeps about 3 significant digits per op; a wrong layout or norm would be off by ~100%
    assert fast_fmaps.dtype == torch.float32 and rel_err(fast_fmaps, fmaps) < 0.05
    # the updates leave the block in float32 (its first and last layers skip autocast)
    assert fast_delta.dtype == torch.float32 and 0 < rel_err(fast_delta, delta) < 0.08
    assert all(c.dtype == torch.float32 for c in [out.tracks, *out.preds])
    assert all(f.dtype == torch.float32 for f in out.feats)
    assert torch.equal(out.tracks[:, 0], trajs_e0[:, 0])


def test_fast_path_keeps_float32_under_outer_autocast(model: Pips, clip: tuple) -> None:
    trajs_e0, rgbs = clip
    model.set_fast(True, torch.float32)
    with torch.no_grad():
        plain = model(trajs_e0, rgbs, iters=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outer = model(trajs_e0, rgbs, iters=1)
    model.set_fast(False)
    assert torch.equal(outer.tracks, plain.tracks)


def test_compile_parts_keeps_parameter_names() -> None:
    model = Pips()
    keys = list(model.state_dict())
    model.compile_parts(backend="eager")  # compiles lazily, on the first call
    assert list(model.state_dict()) == keys


def corr_case(B: int, S: int, N: int, C: int, H: int, W: int, levels: int, device: str = "cpu") -> tuple:
    """Pyramid, 3 templates and coords inside, on the border, outside and far outside the map."""
    g = torch.Generator().manual_seed(B * S * N + C)
    fmaps = torch.randn(B, S, C, H, W, generator=g).to(device).requires_grad_()
    targets = [torch.randn(B, S, N, C, generator=g).to(device).requires_grad_() for _ in range(3)]
    coords = torch.rand(B, S, N, 2, generator=g) * torch.tensor([W + 8.0, H + 8.0]) - 4  # B,S,N,2
    coords[0, 0, 0] = torch.tensor([-40.0, 3 * H])
    coords[0, -1, 1] = torch.tensor([W - 1.0, H - 1.0])
    coords[0, 0, 2] = torch.tensor([3.0, 2.0])
    return build_pyramid(fmaps, levels), fmaps, targets, coords.to(device)


def check_fused_against_pytorch(fused_corr, case: tuple, radius: int, atol: float) -> None:  # noqa: ANN001
    pyramid, fmaps, targets, coords = case
    block = CorrBlock(pyramid, radius)
    expected = torch.cat([block.sample(t, coords) for t in targets], dim=-1)
    out = fused_corr(pyramid, torch.stack(targets), coords, radius)
    torch.testing.assert_close(out, expected, atol=atol, rtol=0)
    weights = torch.randn_like(expected)
    grads_expected = torch.autograd.grad((expected * weights).sum(), [fmaps, *targets], retain_graph=True)
    grads = torch.autograd.grad((out * weights).sum(), [fmaps, *targets])
    for got, want in zip(grads, grads_expected):
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


# C,H,W,levels,R. In the first case, level 3 of H=13 has one row.
# In the second, C=12 and R=2 leave masked lanes in the kernel's blocks.
INTERPRETER_CASES = [(16, 13, 17, 4, 3), (12, 9, 10, 3, 2)]


def check_interpreted_cases() -> None:
    """Run in a child process started with TRITON_INTERPRET=1: Triton must be imported in that mode."""
    for C, H, W, levels, radius in INTERPRETER_CASES:
        check_fused_against_pytorch(
            nets.corr_triton.fused_corr, corr_case(1, 2, 3, C, H, W, levels), radius, 1e-5
        )


def run_interpreted(function: str) -> subprocess.CompletedProcess:
    """tests.test_fast_path.<function>() in a child process under Triton's interpreter; it must succeed."""
    pytest.importorskip("triton")
    child = f"from tests.test_fast_path import {function}; {function}()"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", child], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fused_corr_matches_pytorch_in_interpreter() -> None:
    run_interpreted("check_interpreted_cases")


def check_self_check_cases() -> None:
    """Run in a child process started with TRITON_INTERPRET=1: the real kernel proves itself and is used; a
    kernel 0.1% off in its forward, or in its backward only, is caught and switched off, and the PyTorch
    path's result comes back."""
    ct = nets.corr_triton
    real_corr, real_backward = ct.fused_corr, ct._FusedCorr.backward
    calls = []
    ct.fused_corr = lambda *args: calls.append(1) or real_corr(*args)
    pyramid, _, targets, coords = corr_case(1, 2, 3, 16, 13, 17, 4)
    block = CorrBlock(pyramid, 3, fused=True)
    expected = torch.cat([block.sample(t, coords) for t in targets], dim=-1)
    out = block.sample_concat(targets, coords)
    assert ct._failure is None and ct._checked == {("cpu", True)} and len(calls) == 2  # the check, the call
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)

    ct._checked.clear()
    ct.fused_corr = lambda *args: real_corr(*args) * 1.001
    with torch.no_grad():
        out = block.sample_concat(targets, coords)
    assert ct._failure.startswith("it failed its check: forward off by 0.001 relative to the PyTorch path")
    assert torch.equal(out, expected.detach()) and not ct.available(coords)

    def wrong_backward(ctx, grad_out: torch.Tensor) -> tuple:  # noqa: ANN001
        grad_targets, *rest = real_backward(ctx, grad_out)
        return grad_targets * 1.001, *rest

    ct._failure, ct.fused_corr = None, real_corr
    ct._FusedCorr.backward = staticmethod(wrong_backward)
    with torch.no_grad():
        torch.testing.assert_close(block.sample_concat(targets, coords), expected.detach(), atol=1e-5, rtol=0)
    assert ct._failure is None and ct._checked == {("cpu", False)}  # the forward agrees
    out = block.sample_concat(targets, coords)
    assert ct._failure.startswith("it failed its check: template gradients off by 0.001")
    assert torch.equal(out, expected)


def test_fused_kernel_proves_itself_in_interpreter() -> None:
    proc = run_interpreted("check_self_check_cases")
    warnings = [line for line in proc.stderr.splitlines() if "fused correlation kernel switched off" in line]
    assert len(warnings) == 2 and all(w.endswith("; using the PyTorch path instead") for w in warnings)


def test_fused_corr_unavailable_on_cpu() -> None:
    assert not nets.corr_triton.available(torch.zeros(1))


@needs_cuda_triton
def test_fused_corr_matches_pytorch_on_cuda() -> None:
    case = corr_case(2, 8, 64, 128, 40, 56, 4, device="cuda")
    check_fused_against_pytorch(nets.corr_triton.fused_corr, case, 3, atol=1e-4)


@needs_cuda_triton
def test_fast_path_on_cuda_tracks_like_exact(clip: tuple) -> None:
    trajs_e0, rgbs = (t.cuda() for t in clip)
    torch.manual_seed(0)
    model = Pips().cuda().eval()
    # the exact path computes in IEEE float32; cuDNN's default TF32 alone moves tracks by ~0.2 px, so the
    # float32 fast path is compared with TF32 off too
    no_tf32 = torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)
    with torch.no_grad(), no_tf32:
        exact = model(trajs_e0, rgbs, iters=1)
        fast32 = model.set_fast(True, torch.float32)(trajs_e0, rgbs, iters=1)
        fast = model.set_fast(True)(trajs_e0, rgbs, iters=2)
    torch.testing.assert_close(fast32.tracks, exact.tracks, atol=5e-2, rtol=0)
    assert fast.tracks.dtype == torch.float32 and torch.isfinite(fast.tracks).all()
    assert torch.equal(fast.tracks[:, 0], trajs_e0[:, 0])


def test_failing_fused_kernel_falls_back_to_pytorch_once(monkeypatch, caplog) -> None:  # noqa: ANN001
    calls = []

    def broken(*args: object) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(nets.corr_triton, "_failure", None)
    monkeypatch.setattr(nets.corr_triton, "_checked", set())
    monkeypatch.setattr(nets.corr_triton, "triton", object())  # as if Triton imported
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    monkeypatch.setattr(nets.corr_triton, "fused_corr", broken)
    pyramid, _, targets, coords = corr_case(1, 2, 5, 8, 16, 16, 3)
    with torch.no_grad():
        block = CorrBlock([p.detach() for p in pyramid], 3, fused=True)
        expected = torch.cat([block.sample(t.detach(), coords) for t in targets], dim=-1)
        with caplog.at_level("WARNING"):
            first = block.sample_concat([t.detach() for t in targets], coords)
            second = block.sample_concat([t.detach() for t in targets], coords)
    torch.testing.assert_close(first, expected, atol=0, rtol=0)
    torch.testing.assert_close(second, expected, atol=0, rtol=0)
    assert len(calls) == 1  # switched off after the first failure
    assert "no kernel image for this GPU" in caplog.text and "PyTorch path" in caplog.text
    assert not nets.corr_triton.available(coords)


def test_float16_rounds_finer_than_bfloat16(model: Pips, clip: tuple) -> None:
    _, rgbs = clip
    with torch.no_grad():
        exact = model.encode(rgbs)
        errs = {dtype: rel_err(model.set_fast(True, dtype).encode(rgbs), exact) for dtype in DTYPES}
    model.set_fast(False)
    # 10 vs 7 mantissa bits: float16 is about 8x closer to float32
    assert 0 < errs[torch.float16] < errs[torch.bfloat16] / 3


def test_float16_overflow_redoes_the_window_in_float32(clip: tuple) -> None:
    trajs_e0, rgbs = clip
    torch.manual_seed(0)
    model = Pips().eval()
    with torch.no_grad():
        model.fnet.conv1.weight.mul_(1e6)  # conv1 outputs of ~1e5, beyond float16's 65504: inf
        fp32 = model.set_fast(True, torch.float32)(trajs_e0, rgbs, iters=2)
        model.set_fast(True, torch.float16)
        assert not torch.isfinite(model(trajs_e0, rgbs, iters=2).tracks).all()  # the model itself overflows
        with pytest.warns(UserWarning, match="float16 overflowed"):
            out = Float16Guard(model)(trajs_e0, rgbs, iters=2)
    assert torch.equal(out.tracks, fp32.tracks)
    assert model.precision == Precision(True, torch.float16)  # as it was: later windows try float16 again


def test_set_fast_sets_one_precision_and_rejects_other_dtypes() -> None:
    model = Pips().set_fast(True, torch.float16)
    assert model.precision == Precision(True, torch.float16)
    assert model.set_fast(True, None).precision == Precision(True, torch.float32)  # None: no autocast
    assert model.set_fast(False, torch.float16).precision == EXACT
    with pytest.raises(ValueError, match="float64"):
        Pips().set_fast(True, torch.float64)
    with pytest.raises(ValueError, match="the exact path computes in torch.float32, got torch.bfloat16"):
        Precision(False, torch.bfloat16)


def test_choose_precision_per_device_and_job(monkeypatch) -> None:  # noqa: ANN001
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_precision(cpu) == EXACT and choose_precision(cuda, fast=False) == EXACT
    assert choose_precision(cuda) == Precision(True, torch.float16)  # inference
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_precision(cuda, training=True) == Precision(True, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_precision(cuda, training=True) == EXACT  # float16 training would need loss scaling
