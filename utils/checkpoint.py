"""Checkpoints in the official format: `<dir>/model-%09d.pth` holding a dict with `model_state_dict`,
`optimizer_state_dict`, `scheduler_state_dict`, plus `step`, `config` and any extra entries.

Writes are atomic (temporary file in the same directory, fsync, rename), and old checkpoints are pruned
only after the new one is in place, so a killed run loses at most the work since its last save. Loading a
directory takes its newest checkpoint that reads, so a file damaged after the fact costs one save interval.
"""

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

CKPT_PATTERN = re.compile(r"^model-(\d{9})\.pth$")
TMP_PREFIX, TMP_SUFFIX = ".model-", ".tmp"  # a save in progress, or one a killed process left behind
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
LEGACY_MAGIC = b"\x80\x02\x8a\x0a"  # the pickle-based format before it
REFERENCE_DIR = "./reference_model"  # where get_reference_model.sh puts the published checkpoint


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
    """Write `<ckpt_dir>/model-<step>.pth` atomically (with the user's umask) and keep the newest
    `keep_latest`; temporary files a killed save left behind go first. `extra` entries (e.g. config=dict) are
    stored beside the state dicts: tensors and plain Python values, so the file loads with weights_only."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    for leftover in d.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    state: dict[str, Any] = {"model_state_dict": unwrap(model).state_dict(), "step": int(step)}
    if optimizer is not None:
        state["optimizer_state_dict"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler_state_dict"] = scheduler.state_dict()
    state.update(extra)
    path = d / f"model-{int(step):09d}.pth"
    tmp = d / f"{TMP_PREFIX}{int(step):09d}-{os.getpid()}{TMP_SUFFIX}"
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for old in list_checkpoints(d)[: -max(keep_latest, 1)]:
        old.unlink(missing_ok=True)
    return path


def _torch_load(p: Path) -> Any:
    """torch.load with weights_only=True; a failure is told in our words, never PyTorch's (whose advice to
    retry with weights_only=False would run the code a file may hold)."""
    with open(p, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC and not head.startswith(LEGACY_MAGIC):
        raise ValueError(f"{p} is not a checkpoint (not a file written by torch.save)")
    if head == ZIP_MAGIC and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            if not any(name.endswith("/data.pkl") for name in zf.namelist()):
                raise ValueError(f"{p} is not a checkpoint (a zip archive not written by torch.save)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"checkpoint {p} holds Python objects other than tensors and plain values; they are not "
            "loaded, as unpickling them can run any code"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise ValueError(f"cannot read checkpoint {p}: the file is truncated or corrupt") from None


def _read_file(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    state = _torch_load(p)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {p} holds a {type(state).__name__}, not a dict")
    if "model_state_dict" not in state:
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            state = {"model_state_dict": state}
        else:
            raise ValueError(f"checkpoint {p} has no 'model_state_dict' (keys: {sorted(state)[:8]})")
    state.setdefault("step", _step_from_name(p))
    return state


def read_newest(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(file, its dict) of a checkpoint file, or of the newest readable `model-%09d.pth` of a directory;
    each newer one that cannot be read (say, truncated by a full disk) is named in a warning."""
    p = Path(path)
    if not p.is_dir():
        return p, _read_file(p)
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise FileNotFoundError(f"no model-XXXXXXXXX.pth checkpoint in directory {p}")
    for ckpt in reversed(ckpts):
        try:
            return ckpt, _read_file(ckpt)
        except ValueError as err:
            log.warning("%s; trying the checkpoint before it", err)
    raise ValueError(f"none of the {len(ckpts)} checkpoints in {p} can be read")


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU from a file, or from the newest readable checkpoint of a directory;
    a raw state dict is wrapped as {'model_state_dict': ...}. ValueError naming the file when it is not a
    checkpoint or is truncated."""
    return read_newest(path)[1]


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
    optional: tuple[str, ...] = (),
) -> int:
    """Load a checkpoint (a file, or a directory's newest readable one) into model (and optimizer, scheduler).

    Returns:
        The checkpoint's step. Raises FileNotFoundError for a missing path, ValueError naming the file for a
        corrupt one or, with strict=True, listing the missing and unexpected parameter names. Parameters
        whose names start with one of the `optional` prefixes may be missing: they keep their initialisation,
        and one warning says so.
    """
    return load_state(*read_newest(path), model, optimizer, scheduler, strict, optional)


def load_state(
    p: Path,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    strict: bool = True,
    optional: tuple[str, ...] = (),
) -> int:
    """`load` for a checkpoint dict already read from file `p` (see read_newest)."""
    target = unwrap(model)
    weights = strip_prefixes(state["model_state_dict"])
    own = target.state_dict()
    absent = sorted(k for k in set(own) - set(weights) if optional and k.startswith(optional))
    if strict:
        missing = sorted(set(own) - set(weights) - set(absent))
        unexpected = sorted(set(weights) - set(own))
        wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"checkpoint {p} does not fit the model: missing {len(missing)} {missing[:6]}, "
                f"unexpected {len(unexpected)} {unexpected[:6]}, wrong shape {len(wrong)} {wrong[:6]}"
            )
    if absent:
        prefixes = sorted({prefix for prefix in optional for k in absent if k.startswith(prefix)})
        log.warning(
            "checkpoint %s has no %s parameters: they start from their initialisation, untrained",
            p,
            ", ".join(f"{prefix}*" for prefix in prefixes),
        )
    target.load_state_dict(weights, strict=strict and not absent)
    if optimizer is not None:
        if "optimizer_state_dict" not in state:
            raise ValueError(f"checkpoint {p} has no optimizer state")
        optimizer.load_state_dict(state["optimizer_state_dict"])
    if scheduler is not None:
        if "scheduler_state_dict" not in state:
            raise ValueError(f"checkpoint {p} has no scheduler state")
        scheduler.load_state_dict(state["scheduler_state_dict"])
    return int(state["step"])


def read_weights(init_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """read_newest for model weights (evaluation, the demo, fine-tuning): a missing checkpoint points at
    get_reference_model.sh."""
    try:
        return read_newest(init_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}. Run ./get_reference_model.sh to download the reference model, or give a checkpoint's path"
        ) from None
