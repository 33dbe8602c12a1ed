"""Training recipes, one file each in configs/: the official one, and the recipe `python train.py` picks up
front where that one does not fit, from the device and its free memory."""

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import yaml

GIB = 1 << 30
# peak CUDA memory of one training step per clip of a micro-batch, mostly activations; measured for the
# official recipe (B=4) on an H200 with bf16 autocast: 28.3 GiB storing every activation, 4.1 GiB (4.9 in
# float32) recomputing them (Pips.set_recompute); rounded up
GIB_PER_CLIP = {False: 7.5, True: 1.25}  # recompute -> GiB
GIB_FIXED = 1.0  # weights, gradients, AdamW moments and the allocator's slack
HEADROOM = 0.9  # share of the free memory a recipe may plan to use


@dataclass(frozen=True)
class Recipe:
    name: str
    B: int  # clips per micro-batch and per process
    S: int  # frames per clip
    N: int  # points per clip
    crop_size: tuple[int, int]  # H,W
    iters: int  # refinement iterations
    max_steps: int  # optimizer steps
    grad_acc: int  # micro-batches per optimizer step
    val_freq: int  # validate every this many steps
    log_freq: int  # TensorBoard gifs every this many steps
    save_freq: int  # checkpoint every this many steps
    num_workers: int  # DataLoader workers per process

    def describe(self) -> str:
        batch = f"B={self.B}"
        if self.grad_acc > 1:
            batch = f"B={self.B * self.grad_acc} as {self.grad_acc}x{self.B}"
        H, W = self.crop_size
        return (
            f"{batch}, S={self.S}, N={self.N}, crop {H}x{W}, {self.iters} iterations, "
            f"{self.max_steps} steps, "
            + (f"validation every {self.val_freq}" if self.val_freq else "no validation")
        )

    def knobs(self) -> tuple[str, ...]:
        """The train.py flags a recipe sets."""
        return tuple(f.name for f in fields(self) if f.name != "name")


CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"  # one YAML file per recipe


def load_recipe(path: Path) -> Recipe:
    """The recipe of a YAML file in configs/ (its name is the file's stem): every knob, nothing else."""
    values = yaml.safe_load(path.read_text()) or {}
    knobs = {f.name for f in fields(Recipe)} - {"name"}
    if not isinstance(values, dict) or set(values) != knobs:
        raise ValueError(f"recipe {path} must set exactly {', '.join(sorted(knobs))}")
    values["crop_size"] = tuple(values["crop_size"])
    return Recipe(path.stem, **values)


RECIPES = {r.name: r for r in map(load_recipe, sorted(CONFIGS_DIR.glob("*.yaml"), key=lambda p: p.stem))}
OFFICIAL = RECIPES["official"]


def free_memory(device: torch.device) -> int | None:
    """Free bytes of a CUDA device, or None where that is not known."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def needed_gib(recipe: Recipe, recompute: bool) -> float:
    """Memory a training step of `recipe` needs on a GPU, scaled from the official recipe's by clip volume,
    with activations recomputed or stored."""
    official = OFFICIAL.S * OFFICIAL.crop_size[0] * OFFICIAL.crop_size[1]
    volume = recipe.S * recipe.crop_size[0] * recipe.crop_size[1] / official
    return GIB_FIXED + GIB_PER_CLIP[recompute] * recipe.B * volume


def fits(recipe: Recipe, recompute: bool, free_bytes: int) -> bool:
    return needed_gib(recipe, recompute) <= HEADROOM * free_bytes / GIB


def recompute_pays(recipe: Recipe, device: torch.device, free_bytes: int | None) -> bool:
    """Whether training `recipe` should recompute activations rather than store them (Pips.set_recompute):
    on CUDA only where storing them all would not fit in the free memory (recomputing costs time there);
    always on CPU and MPS, whose memory the whole machine shares."""
    return device.type != "cuda" or free_bytes is None or not fits(recipe, False, free_bytes)


def choose(device: torch.device, free_bytes: int | None) -> tuple[Recipe, str]:
    """(recipe, why): on a CUDA device the official recipe where a step fits in its free memory, else the
    official recipe in micro-batches that fit; storing every activation where that fits (the quickest),
    else recomputing them; else the small recipe (always on CPU and MPS)."""
    if device.type != "cuda" or free_bytes is None:
        return RECIPES["small"], f"sized for {device.type.upper()}"
    free = free_bytes / GIB
    for recompute in (False, True):
        for name in ("official", "official-b2", "official-b1"):
            if fits(RECIPES[name], recompute, free_bytes):
                return RECIPES[name], f"{free:.0f} GiB free on {device}"
    return RECIPES["small"], f"only {free:.0f} GiB free on {device}"


def official_hint() -> str:
    """How to get the official recipe, and what it needs."""
    stored, recomputed = (needed_gib(OFFICIAL, r) / HEADROOM for r in (False, True))
    return (
        f"The official recipe ({OFFICIAL.describe()}) needs a CUDA GPU with about {stored:.0f} GiB free "
        f"({recomputed:.0f} GiB recomputing activations): --recipe official"
    )


def resolve(recipe: Recipe, **given: object) -> Recipe:
    """`recipe` with the knobs whose value is not None replaced."""
    return replace(recipe, **{k: v for k, v in given.items() if v is not None})
