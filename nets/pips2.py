"""Pips: the PIPs++ network, wiring the encoder, the correlation pyramid and the delta block."""

from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
from einops import rearrange

from nets.corr import CorrBlock, build_pyramid
from nets.delta import DeltaBlock
from nets.encoder import BasicEncoder
from nets.norm import InstanceNorm
from nets.precision import EXACT, Precision, recompute, recompute_between_layers
from utils.sampling import bilinear_sample_border

ENCODE_CHUNK = 16  # frames per encoder call when no gradient is needed
GRAD_CHUNK_PIXELS = 2**19  # frame pixels per encoder call under autograd (5 frames of 256x384)

Feats = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PipsOutput(NamedTuple):
    """What one window of Pips gives; coordinates are x,y pixels of the input frames."""

    tracks: torch.Tensor  # B,S,N,2 the result: the last iteration's tracks with frame 0 locked to the queries
    preds: list[torch.Tensor]  # iters x B,S,N,2 per-iteration predictions (frame 0 not locked), for the loss
    feats: Feats  # (feats1, feats2, feats4), each B,S,N,C: the templates that chain the next window
    vis: torch.Tensor | None = None  # B,S,N visibility logits (with the visibility head, else None)
    conf: torch.Tensor | None = None  # B,S,N confidence logits: is the track within a few pixels?


def frames_to_rgbs(frames: torch.Tensor) -> torch.Tensor:
    """Frames ...,S,H,W,3 (uint8 or float RGB 0..255), the layout of every reader and drawing function, ->
    ...,S,3,H,W float32, the layout Pips takes: the one permute between the two."""
    return frames.movedim(-1, -3).float()  # ...,S,3,H,W


VIS_HEAD_PREFIX = "vis_head."  # the parameters of the optional visibility head
EDGE_UNIT = 4.0  # feature pixels: the visibility head sees distances to the frame's edge up to this far


class Pips(nn.Module):
    """PIPs++ with the official parameter names, so the published checkpoint loads with strict=True.

    Attributes:
        vis_head: with vis_head=True, a small delta block (vis_head.*) reading the correlations at the final
            tracks, their motion and their distance to the frame's edge, and gives per frame and point a
            visibility logit and a confidence logit (is the track within a few pixels?). Its inputs carry no
            gradient, so the tracks are the backbone's alone and its loss trains the head alone.
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
        self._precision = EXACT
        self.recompute = False

    @property
    def precision(self) -> Precision:
        """The exact path (the default) or the fast path (see set_fast); setting it also lays out the encoder
        and switches the norms to match."""
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        self._precision = precision
        self.fnet.to(memory_format=torch.channels_last if precision.fast else torch.contiguous_format)
        for module in self.modules():
            if isinstance(module, InstanceNorm):
                module.fast = precision.fast

    def set_fast(self, enabled: bool = True, dtype: torch.dtype | None = torch.bfloat16) -> "Pips":
        """Switch between the exact float32 path (the default) and the fast path (nets/precision.py):
        channels_last encoder, one-pass float32 norm statistics, the fused Triton correlation on CUDA, and
        autocast of the encoder and delta blocks to `dtype` (None or float32: none). Weights are unchanged."""
        fast = Precision(True, dtype or torch.float32)
        self.precision = fast if enabled else EXACT
        return self

    def set_recompute(self, enabled: bool = True) -> "Pips":
        """Under autograd, recompute activations in backward instead of storing them: the same gradients in a
        fraction of the memory, for one more encoder forward per step. Inference is unchanged."""
        # The encoder's chunks of frames (GRAD_CHUNK_PIXELS) keep only their feature maps; backward re-runs
        # them one chunk at a time. Each iteration's delta block keeps only its layers' outputs.
        self.recompute = enabled
        return self

    def compile_parts(self, **compile_kwargs: object) -> "Pips":
        """torch.compile the encoder and the delta block in place (parameter names stay); kwargs go to
        torch.compile, e.g. mode='max-autotune'."""
        self.fnet.compile(**compile_kwargs)
        self.delta_block.compile(**compile_kwargs)
        return self

    def forward(
        self, trajs_e0: torch.Tensor, rgbs: torch.Tensor, iters: int = 3, feat_init: Feats | None = None
    ) -> PipsOutput:
        """Refine trajectories over one window of S frames.

        Args:
            trajs_e0: B,S,N,2 initial trajectories, x,y in pixels of rgbs; frame 0 holds the query points
                and stays locked in the output.
            rgbs: B,S,3,H,W float RGB in 0..255 (see frames_to_rgbs).
            iters: refinement iterations.
            feat_init: (feats1, feats2, feats4) from a previous window (each B,S',N,C with S' >= S) to chain
                windows; None samples the templates at frame 0.
        Returns:
            PipsOutput: `tracks` (B,S,N,2 pixels) is the result, `preds` feed sequence_loss, `feats` chain
            the next window.
        """
        S = trajs_e0.shape[1]
        with self.precision.window(rgbs.device):
            fmaps = self.encode(rgbs)  # B,S,C,H8,W8
            corr = CorrBlock(build_pyramid(fmaps, self.corr_levels), self.corr_radius, self.precision.fast)
            coords = trajs_e0 / float(self.stride)  # B,S,N,2 feature pixels
            if feat_init is None:
                first = torch.zeros(S, dtype=torch.long, device=fmaps.device)  # S
                feats1 = self.sample_templates(fmaps, coords, first)  # B,S,N,C
                feat_init = (feats1, feats1, feats1)
            feats = tuple(f[:, :S] for f in feat_init)
            preds, coords, feats = self.refine(fmaps, corr, coords, feats, iters)
            vis = conf = None
            if self.vis_head is not None:
                vis, conf = self.visibility(corr, feats, coords, fmaps.shape[-2:])
        return PipsOutput(coords * self.stride, preds, feats, vis, conf)

    def encode(self, rgbs: torch.Tensor) -> torch.Tensor:
        """rgbs B,S,3,H,W float 0..255 -> fmaps B,S,C,H//stride,W//stride (float32)."""
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
            # ways run the very same convolutions
            chunk = max(1, GRAD_CHUNK_PIXELS // (H * W))
            if self.recompute:
                encode = partial(recompute, self._encode_frames)
        fmaps = torch.cat([encode(frames_chunk) for frames_chunk in frames.split(chunk)])
        return fmaps.reshape(B, S, *fmaps.shape[1:])  # B,S,C,H8,W8

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames F,3,H,W float 0..255 -> F,C,H8,W8 float32."""
        x = 2 * (frames / 255.0) - 1
        if self.precision.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.layers(x.device):
            return self.fnet(x).float()

    @staticmethod
    def sample_templates(fmaps: torch.Tensor, coords: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """Features of frame frame_ids[t] at coords[:, frame_ids[t]], border-clamped -> B,S,N,C."""
        # Every frame is sampled at its own coords, then the frames are picked: indexing fmaps by frame_ids
        # first would copy a feature map per frame and keep the copies for backward (2.6 GB at S=64, 512x896).
        B, S, C, H8, W8 = fmaps.shape
        N = coords.shape[2]
        feats = bilinear_sample_border(fmaps.reshape(B * S, C, H8, W8), coords.reshape(B * S, N, 2))  # BS,N,C
        return feats.reshape(B, S, N, C)[:, frame_ids]  # B,S,N,C

    def refine(
        self, fmaps: torch.Tensor, corr: CorrBlock, coords: torch.Tensor, feats: Feats, iters: int
    ) -> tuple[list[torch.Tensor], torch.Tensor, Feats]:
        """`iters` delta updates of coords B,S,N,2 (feature pixels) -> (each iteration's prediction B,S,N,2
        in pixels, the final coords with frame 0 locked, the templates). From the second iteration on, the
        templates 2 and 4 frames earlier are re-sampled at the current estimate."""
        S = coords.shape[1]
        coords0 = coords[:, :1].clone()  # B,1,N,2
        frames = torch.arange(S, device=fmaps.device)  # S
        feats1, feats2, feats4 = feats
        preds = []
        for itr in range(iters):
            coords = coords.detach()
            if itr >= 1:
                feats2 = self.sample_templates(fmaps, coords, (frames - 2).clamp(min=0))  # B,S,N,C
                feats4 = self.sample_templates(fmaps, coords, (frames - 4).clamp(min=0))  # B,S,N,C
            fcorrs = corr.sample_concat((feats1, feats2, feats4), coords)  # B,S,N,3LRR
            coords = coords + self.predict_delta(fcorrs, coords)  # B,S,N,2
            preds.append(coords * self.stride)
            coords = torch.cat([coords0, coords[:, 1:]], dim=1)  # B,S,N,2 frame 0 locked
        return preds, coords, (feats1, feats2, feats4)

    def visibility(
        self, corr: CorrBlock, feats: Feats, coords: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The visibility head at the final coords B,S,N,2 (feature pixels) of frames whose feature map is
        `size` (H8,W8) -> visibility and confidence logits, B,S,N each."""
        coords = coords.detach()  # the head's inputs carry no gradient: its loss trains the head alone
        with torch.no_grad():
            fcorrs = corr.sample_concat(feats, coords)  # B,S,N,3LRR
            fcorrs = torch.cat([fcorrs, self.edge_distance(coords, size)], -1)  # B,S,N,3LRR+1
        return self._run_block(self.vis_head, fcorrs, coords).unbind(-1)

    def edge_distance(self, coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """B,S,N,1 signed distance of coords B,S,N,2 (feature pixels) to the edge of the frame whose feature
        map is `size` (H8,W8): positive inside, negative outside, in units of EDGE_UNIT feature pixels and
        clipped to [-1,1]."""
        x_max, y_max = ((n * self.stride - 1) / self.stride for n in reversed(size))
        x, y = coords.unbind(-1)
        inside = torch.stack([x, x_max - x, y, y_max - y], -1).amin(-1, keepdim=True)
        return (inside / EDGE_UNIT).clamp(-1, 1)

    def predict_delta(self, fcorrs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Delta block on correlations B,S,N,3LRR and the flows of coords B,S,N,2 -> float32 B,S,N,2 updates
        (feature pixels)."""
        return self._run_block(self.delta_block, fcorrs, coords)

    def _run_block(self, block: DeltaBlock, fcorrs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """A delta block over each track's time axis -> float32 B,S,N,2."""
        B = coords.shape[0]
        flows = coords[:, 1:] - coords[:, :-1]  # B,S-1,N,2
        flows = torch.cat([flows, flows[:, -1:]], dim=1)  # B,S,N,2
        fcorrs = rearrange(fcorrs, "b s n c -> (b n) s c")  # BN,S,3LRR
        flows = rearrange(flows, "b s n c -> (b n) s c")  # BN,S,2
        with self.precision.layers(coords.device):
            if self.recompute and torch.is_grad_enabled():
                out = recompute_between_layers(block, fcorrs, flows)  # BN,S,2
            else:
                out = block(fcorrs, flows)  # BN,S,2
        return rearrange(out.float(), "(b n) s c -> b s n c", b=B)  # B,S,N,2
