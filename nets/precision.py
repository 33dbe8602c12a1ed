"""How Pips computes: the exact float32 path or the fast path's autocast, and what it recomputes in backward.

The exact path computes in IEEE float32 (no TF32 on CUDA) and leaves a caller's autocast alone. The fast
path runs the encoder and the delta blocks under autocast to `Precision.dtype` and everything between them
(correlations, template sampling, coordinate updates) in float32, whatever the caller's autocast: the
iterations would amplify rounding there.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # the fast path's autocast dtypes (float32: none)


@contextlib.contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
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


def float32(device: torch.device) -> contextlib.AbstractContextManager:
    """Float32 whatever the caller's autocast."""
    return torch.autocast(device.type, enabled=False)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype`; float32 means none (float32 whatever the caller's autocast)."""
    if dtype == torch.float32:
        return float32(device)
    return torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Precision:
    """The exact float32 path (fast=False), or the fast path autocasting its layers to `dtype`.

    torch.bfloat16 suits training (no loss scaling), torch.float16 inference (8x finer rounding, the same
    tensor-core speed; a caller redoes a window whose tracks overflow), torch.float32 = no autocast.
    """

    fast: bool = False
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"fast-path dtype must be torch.bfloat16, float16 or float32, got {self.dtype}")
        if not self.fast and self.dtype != torch.float32:
            raise ValueError(f"the exact path computes in torch.float32, got {self.dtype}")

    def window(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Around a whole window: float32 on the fast path, IEEE float32 on the exact path."""
        return float32(device) if self.fast else ieee_float32(device)

    def layers(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Around the encoder and the delta blocks: the fast path's autocast; the exact path leaves the
        caller's precision."""
        return autocast(device, self.dtype) if self.fast else contextlib.nullcontext()


EXACT = Precision()


def choose_precision(device: torch.device, fast: bool = True, training: bool = False) -> Precision:
    """The precision Pips runs with on `device` for a job: the fast path where it pays, else EXACT.

    On CUDA: bfloat16 to train (no loss scaling; GPUs without it train exact), float16 for inference (its
    finer rounding keeps the tracks closest to float32). CPU and MPS stay exact: autocast does not pay there.
    """
    if not fast or device.type != "cuda":
        return EXACT
    if training:
        return Precision(True, torch.bfloat16) if torch.cuda.is_bf16_supported() else EXACT
    return Precision(True, torch.float16)


def recompute(function: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """function(*args), storing only its output for backward, which runs it again (activation checkpointing;
    Pips draws no random numbers, so no RNG state is kept)."""
    return checkpoint(function, *args, use_reentrant=False, preserve_rng_state=False)


_LAYER_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default)


def _keep_layer_outputs(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    """Keep the outputs of convolutions and linear layers; recompute everything between them."""
    return CheckpointPolicy.MUST_SAVE if op in _LAYER_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def recompute_between_layers(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """module.forward(*args) in the caller's precision, storing for backward only the outputs of its
    convolutions and linear layers; the cheap operations between them (norms, ReLUs, padding, residual
    sums, casts) run again in backward. For the delta block that halves what it stores for a few percent
    of its time."""
    # the eager forward runs even where the module was compiled: recomputing code compiled by torch.compile
    # goes wrong in two ways (selective recomputation gives wrong gradients, and recomputing autocast
    # regions leaves autocast's nesting count raised, so its cast cache is never cleared and would hand
    # later steps stale weights)
    device = args[0].device.type
    # backward replays the operations one for one, so none may come from autocast's weight cast cache,
    # which an earlier call filled in forward but is empty in backward
    with torch.autocast(device, enabled=torch.is_autocast_enabled(device), cache_enabled=False):
        return checkpoint(
            module.forward,
            *args,
            use_reentrant=False,
            preserve_rng_state=False,
            context_fn=partial(create_selective_checkpoint_contexts, _keep_layer_outputs),
        )
