"""What every benchmark mode's config has (device, seed, out), and the fast path's precision."""

from dataclasses import dataclass
from typing import Literal

import torch

from utils.config import knob

Precision = Literal["auto", "bf16", "fp16", "fp32"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class BenchConfig:
    """The settings every mode takes; a mode's config adds its own fields (and may give `out` its default)."""

    device: str = knob("", "cpu, cuda, cuda:1, ...; '' = CUDA if available")
    seed: int = knob(0, "seed of the random weights, inputs and clips")
    out: str = knob("benchmark.json", "JSON of the environment and the rows, rewritten as each row ends")


def fast_dtype(precision: Precision, train: bool) -> torch.dtype:
    """The fast path's autocast dtype; 'auto' is what the scripts use on CUDA (bf16 trains, fp16 infers)."""
    if precision == "auto":
        return torch.bfloat16 if train else torch.float16
    return DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
