"""Fused local correlation in Triton, for the fast path on CUDA.

One program per (frame, point) and pyramid level: it reads the (2R+2)^2 integer-position feature rows of
the window once (channels-last maps, so each row is C contiguous values), takes their dot products with
the T templates, and blends them bilinearly into T windows of (2R+1)^2 values, x-offset-major like
`nets.corr.sample_corr_level`. The blend is a (2R+1)^2 x (2R+2)^2 weight matrix built from the shared
sub-pixel fraction, so no register gather is needed. Dot products accumulate in float32 whatever the
feature dtype. The backward pass gives gradients for the features (atomic adds, so their summation order
is not deterministic) and the templates; the coordinates take none (the model detaches them).

Without Triton, `available` is False and the model keeps the PyTorch path. With TRITON_INTERPRET=1 set
before import, the kernels run on CPU tensors through Triton's interpreter (and are available there).
Before the kernel is trusted on a device, nets/corr.py checks it against the PyTorch path; the state of
that check lives here, one per process.
"""

import logging
import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

log = logging.getLogger(__name__)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # kernels run on CPU tensors, in Triton's interpreter
_failure: str | None = None  # why the kernel was switched off in this process, if it was
_checked: set[tuple[str, bool]] = set()  # (device, with backward) where the kernel agreed with PyTorch


def available(t: torch.Tensor) -> bool:
    """Whether the fused kernel can run on `t`'s device (CUDA with Triton importable, or any device under
    the interpreter) and has not been switched off."""
    return triton is not None and (t.is_cuda or INTERPRETED) and _failure is None


def needs_check(device: torch.device, backward: bool) -> bool:
    """Whether the kernel has yet to prove itself on `device` (forward, and backward if asked): a passed
    check with backward covers the forward too."""
    return (str(device), True) not in _checked and (str(device), backward) not in _checked


def passed_check(device: torch.device, backward: bool) -> None:
    _checked.add((str(device), backward))


def disable(reason: str) -> None:
    """Switch the kernel off for this process: it failed to build or launch (say, a Triton that does not
    support this GPU or driver) or disagreed with the PyTorch path, which the model goes on with."""
    global _failure
    _failure = reason
    log.warning("fused correlation kernel switched off (%s); using the PyTorch path instead", reason[:500])


if triton is not None:

    @triton.jit
    def _load_window(
        fmap_ptr,
        coords_ptr,
        row,
        N,
        H,
        W,
        C,
        scale,
        R: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """Window features Q,C (zero outside the map), blend weights P,Q, and their offsets and mask."""
        K = 2 * R + 2
        D = 2 * R + 1
        # the same clamp as the PyTorch path: far-away points see only zeros, the integer corner stays small
        x = tl.load(coords_ptr + 2 * row) * scale
        y = tl.load(coords_ptr + 2 * row + 1) * scale
        x = tl.minimum(tl.maximum(x, -K - 1.0), W + K + 0.0)
        y = tl.minimum(tl.maximum(y, -K - 1.0), H + K + 0.0)
        x_floor = tl.floor(x)
        y_floor = tl.floor(y)
        fx = x - x_floor
        fy = y - y_floor
        q = tl.arange(0, BLOCK_Q)
        qx = q % K
        qy = q // K
        px = x_floor.to(tl.int32) - R + qx
        py = y_floor.to(tl.int32) - R + qy
        inside = (q < K * K) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
        frame = (row // N).to(tl.int64)
        offsets = ((frame * H + py) * W + px) * C  # Q
        c = tl.arange(0, BLOCK_C)
        mask = inside[:, None] & (c < C)[None, :]
        feats = tl.load(fmap_ptr + offsets[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)
        # output p = ix*D + iy blends window entries (iy + dy, ix + dx), dx, dy in {0, 1}
        p = tl.arange(0, BLOCK_P)
        dx = qx[None, :] - (p // D)[:, None]  # P,Q
        dy = qy[None, :] - (p % D)[:, None]
        wx = tl.where(dx == 0, 1.0 - fx, tl.where(dx == 1, fx, 0.0))
        wy = tl.where(dy == 0, 1.0 - fy, tl.where(dy == 1, fy, 0.0))
        return feats, wx * wy, offsets, mask

    @triton.jit
    def _corr_fwd_kernel(
        fmap_ptr,
        targets_ptr,
        coords_ptr,
        out_ptr,
        N,
        H,
        W,
        C,
        BSN,
        scale,
        inv_sqrt_c,
        out_col,
        R: tl.constexpr,
        T: tl.constexpr,
        OUT_T: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0)
        feats, blend, _, _ = _load_window(
            fmap_ptr, coords_ptr, row, N, H, W, C, scale, R, BLOCK_Q, BLOCK_P, BLOCK_C
        )
        row = row.to(tl.int64)
        c = tl.arange(0, BLOCK_C)
        p = tl.arange(0, BLOCK_P)
        for t in tl.static_range(T):
            target = tl.load(targets_ptr + (t * BSN + row) * C + c, mask=c < C, other=0.0).to(tl.float32)
            dots = tl.sum(feats * target[None, :], axis=1) * inv_sqrt_c  # Q
            window = tl.sum(blend * dots[None, :], axis=1)  # P
            out = out_ptr + row * (T * OUT_T) + t * OUT_T + out_col + p
            tl.store(out, window, mask=p < (2 * R + 1) * (2 * R + 1))

    @triton.jit
    def _corr_bwd_kernel(
        fmap_ptr,
        targets_ptr,
        coords_ptr,
        grad_out_ptr,
        grad_fmap_ptr,
        grad_targets_ptr,
        N,
        H,
        W,
        C,
        BSN,
        scale,
        inv_sqrt_c,
        out_col,
        R: tl.constexpr,
        T: tl.constexpr,
        OUT_T: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0)
        feats, blend, offsets, mask = _load_window(
            fmap_ptr, coords_ptr, row, N, H, W, C, scale, R, BLOCK_Q, BLOCK_P, BLOCK_C
        )
        row = row.to(tl.int64)
        c = tl.arange(0, BLOCK_C)
        p = tl.arange(0, BLOCK_P)
        grad_feats = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
        for t in tl.static_range(T):
            grad_out = grad_out_ptr + row * (T * OUT_T) + t * OUT_T + out_col + p
            g = tl.load(grad_out, mask=p < (2 * R + 1) * (2 * R + 1), other=0.0).to(tl.float32)  # P
            grad_dots = tl.sum(blend * g[:, None], axis=0) * inv_sqrt_c  # Q
            target = tl.load(targets_ptr + (t * BSN + row) * C + c, mask=c < C, other=0.0).to(tl.float32)
            grad_feats += grad_dots[:, None] * target[None, :]
            # levels run one after another on the stream, so this read-add-write has no race
            grad_target = grad_targets_ptr + (t * BSN + row) * C + c
            acc = tl.load(grad_target, mask=c < C, other=0.0) + tl.sum(feats * grad_dots[:, None], axis=0)
            tl.store(grad_target, acc, mask=c < C)
        # relaxed: each add needs no order with other memory, so no fence is built around it
        tl.atomic_add(grad_fmap_ptr + offsets[:, None] + c[None, :], grad_feats, mask=mask, sem="relaxed")


def _launch(
    kernel: "triton.JITFunction",
    level: torch.Tensor,
    index: int,
    num_levels: int,
    radius: int,
    targets: torch.Tensor,
    coords: torch.Tensor,
    *buffers: torch.Tensor,
) -> None:
    """Run `kernel` for pyramid level `index` (BS,H_l,W_l,C) over every (frame, point)."""
    T, BS, N, C = targets.shape
    _, H, W, _ = level.shape
    P = (2 * radius + 1) ** 2
    kernel[(BS * N,)](
        level,
        targets,
        coords,
        *buffers,
        N,
        H,
        W,
        C,
        BS * N,
        1.0 / 2**index,
        1.0 / math.sqrt(C),
        index * P,
        R=radius,
        T=T,
        OUT_T=num_levels * P,
        BLOCK_Q=triton.next_power_of_2((2 * radius + 2) ** 2),
        BLOCK_P=triton.next_power_of_2(P),
        BLOCK_C=triton.next_power_of_2(C),
        num_warps=8,
    )


class _FusedCorr(torch.autograd.Function):
    @staticmethod
    def forward(ctx, targets: torch.Tensor, coords: torch.Tensor, radius: int, *levels: torch.Tensor):
        T, BS, N, _ = targets.shape
        P = (2 * radius + 1) ** 2
        out = torch.empty(BS, N, T * len(levels) * P, device=targets.device, dtype=torch.float32)
        for i, level in enumerate(levels):
            _launch(_corr_fwd_kernel, level, i, len(levels), radius, targets, coords, out)
        ctx.radius = radius
        ctx.save_for_backward(targets, coords, *levels)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        targets, coords, *levels = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_targets = torch.zeros(targets.shape, device=targets.device, dtype=torch.float32)
        grad_levels = []
        for i, level in enumerate(levels):  # each launch adds its level's share into grad_targets
            grad_level = torch.zeros(level.shape, device=level.device, dtype=torch.float32)
            _launch(
                _corr_bwd_kernel,
                level,
                i,
                len(levels),
                ctx.radius,
                targets,
                coords,
                grad_out,
                grad_level,
                grad_targets,
            )
            grad_levels.append(grad_level.to(level.dtype))
        return grad_targets.to(targets.dtype), None, None, *grad_levels


def fused_corr(
    pyramid: list[torch.Tensor], targets: torch.Tensor, coords: torch.Tensor, radius: int
) -> torch.Tensor:
    """Correlation windows of T templates at every pyramid level in one pass over the features.

    Args:
        pyramid: L levels, each BS,C,H_l,W_l (channels_last memory avoids a copy).
        targets: T,B,S,N,C template features.
        coords: B,S,N,2 window centres (x, y) in level-0 pixels; must not require grad.
        radius: R; each window is (2R+1)^2.
    Returns:
        B,S,N,T*L*(2R+1)^2 float32, equal to concatenating `CorrBlock.sample` over the templates.
    """
    assert not coords.requires_grad, "the fused correlation gives no gradient to coords"
    T, B, S, N, C = targets.shape
    levels = [level.permute(0, 2, 3, 1).contiguous() for level in pyramid]  # BS,H_l,W_l,C
    flat_targets = targets.reshape(T, B * S, N, C).contiguous()  # T,BS,N,C
    flat_coords = coords.reshape(B * S, N, 2).float().contiguous()  # BS,N,2
    out = _FusedCorr.apply(flat_targets, flat_coords, radius, *levels)  # BS,N,T*L*(2R+1)^2
    return out.view(B, S, N, -1)
