"""Training recipes: the official one, and the recipe `python train.py` picks up front where that one does not
fit, from the device and its free memory."""

from dataclasses import dataclass, fields, replace

import torch

GIB = 1 << 30
# one training step of the official recipe (B=4) holds about 58 GiB (DESIGN.md, local correlation): mostly
# activations, which grow with the clips of a micro-batch
GIB_PER_CLIP = 14.5
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
    grad_acc: int = 1  # micro-batches per optimizer step
    val_freq: int = 1000  # validate every this many steps
    log_freq: int = 1000  # TensorBoard gifs every this many steps
    save_freq: int = 1000  # checkpoint every this many steps
    num_workers: int = 4  # DataLoader workers per process

    def describe(self) -> str:
        batch = f"B={self.B}"
        if self.grad_acc > 1:
            batch = f"B={self.B * self.grad_acc} as {self.grad_acc}x{self.B}"
        H, W = self.crop_size
        return (
            f"{batch}, S={self.S}, N={self.N}, crop {H}x{W}, {self.iters} iterations, "
            f"{self.max_steps} steps, validation every {self.val_freq}"
        )

    def knobs(self) -> tuple[str, ...]:
        """The train.py flags a recipe sets."""
        return tuple(f.name for f in fields(self) if f.name != "name")


OFFICIAL = Recipe("official", B=4, S=36, N=128, crop_size=(256, 384), iters=6, max_steps=200_000)
RECIPES = {
    r.name: r
    for r in (
        OFFICIAL,
        # the official recipe in smaller micro-batches: the same updates, for GPUs with less memory
        replace(OFFICIAL, name="official-b2", B=2, grad_acc=2),
        replace(OFFICIAL, name="official-b1", B=1, grad_acc=4),
        # short clips at low resolution, validated often: learning shows within minutes on a laptop CPU
        Recipe(
            "small",
            B=2,
            S=8,
            N=32,
            crop_size=(128, 192),
            iters=4,
            max_steps=1000,
            val_freq=10,
            log_freq=200,
            save_freq=250,
            num_workers=1,
        ),
    )
}


def free_memory(device: torch.device) -> int | None:
    """Free bytes of a CUDA device, or None where that is not known."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def needed_gib(recipe: Recipe) -> float:
    """Memory a training step of `recipe` needs on a GPU, scaled from the official recipe's by clip volume."""
    official = OFFICIAL.S * OFFICIAL.crop_size[0] * OFFICIAL.crop_size[1]
    volume = recipe.S * recipe.crop_size[0] * recipe.crop_size[1] / official
    return GIB_FIXED + GIB_PER_CLIP * recipe.B * volume


def choose(device: torch.device, free_bytes: int | None) -> tuple[Recipe, str]:
    """(recipe, why): the official recipe where a step fits in the free memory of a CUDA device, else the
    official recipe in micro-batches that fit, else the small recipe (always on CPU and MPS)."""
    if device.type != "cuda" or free_bytes is None:
        return RECIPES["small"], f"sized for {device.type.upper()}"
    free = free_bytes / GIB
    for name in ("official", "official-b2", "official-b1"):
        if needed_gib(RECIPES[name]) <= HEADROOM * free:
            return RECIPES[name], f"{free:.0f} GiB free on {device}"
    return RECIPES["small"], f"only {free:.0f} GiB free on {device}"


def official_hint() -> str:
    """How to get the official recipe, and what it needs."""
    whole, split = (needed_gib(RECIPES[n]) / HEADROOM for n in ("official", "official-b1"))
    return (
        f"The official recipe ({OFFICIAL.describe()}) needs a CUDA GPU with about {whole:.0f} GiB free "
        f"({split:.0f} GiB in micro-batches): --recipe official"
    )


def resolve(recipe: Recipe, **given: object) -> Recipe:
    """`recipe` with the knobs whose value is not None replaced."""
    return replace(recipe, **{k: v for k, v in given.items() if v is not None})
