"""Pips: the PIPs++ network, wiring the encoder, the correlation pyramid and the delta block."""

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from nets.corr import CorrBlock, build_pyramid
from nets.delta import DeltaBlock
from nets.encoder import BasicEncoder
from nets.norm import InstanceNorm
from utils.sampling import bilinear_sample_border

ENCODE_CHUNK = 16  # frames per encoder call when no gradient is needed
GRAD_CHUNK_PIXELS = 2**19  # frame pixels per encoder call under autograd (5 frames of 256x384)
_LAYER_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default)


def _keep_layer_outputs(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    """Selective recomputation of the delta block: the outputs of its convolutions and of its linear layer
    are kept, everything between them (norms, ReLUs, padding, residual sums, casts, the flow embedding) is
    recomputed in backward. That halves what the block stores for a few percent of its time."""
    return CheckpointPolicy.MUST_SAVE if op in _LAYER_OPS else CheckpointPolicy.PREFER_RECOMPUTE


Feats = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PipsOutput(NamedTuple):
    """What one window of Pips gives; coordinates are x,y pixels of the input frames."""

    tracks: torch.Tensor  # B,S,N,2 the result: the last iteration's tracks with frame 0 locked to the queries
    preds: list[torch.Tensor]  # iters x B,S,N,2 per-iteration predictions (frame 0 not locked), for the loss
    feats: Feats  # (feats1, feats2, feats4), each B,S,N,C: the templates that chain the next window
    coords_anim: list[torch.Tensor]  # iters+2 x B,S,N,2: the initial tracks, each iteration locked, tracks
    vis: torch.Tensor | None = None  # B,S,N visibility logits (with the visibility head, else None)
    conf: torch.Tensor | None = None  # B,S,N confidence logits: is the track within a few pixels?


def frames_to_rgbs(frames: torch.Tensor) -> torch.Tensor:
    """Frames ...,S,H,W,3 (uint8 or float RGB 0..255), the layout of every reader and drawing function, ->
    ...,S,3,H,W float32, the layout Pips takes: the one permute between the two."""
    return frames.movedim(-1, -3).float()  # ...,S,3,H,W


@contextlib.contextmanager
def _ieee_float32(device: torch.device) -> Iterator[None]:
    """Float32 convolutions and matrix products without TF32 on CUDA (cuDNN uses TF32 by default, which
    moves tracks by tenths of a pixel); elsewhere nothing changes."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


VIS_HEAD_PREFIX = "vis_head."  # the parameters of the optional visibility head
EDGE_UNIT = 4.0  # feature pixels: the visibility head sees distances to the frame's edge up to this far


class Pips(nn.Module):
    """PIPs++ with the official parameter names, so the published checkpoint loads with strict=True.

    With vis_head=True a small delta block (prefix vis_head.*) reads the correlations at the final tracks,
    their motion and their distance to the frame's edge (a point outside the frame is not visible), and gives
    per frame and point a visibility logit and a confidence logit (is the track within a few pixels?). It runs
    after the refinement, so the tracks are those of the same backbone without it.
    """

    def __init__(
        self,
        stride: int = 8,
        latent_dim: int = 128,
        corr_levels: int = 4,
        corr_radius: int = 3,
        vis_head: bool = False,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.latent_dim = latent_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.fnet = BasicEncoder(output_dim=latent_dim, stride=stride)
        self.delta_block = DeltaBlock(latent_dim, corr_levels, corr_radius)
        # present in the official checkpoint, unused by its forward; kept so strict loading works both ways
        self.norm = nn.GroupNorm(1, latent_dim)
        self.vis_head = (
            DeltaBlock(latent_dim, corr_levels, corr_radius, base_filters=64, num_blocks=4, extra_dim=1)
            if vis_head
            else None
        )
        self.fast = False
        self.fast_dtype = torch.float32
        self.recompute = False

    def set_fast(self, enabled: bool = True, dtype: torch.dtype | None = torch.bfloat16) -> "Pips":
        """Switch between the exact float32 path (the default) and the fast path.

        The fast path runs the encoder in channels_last memory, normalises with one-pass float32 statistics,
        uses the fused Triton correlation on CUDA when Triton imports, and runs the encoder and the delta
        block under autocast to `dtype`: torch.bfloat16 (training: no loss scaling needed) or torch.float16
        (inference: 8x finer rounding, the same tensor-core speed; a window whose tracks overflow is redone
        in float32 by the caller). None or torch.float32 = no autocast. Correlations, template sampling and
        the coordinate updates stay float32 (the iterations would amplify rounding). Parameters and
        checkpoints are unchanged. The exact path computes in IEEE float32 (no TF32 on CUDA).
        """
        dtype = dtype or torch.float32
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"fast-path dtype must be torch.bfloat16, float16 or float32, got {dtype}")
        self.fast = enabled
        self.fast_dtype = dtype if enabled else torch.float32
        self.fnet.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        for module in self.modules():
            if isinstance(module, InstanceNorm):
                module.fast = enabled
        return self

    def set_recompute(self, enabled: bool = True) -> "Pips":
        """Train in a fraction of the memory: under autograd, recompute activations in backward rather than
        store them (the default stores everything).

        The encoder's chunks of frames (GRAD_CHUNK_PIXELS) run under activation checkpointing: only the
        feature maps are stored, and backward re-runs the encoder one chunk at a time. Each iteration's
        delta block keeps only its layers' outputs and recomputes the cheap operations between them. The
        gradients are those of the store-everything path (the same kernels on the same inputs); a step costs
        one more encoder forward. Without autograd (inference) nothing changes. Works with set_fast.
        """
        self.recompute = enabled
        return self

    def compile_parts(self, **compile_kwargs: object) -> "Pips":
        """torch.compile the encoder and the delta block in place (parameter names stay); kwargs go to
        torch.compile, e.g. mode='max-autotune'."""
        self.fnet.compile(**compile_kwargs)
        self.delta_block.compile(**compile_kwargs)
        return self

    def _precision(
        self, device: torch.device, low: bool, dtype: torch.dtype
    ) -> contextlib.AbstractContextManager:
        """Fast path: autocast to `dtype` where `low` (unless that is float32), float32 elsewhere, whatever
        the caller's autocast. The exact path leaves the caller's autocast alone."""
        if not self.fast:
            return contextlib.nullcontext()
        if dtype == torch.float32:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=dtype, enabled=low)

    def encode(self, rgbs: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """rgbs B,S,3,H,W float 0..255 -> fmaps B,S,C,H//stride,W//stride (float32); `dtype` is the fast
        path's autocast dtype (None = the model's)."""
        B, S, _, H, W = rgbs.shape
        min_side = self.stride * 2 ** (self.corr_levels - 1)
        if min(H, W) < min_side:
            raise ValueError(f"frames of {H}x{W} are too small: each side needs at least {min_side} pixels")
        frames = rgbs.reshape(B * S, 3, H, W)
        dtype = dtype or self.fast_dtype
        encode = partial(self._encode_frames, dtype=dtype)
        if not torch.is_grad_enabled():
            # without autograd, frames go through in chunks: the encoder's activations dominate the memory
            chunk = ENCODE_CHUNK
        else:
            # in chunks under autograd too, whether their activations are stored or recomputed, so that both
            # ways run the very same convolutions; recomputing stores only the feature maps, and backward
            # re-runs the encoder chunk by chunk (the model draws no random numbers: no RNG state to keep)
            chunk = max(1, GRAD_CHUNK_PIXELS // (H * W))
            if self.recompute:
                encode = partial(checkpoint, encode, use_reentrant=False, preserve_rng_state=False)
        fmaps = torch.cat([encode(frames_chunk) for frames_chunk in frames.split(chunk)])
        return fmaps.reshape(B, S, *fmaps.shape[1:])  # B,S,C,H8,W8

    def _encode_frames(self, frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """frames F,3,H,W float 0..255 -> F,C,H8,W8 float32."""
        x = 2 * (frames / 255.0) - 1
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._precision(x.device, True, dtype):
            return self.fnet(x).float()

    @staticmethod
    def sample_templates(fmaps: torch.Tensor, coords: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """Features of frame frame_ids[t] at coords[:, frame_ids[t]], border-clamped -> B,S,N,C.

        Every frame is sampled at its own coords, then the frames are picked: indexing fmaps by frame_ids
        first would copy a feature map per frame and keep the copies for backward (2.6 GB per step at
        S=64, 512x896).
        """
        B, S, C, H8, W8 = fmaps.shape
        N = coords.shape[2]
        feats = bilinear_sample_border(fmaps.reshape(B * S, C, H8, W8), coords.reshape(B * S, N, 2))  # BS,N,C
        return feats.reshape(B, S, N, C)[:, frame_ids]  # B,S,N,C

    def forward(
        self,
        trajs_e0: torch.Tensor,
        rgbs: torch.Tensor,
        iters: int = 3,
        feat_init: Feats | None = None,
        beautify: bool = False,
        *,
        dtype: torch.dtype | None = None,
    ) -> PipsOutput:
        """Refine trajectories over one window of S frames.

        Args:
            trajs_e0: B,S,N,2 initial trajectories, x,y in pixels of rgbs; frame 0 holds the query points
                and stays locked in the output.
            rgbs: B,S,3,H,W float RGB in 0..255 (see frames_to_rgbs).
            iters: refinement iterations.
            feat_init: (feats1, feats2, feats4) from a previous window (each B,S',N,C with S' >= S) to chain
                windows; None samples the templates at frame 0.
            beautify: halve the updates of the last quarter of iterations (smoother demo tracks).
            dtype: the fast path's autocast dtype for this call only (None = the one set by set_fast); e.g.
                torch.float32 to redo a window whose float16 tracks overflowed.
        Returns:
            PipsOutput: `tracks` (B,S,N,2 pixels) is the result, `preds` feed sequence_loss, `feats` chain
            the next window.
        """
        dtype = dtype or self.fast_dtype
        precision = self._precision(rgbs.device, False, dtype) if self.fast else _ieee_float32(rgbs.device)
        with precision:
            fmaps = self.encode(rgbs, dtype)  # B,S,C,H8,W8
            return self._refine(fmaps, trajs_e0, iters, feat_init, beautify, dtype)

    def _refine(
        self,
        fmaps: torch.Tensor,
        trajs_e0: torch.Tensor,
        iters: int,
        feat_init: Feats | None,
        beautify: bool,
        dtype: torch.dtype,
    ) -> PipsOutput:
        S = trajs_e0.shape[1]
        coords = trajs_e0 / float(self.stride)  # B,S,N,2 feature pixels
        coords0 = coords[:, 0].clone()  # B,N,2
        frames = torch.arange(S, device=fmaps.device)
        if feat_init is None:
            feats1 = self.sample_templates(fmaps, coords, torch.zeros_like(frames))
            feats2 = feats4 = feats1
        else:
            feats1, feats2, feats4 = (f[:, :S] for f in feat_init)
        corr = CorrBlock(build_pyramid(fmaps, self.corr_levels), self.corr_radius, fused=self.fast)
        preds, coords_anim = [], [coords * self.stride]
        for itr in range(iters):
            coords = coords.detach()
            if itr >= 1:  # re-sample the templates at the current estimate 2 and 4 frames earlier
                feats2 = self.sample_templates(fmaps, coords, (frames - 2).clamp(min=0))
                feats4 = self.sample_templates(fmaps, coords, (frames - 4).clamp(min=0))
            fcorrs = corr.sample_concat((feats1, feats2, feats4), coords)  # B,S,N,3LRR
            delta = self.predict_delta(fcorrs, coords, dtype)  # B,S,N,2
            if beautify and itr > 3 * iters // 4:
                delta = delta * 0.5
            coords = coords + delta  # B,S,N,2
            preds.append(coords * self.stride)
            coords = torch.cat([coords0[:, None], coords[:, 1:]], dim=1)  # lock frame 0
            coords_anim.append(coords * self.stride)
        tracks = coords * self.stride  # B,S,N,2
        vis = conf = None
        if self.vis_head is not None:
            coords = coords.detach()
            fcorrs = corr.sample_concat((feats1, feats2, feats4), coords)  # B,S,N,3LRR at the final tracks
            fcorrs = torch.cat([fcorrs, self.edge_distance(coords, fmaps.shape[-2:])], -1)  # B,S,N,3LRR+1
            vis, conf = self._run_block(self.vis_head, fcorrs, coords, dtype).unbind(-1)  # B,S,N each
        return PipsOutput(tracks, preds, (feats1, feats2, feats4), [*coords_anim, tracks], vis, conf)

    def edge_distance(self, coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """B,S,N,1 signed distance of coords B,S,N,2 (feature pixels) to the edge of the frame whose feature
        map is `size` (H8,W8): positive inside, negative outside, in units of EDGE_UNIT feature pixels and
        clipped to [-1,1]."""
        x_max, y_max = ((n * self.stride - 1) / self.stride for n in reversed(size))
        x, y = coords.unbind(-1)
        inside = torch.stack([x, x_max - x, y, y_max - y], -1).amin(-1, keepdim=True)
        return (inside / EDGE_UNIT).clamp(-1, 1)

    def predict_delta(
        self, fcorrs: torch.Tensor, coords: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Delta block on correlations B,S,N,3LRR and the flows of coords B,S,N,2 -> float32 B,S,N,2 updates
        (feature pixels); `dtype` is the fast path's autocast dtype (None = the model's)."""
        return self._run_block(self.delta_block, fcorrs, coords, dtype or self.fast_dtype)

    def _run_block(
        self, block: DeltaBlock, fcorrs: torch.Tensor, coords: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """A delta block over each track's time axis -> float32 B,S,N,2."""
        B = coords.shape[0]
        flows = coords[:, 1:] - coords[:, :-1]  # B,S-1,N,2
        flows = torch.cat([flows, flows[:, -1:]], dim=1)  # B,S,N,2
        fcorrs = rearrange(fcorrs, "b s n c -> (b n) s c")  # BN,S,3LRR
        flows = rearrange(flows, "b s n c -> (b n) s c")  # BN,S,2
        with self._precision(coords.device, True, dtype):
            if self.recompute and torch.is_grad_enabled():
                out = self._recompute_block(block, fcorrs, flows)  # BN,S,2
            else:
                out = block(fcorrs, flows)  # BN,S,2
        return rearrange(out.float(), "(b n) s c -> b s n c", b=B)  # B,S,N,2

    def _recompute_block(self, block: DeltaBlock, fcorrs: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """A delta block under selective recomputation (_keep_layer_outputs), in the caller's precision.

        The block runs its eager forward even when compile_parts compiled it: recomputing code compiled by
        torch.compile goes wrong in two ways (selective recomputation gives wrong gradients, and recomputing
        the block's autocast regions leaves autocast's nesting count raised, so its cast cache is never
        cleared and would hand later steps stale weights).
        """
        device = fcorrs.device.type
        # backward replays the block's operations one for one, so none may come from autocast's weight cast
        # cache, which an earlier iteration filled in forward but is empty in backward
        with torch.autocast(device, enabled=torch.is_autocast_enabled(device), cache_enabled=False):
            return checkpoint(
                block.forward,
                fcorrs,
                flows,
                use_reentrant=False,
                preserve_rng_state=False,
                context_fn=partial(create_selective_checkpoint_contexts, _keep_layer_outputs),
            )
