import dataclasses
from pathlib import Path

import pytest
import torch

import train
from nets.pips2 import Pips
from utils import checkpoint, recipes
from utils.config import UsageError, read_command_line

GIB = 1 << 30


@pytest.mark.parametrize(
    "device, free_gib, expected, recompute",
    [
        ("cuda", 80, "official", False),  # an 80 GB card: every activation stored, the quickest
        ("cuda", 40, "official", False),  # 31 GiB planned of 36 usable
        ("cuda", 24, "official-b2", False),  # micro-batches that store everything beat recomputing
        ("cuda", 12, "official-b1", False),
        ("cuda", 8, "official", True),  # too small to store even one clip's activations: recomputed
        ("cuda", 4, "official-b2", True),
        ("cuda", 1, "small", True),
        ("cpu", None, "small", True),
        ("mps", None, "small", True),
    ],
)
def test_recipe_fits_the_device_and_its_free_memory(
    device: str, free_gib: int | None, expected: str, recompute: bool
) -> None:
    free = None if free_gib is None else free_gib * GIB
    chosen, why = recipes.choose(torch.device(device), free)
    assert chosen.name == expected
    assert recipes.recompute_pays(chosen, torch.device(device), free) == recompute
    if free is not None:
        assert f"{free_gib} GiB" in why
        assert recipes.needed_gib(chosen, recompute) <= 0.9 * free_gib or expected == "small"


def test_memory_plan_follows_the_measured_step() -> None:
    # the official step: 1 GiB fixed + 4 clips of 7.5 GiB stored or 1.25 GiB recomputed; the fine-tune
    # recipe (S=64, 512x896) has 64*512*896 / (36*256*384) = 6.5 times the clip volume
    assert recipes.needed_gib(recipes.OFFICIAL, False) == pytest.approx(31.0)
    assert recipes.needed_gib(recipes.OFFICIAL, True) == pytest.approx(6.0)
    finetune = recipes.resolve(recipes.OFFICIAL, B=1, S=64, crop_size=(512, 896))
    assert recipes.needed_gib(finetune, True) == pytest.approx(1 + 1.25 * 64 * 512 * 896 / (36 * 256 * 384))


def test_micro_batch_recipes_make_the_official_batch() -> None:
    for name in ("official-b2", "official-b1"):
        r = recipes.RECIPES[name]
        assert r.B * r.grad_acc == recipes.OFFICIAL.B
        assert recipes.resolve(r, B=4, grad_acc=1, name="official") == recipes.OFFICIAL
    assert recipes.RECIPES["official-b1"].describe().startswith("B=4 as 4x1, S=36, N=128, crop 256x384")


def resolved(*argv: str) -> tuple[train.TrainConfig, str]:
    config, notes = train.resolve_config(
        train.TrainConfig, read_command_line(train.TrainConfig, argv, "train.py")
    )
    return config, notes[0]


def test_quick_start_on_cpu_tells_its_recipe_and_the_official_one() -> None:
    config, line = resolved("--device", "cpu")
    small = recipes.RECIPES["small"]
    assert config.recipe_knobs() == small and config.recompute
    head = f"recipe small: {small.describe()} (sized for CPU); activations recomputed (--recompute). "
    assert line.startswith(head + "The official recipe (B=4, S=36")
    assert line.endswith("--recipe official")


def test_flags_win_over_config_files_over_the_recipe(tmp_path: Path) -> None:
    config, line = resolved("--device", "cpu", "--B", "1", "--crop_size", "64,64", "--no_recompute")
    assert (config.B, config.crop_size, config.S, config.recompute) == (
        1,
        (64, 64),
        recipes.RECIPES["small"].S,
        False,
    )
    assert "activations stored (--recompute); from flags: --B, --crop_size" in line
    copy = tmp_path / "mine.yaml"
    copy.write_text((recipes.CONFIGS_DIR / "official-b1.yaml").read_text() + "lr: 0.001\n")
    config, line = resolved("--device", "cpu", "--config", str(copy), "--S", "12")
    assert (config.recipe, config.B, config.S, config.grad_acc, config.lr) == ("small", 1, 12, 4, 1e-3)
    assert f"from --config {copy}: B, S, N, crop_size" in line and line.count("from flags: --S") == 1
    config, _ = resolved("--device", "cpu", "--recipe", "official")
    assert config.recipe_knobs() == recipes.OFFICIAL
    with pytest.raises(UsageError, match="--recipe must be one of official, official-b1, official-b2, small"):
        resolved("--recipe", "huge")


def test_a_resumed_run_keeps_its_own_config_when_the_recipe_changes(tmp_path: Path, monkeypatch) -> None:
    ckpts = tmp_path / "ckpts"
    started, _ = resolved("--device", "cpu", "--ckpt_dir", str(ckpts), "--run_name", "r", "--lr", "0.002")
    checkpoint.save(ckpts / "r", Pips(), step=3, config=dataclasses.asdict(started))
    changed = dataclasses.replace(recipes.RECIPES["small"], B=7, S=5, crop_size=(96, 96), max_steps=9)
    monkeypatch.setitem(recipes.RECIPES, "small", changed)
    assert resolved("--device", "cpu")[0].recipe_knobs() == changed  # a new run follows the recipe
    config, line = resolved("--device", "cpu", "--ckpt_dir", str(ckpts), "--resume", "--max_steps", "2000")
    assert config.run_name == "r" and config.resume and config.lr == 0.002
    assert config.recipe_knobs() == dataclasses.replace(started.recipe_knobs(), max_steps=2000)
    assert "from run r: B, S, N, crop_size" in line and "from flags: --max_steps" in line
    with pytest.raises(
        UsageError, match="--recipe official: run r trains recipe small, which a resumed run keeps"
    ):
        resolved("--device", "cpu", "--ckpt_dir", str(ckpts), "--resume", "--recipe", "official")
