"""Pips: the PIPs++ network, wiring the encoder, the correlation pyramid and the delta block."""

import contextlib
import warnings
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    noop_context_fn,
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
    coords: list[torch.Tensor]  # iters per-iteration predictions (frame 0 not re-locked), then the final one
    coords_anim: list[torch.Tensor]  # the initial coords, each iteration with frame 0 locked, the final again
    feats: Feats  # (feats1, feats2, feats4), each B,S,N,C, to chain the next window


class Pips(nn.Module):
    """PIPs++ with the official parameter names, so the published checkpoint loads with strict=True."""

    def __init__(
        self, stride: int = 8, latent_dim: int = 128, corr_levels: int = 4, corr_radius: int = 3
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
        self.fast = False
        self.fast_dtype = torch.float32
        self.recompute = False
        self.parts_compiled = False

    def set_fast(self, enabled: bool = True, dtype: torch.dtype | None = torch.bfloat16) -> "Pips":
        """Switch between the exact float32 path (the default) and the fast path.

        The fast path runs the encoder in channels_last memory, normalises with one-pass float32 statistics,
        uses the fused Triton correlation on CUDA when Triton imports, and runs the encoder and the delta
        block under autocast to `dtype`: torch.bfloat16 (training: no loss scaling needed) or torch.float16
        (inference: 8x finer rounding, the same tensor-core speed; a window whose tracks overflow is redone
        without autocast). None or torch.float32 = no autocast. Correlations, template sampling and the
        coordinate updates stay float32 (the iterations would amplify rounding). Parameters and checkpoints
        are unchanged.
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
        self.parts_compiled = True
        return self

    def _precision(self, device: torch.device, low: bool) -> contextlib.AbstractContextManager:
        """Fast path: autocast to fast_dtype where `low` (unless that is float32), float32 elsewhere,
        whatever the caller's autocast. The exact path leaves the caller's autocast alone."""
        if not self.fast:
            return contextlib.nullcontext()
        if self.fast_dtype == torch.float32:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=self.fast_dtype, enabled=low)

    def encode(self, rgbs: torch.Tensor) -> torch.Tensor:
        """rgbs B,S,3,H,W float 0..255 -> fmaps B,S,C,H//stride,W//stride."""
        B, S, _, H, W = rgbs.shape
        min_side = self.stride * 2 ** (self.corr_levels - 1)
        if min(H, W) < min_side:
            raise ValueError(f"frames of {H}x{W} are too small: each side needs at least {min_side} pixels")
        frames = rgbs.reshape(B * S, 3, H, W)
        encode = self._encode_frames
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

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames F,3,H,W float 0..255 -> F,C,H8,W8 float32."""
        x = 2 * (frames / 255.0) - 1
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._precision(x.device, low=True):
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
    ) -> PipsOutput:
        """Refine trajectories over one window of S frames.

        Args:
            trajs_e0: B,S,N,2 initial trajectories, x,y in pixels of rgbs; frame 0 holds the query points
                and stays locked in the output.
            rgbs: B,S,3,H,W float RGB in 0..255.
            iters: refinement iterations.
            feat_init: (feats1, feats2, feats4) from a previous window (each B,S',N,C with S' >= S) to chain
                windows; None samples the templates at frame 0.
            beautify: halve the updates of the last quarter of iterations (smoother demo tracks).
        Returns:
            PipsOutput; coords[-1] (B,S,N,2 pixels) is the result.
        """
        out = self._refine(trajs_e0, rgbs, iters, feat_init, beautify)
        if self.fast_dtype == torch.float16 and not torch.isfinite(out.coords[-1]).all():
            warnings.warn("float16 overflowed in a window; that window is redone in float32", stacklevel=2)
            self.fast_dtype = torch.float32
            try:
                out = self._refine(trajs_e0, rgbs, iters, feat_init, beautify)
            finally:
                self.fast_dtype = torch.float16
        return out

    def _refine(
        self, trajs_e0: torch.Tensor, rgbs: torch.Tensor, iters: int, feat_init: Feats | None, beautify: bool
    ) -> PipsOutput:
        S = trajs_e0.shape[1]
        with self._precision(rgbs.device, low=False):
            fmaps = self.encode(rgbs)  # B,S,C,H8,W8
            coords = trajs_e0 / float(self.stride)  # B,S,N,2 feature pixels
            coords0 = coords[:, 0].clone()  # B,N,2
            frames = torch.arange(S, device=rgbs.device)
            if feat_init is None:
                feats1 = self.sample_templates(fmaps, coords, torch.zeros_like(frames))
                feats2 = feats4 = feats1
            else:
                feats1, feats2, feats4 = (f[:, :S] for f in feat_init)
            corr = CorrBlock(build_pyramid(fmaps, self.corr_levels), self.corr_radius, fused=self.fast)
            coords_pred, coords_anim = [], [coords * self.stride]
            for itr in range(iters):
                coords = coords.detach()
                if itr >= 1:  # re-sample the templates at the current estimate 2 and 4 frames earlier
                    feats2 = self.sample_templates(fmaps, coords, (frames - 2).clamp(min=0))
                    feats4 = self.sample_templates(fmaps, coords, (frames - 4).clamp(min=0))
                fcorrs = corr.sample_concat((feats1, feats2, feats4), coords)  # B,S,N,3LRR
                delta = self.predict_delta(fcorrs, coords)  # B,S,N,2
                if beautify and itr > 3 * iters // 4:
                    delta = delta * 0.5
                coords = coords + delta  # B,S,N,2
                coords_pred.append(coords * self.stride)
                coords = torch.cat([coords0[:, None], coords[:, 1:]], dim=1)  # lock frame 0
                coords_anim.append(coords * self.stride)
            coords_anim.append(coords * self.stride)
            coords_pred.append(coords * self.stride)
        return PipsOutput(coords_pred, coords_anim, (feats1, feats2, feats4))

    def predict_delta(self, fcorrs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Delta block on correlations B,S,N,3LRR and the flows of coords B,S,N,2 -> float32 B,S,N,2 updates
        (feature pixels)."""
        B = coords.shape[0]
        flows = coords[:, 1:] - coords[:, :-1]  # B,S-1,N,2
        flows = torch.cat([flows, flows[:, -1:]], dim=1)  # B,S,N,2
        fcorrs = rearrange(fcorrs, "b s n c -> (b n) s c")  # BN,S,3LRR
        flows = rearrange(flows, "b s n c -> (b n) s c")  # BN,S,2
        with self._precision(coords.device, low=True):
            if self.recompute and torch.is_grad_enabled():
                delta = self._recompute_delta(fcorrs, flows)  # BN,S,2
            else:
                delta = self.delta_block(fcorrs, flows)  # BN,S,2
        return rearrange(delta.float(), "(b n) s c -> b s n c", b=B)  # B,S,N,2

    def _recompute_delta(self, fcorrs: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """The delta block under selective recomputation (_keep_layer_outputs), in the caller's precision.

        A block compiled by compile_parts is recomputed whole instead: selective recomputation around code
        compiled by inductor gives wrong gradients.
        """
        device = fcorrs.device.type
        selective = partial(create_selective_checkpoint_contexts, _keep_layer_outputs)
        # backward replays the block's operations one for one, so none may come from autocast's weight cast
        # cache, which an earlier iteration filled in forward but is empty in backward
        with torch.autocast(device, enabled=torch.is_autocast_enabled(device), cache_enabled=False):
            return checkpoint(
                self.delta_block,
                fcorrs,
                flows,
                use_reentrant=False,
                preserve_rng_state=False,
                context_fn=noop_context_fn if self.parts_compiled else selective,
            )
