"""Checkpoints in the official format: `<dir>/model-%09d.pth` holding a dict with `model_state_dict`,
`optimizer_state_dict`, `scheduler_state_dict`, plus `step`, `config` and any extra entries.

Writes are atomic (temporary file in the same directory, fsync, rename), and old checkpoints are pruned
only after the new one is in place, so a killed run loses at most the work since its last save.
"""

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

CKPT_PATTERN = re.compile(r"^model-(\d{9})\.pth$")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The `model-%09d.pth` files of a directory, oldest step first; other files are ignored."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_PATTERN.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def save(
    ckpt_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    keep_latest: int = 5,
    **extra: Any,
) -> Path:
    """Write `<ckpt_dir>/model-<step>.pth` atomically and keep the newest `keep_latest` checkpoints.

    `extra` entries (e.g. config=dict, rng=...) are stored beside the state dicts; keep them to tensors and
    plain Python values so the file loads with `weights_only=True`.
    """
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"model_state_dict": unwrap(model).state_dict(), "step": int(step)}
    if optimizer is not None:
        state["optimizer_state_dict"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler_state_dict"] = scheduler.state_dict()
    state.update(extra)
    path = d / f"model-{int(step):09d}.pth"
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(d)[: -max(keep_latest, 1)]:
        old.unlink(missing_ok=True)
    return path


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the latest `model-%09d.pth` of a directory."""
    p = Path(path)
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise FileNotFoundError(f"no model-XXXXXXXXX.pth checkpoint in directory {p}")
        return latest
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU; a raw state dict is wrapped as {'model_state_dict': ...}."""
    p = resolve(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"cannot read checkpoint {p}: the file is truncated or corrupt ({e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {p} holds a {type(state).__name__}, not a dict")
    if "model_state_dict" not in state:
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            state = {"model_state_dict": state}
        else:
            raise ValueError(f"checkpoint {p} has no 'model_state_dict' (keys: {sorted(state)[:8]})")
    state.setdefault("step", _step_from_name(p))
    return state


def _step_from_name(p: Path) -> int:
    m = CKPT_PATTERN.match(p.name)
    return int(m.group(1)) if m else 0


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) prefixes."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def load(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    strict: bool = True,
) -> int:
    """Load a checkpoint (a file, or a directory's latest) into model (and optimizer, scheduler).

    Returns the checkpoint's step. Raises FileNotFoundError for a missing path, ValueError naming the file for
    a corrupt one or, with strict=True, listing the missing and unexpected parameter names.
    """
    p = resolve(path)
    state = read(p)
    target = unwrap(model)
    weights = strip_prefixes(state["model_state_dict"])
    if strict:
        own = target.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"checkpoint {p} does not fit the model: missing {len(missing)} {missing[:6]}, "
                f"unexpected {len(unexpected)} {unexpected[:6]}, wrong shape {len(wrong)} {wrong[:6]}"
            )
    target.load_state_dict(weights, strict=strict)
    if optimizer is not None:
        if "optimizer_state_dict" not in state:
            raise ValueError(f"checkpoint {p} has no optimizer state")
        optimizer.load_state_dict(state["optimizer_state_dict"])
    if scheduler is not None:
        if "scheduler_state_dict" not in state:
            raise ValueError(f"checkpoint {p} has no scheduler state")
        scheduler.load_state_dict(state["scheduler_state_dict"])
    return int(state["step"])


def load_weights(init_dir: str | os.PathLike, model: nn.Module) -> int:
    """Model weights for evaluation or the demo; a missing checkpoint points at get_reference_model.sh."""
    try:
        return load(init_dir, model)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}. Run ./get_reference_model.sh to download the reference model, or pass --init_dir"
        ) from None
