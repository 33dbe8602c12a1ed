"""The paths of the time mode: each builds, for a workload, the step that a row of the table times.

A path is a function `(workload, inputs, options) -> Step`, named for --paths in benchmark.py's PATHS. It
builds what it needs (a model, a session) and returns the call to time with what it computes in; the time
mode times that call, reads its peak memory and credits it the FLOPs of the exact path.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch

from bench.config import dtype_name
from bench.workloads import Inputs, Workload
from nets.losses import sequence_loss
from nets.pips2 import Pips
from tracking.predictor import build_model


class PathOptions(NamedTuple):
    device: torch.device
    seed: int  # of the random weights
    dtype: torch.dtype  # the fast path's autocast dtype for this workload
    compile: bool  # torch.compile the fast path's encoder and delta block
    recompute: bool  # Pips.set_recompute, for training workloads


class Step(NamedTuple):
    run: Callable[[], None]  # one inference forward or one training step
    dtype: str  # what it computes in, for the table


PathFn = Callable[[Workload, Inputs, PathOptions], Step]


def timed_model(
    device: torch.device, seed: int, fast: bool, dtype: torch.dtype, compile_parts: bool, recompute: bool
) -> Pips:
    """Random weights of `seed` on `device`, on the exact or the fast path."""
    torch.manual_seed(seed)
    model = build_model(None, device, fast=False).set_fast(fast, dtype).set_recompute(recompute)
    if fast and compile_parts:
        model.compile_parts()
    return model


def make_step(model: Pips, w: Workload, inputs: Inputs) -> Callable[[], None]:
    """One inference forward, or one training step (as train.py: clip 5.0, AdamW lr 5e-4, wd 1e-6)."""
    if not w.train:
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                model(inputs.trajs_e0, inputs.rgbs, iters=w.iters)

        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-6)

    def train_step() -> None:
        out = model(inputs.trajs_e0, inputs.rgbs, iters=w.iters)
        sequence_loss(out.preds, inputs.trajs_g, inputs.valids).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def exact(w: Workload, inputs: Inputs, options: PathOptions) -> Step:
    """The exact path: float32 throughout."""
    model = timed_model(options.device, options.seed, False, options.dtype, False, options.recompute)
    return Step(make_step(model, w, inputs), "float32")


def fast(w: Workload, inputs: Inputs, options: PathOptions) -> Step:
    """The fast path: autocast to options.dtype, channels_last, fused kernels, compiled with --compile."""
    model = timed_model(options.device, options.seed, True, options.dtype, options.compile, options.recompute)
    return Step(make_step(model, w, inputs), dtype_name(options.dtype))
