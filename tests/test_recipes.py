import pytest
import torch

import train
from utils import recipes
from utils.dist import DistInfo

GIB = 1 << 30
CPU = DistInfo(0, 0, 1, torch.device("cpu"))


@pytest.mark.parametrize(
    "device, free_gib, expected",
    [
        ("cuda", 80, "official"),  # an 80 GB card
        ("cuda", 48, "official-b2"),
        ("cuda", 24, "official-b1"),
        ("cuda", 12, "small"),
        ("cpu", None, "small"),
        ("mps", None, "small"),
    ],
)
def test_recipe_fits_the_device_and_its_free_memory(device: str, free_gib: int | None, expected: str) -> None:
    free = None if free_gib is None else free_gib * GIB
    chosen, why = recipes.choose(torch.device(device), free)
    assert chosen.name == expected
    if free is not None:
        assert f"{free_gib} GiB" in why
        assert recipes.needed_gib(chosen) <= free_gib or expected == "small"


def test_micro_batch_recipes_make_the_official_batch() -> None:
    for name in ("official-b2", "official-b1"):
        r = recipes.RECIPES[name]
        assert r.B * r.grad_acc == recipes.OFFICIAL.B
        assert recipes.resolve(r, B=4, grad_acc=1, name="official") == recipes.OFFICIAL
    assert recipes.RECIPES["official-b1"].describe().startswith("B=4 as 4x1, S=36, N=128, crop 256x384")


def test_quick_start_on_cpu_tells_its_recipe_and_the_official_one() -> None:
    plan, line = train.pick_recipe("", {}, {}, CPU)
    assert plan == recipes.RECIPES["small"]
    assert line.startswith(f"recipe small: {plan.describe()} (sized for CPU). The official recipe (B=4, S=36")
    assert line.endswith("--recipe official")


def test_given_flags_win_then_the_runs_own_then_the_recipe() -> None:
    plan, line = train.pick_recipe("", {"B": 1, "crop_size": (64, 64)}, {}, CPU)
    assert (plan.B, plan.crop_size, plan.S) == (1, (64, 64), recipes.RECIPES["small"].S)
    assert "set by flags: --B, --crop_size" in line
    saved = {"recipe": "official-b1", "B": 1, "S": 24, "crop_size": [128, 128], "lr": 1.0}
    plan, line = train.pick_recipe("", {"S": 12}, saved, CPU)  # --resume of a run with its own knobs
    assert (plan.name, plan.B, plan.S, plan.crop_size, plan.grad_acc) == ("official-b1", 1, 12, (128, 128), 4)
    assert "(the run's own)" in line
    plan, _ = train.pick_recipe("official", {}, saved, CPU)  # another recipe asked for: the run's knobs go
    assert plan == recipes.OFFICIAL
    with pytest.raises(ValueError, match="--recipe must be one of official, official-b2, official-b1, small"):
        train.pick_recipe("huge", {}, {}, CPU)
