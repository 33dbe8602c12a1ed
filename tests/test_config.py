import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from utils.config import (
    Flags,
    UsageError,
    check_values,
    default_resolve,
    knob,
    one_line,
    read_command_line,
    read_file,
    require,
    resolve,
    run,
    to_yaml,
)


@dataclass(frozen=True)
class Toy:
    """Train a toy."""

    B: int | None = knob(None, "clips per batch")
    lr: float = knob(5e-4, "peak learning rate (10% warm-up)")
    crop_size: tuple[int, int] = knob((256, 384), "H,W of the clips")
    resume: bool = knob(False, "continue the run")
    fast: bool = knob(True, "the fast path")
    splits: tuple[str, ...] = knob(("train", "val"), "split names")
    run_name: str = knob("", "name of the run")
    mode: Literal["first", "strided"] = knob("first", "query mode")
    init_ckpt: str = knob("", "weights to start from", aliases=("init_dir",))
    lengths: tuple[int, ...] = knob((250, 1000), "video lengths")

    def __post_init__(self) -> None:
        require(self.B is None or self.B >= 1, "B", "at least 1", self.B)


def given(*argv: str) -> dict:
    return read_command_line(Toy, argv, "toy.py").given


def test_values_follow_the_annotations() -> None:
    argv = [
        "--B",
        "2",
        "--lr=1e-3",
        "--crop-size",
        "128,192",
        "--resume",
        "--splits",
        "a,b",
        "--run_name",
        "2024",
    ]
    assert given(*argv) == {
        "B": 2,
        "lr": 1e-3,
        "crop_size": (128, 192),
        "resume": True,
        "splits": ("a", "b"),
        "run_name": "2024",  # text stays text
    }
    assert given("-B", "none", "--noresume", "--no-fast") == {"B": None, "resume": False, "fast": False}
    assert given("--resume", "false", "--lr", "-1", "--no_fast") == {
        "resume": False,
        "lr": -1.0,
        "fast": False,
    }
    assert given("--fast", "False", "--resume", "--B", "3") == {"fast": False, "resume": True, "B": 3}
    assert given("--B", "4", "--B", "2") == {"B": 2}  # the last wins, as wrappers expect
    assert given("--run_name", "", "--splits", "") == {"run_name": "", "splits": ()}
    assert given("--init_dir", "ckpt", "--mode", "strided") == {"init_ckpt": "ckpt", "mode": "strided"}
    assert given("--lengths", "12, 30") == {"lengths": (12, 30)} and given("--lengths=") == {"lengths": ()}
    assert given() == {}  # nothing given: every field keeps its default in the layers below


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--crop_size", "128x192"], "--crop_size takes H,W (two integers, e.g. 256,384), got '128x192'"),
        (["--crop_size", "1,2,3"], "--crop_size takes H,W"),
        (["--B", "1.5"], "--B takes an integer or none, got '1.5'"),
        (["--lr", "fast"], "--lr takes a number, got 'fast'"),
        (["--lr"], "--lr needs a value"),
        (["--resume", "maybe"], "--resume takes true or false, got 'maybe'"),
        (["--mode", "all"], "--mode takes one of first, strided, got 'all'"),
        (["--lengths", "12,x"], "--lengths takes a comma-separated list of integers, got '12,x'"),
        (["--ler", "1"], "unknown flag --ler; did you mean --lr?"),
        (["--zzz"], "unknown flag --zzz (--help lists the flags)"),
        (["--crop_sise=1,2"], "unknown flag --crop_sise; did you mean --crop_size?"),
        (["--cro", "1,2"], "unknown flag --cro"),  # no abbreviations: a prefix is a typo
        (["stray"], "unexpected argument 'stray': flags take the form --name value"),
    ],
)
def test_bad_flags_are_refused_in_one_sentence(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        read_command_line(Toy, argv, "toy.py")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_help_lists_each_flag_with_its_meaning_and_default(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        read_command_line(Toy, ["--help"], "toy.py", "Train a toy.")
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert text.startswith("usage: python toy.py [--flag value ...]\n\nTrain a toy.")
    assert "--crop_size H,W" in text and "H,W of the clips (default: 256,384)" in text
    assert "peak learning rate (10% warm-up) (default: 0.0005)" in text
    assert "--B INT" in text and "clips per batch\n" in text  # a None default is not shown
    assert "--resume [BOOL]" in text and "--mode {first,strided}" in text
    assert "--lengths INT,INT,..." in text and "video lengths (default: 250,1000)" in text
    assert "--config FILE" in text and "--print_config" in text and "--debug" in text
    assert "--init_dir" not in text and "--crop-size" not in text  # old and hyphen spellings answer, unlisted


def test_layers_resolve_in_order_and_values_are_checked() -> None:
    assert resolve(Toy, {"B": 2, "lr": 1.0}, {"lr": 2.0}) == Toy(B=2, lr=2.0)
    assert resolve(Toy) == Toy()
    with pytest.raises(UsageError, match=r"^--B must be at least 1, got 0$"):
        resolve(Toy, {"B": 0})
    with pytest.raises(UsageError, match=r"^--crop_size must be two pixels, got 1,2$"):
        require(False, "crop_size", "two pixels", (1, 2))
    saved = {"crop_size": [64, 96], "splits": ["a"], "lr": 1, "B": None, "mode": "strided", "lengths": [5]}
    expected = {"crop_size": (64, 96), "splits": ("a",), "lr": 1.0, "B": None, "mode": "strided"}
    expected["lengths"] = (5,)
    assert check_values(saved, Toy, "ckpt") == expected
    with pytest.raises(UsageError, match=r"^ckpt: unknown setting 'lrr'; did you mean --lr\?$"):
        check_values({"lrr": 1}, Toy, "ckpt")
    with pytest.raises(UsageError, match=r"^--B in ckpt takes an integer or none, got True$"):
        check_values({"B": True}, Toy, "ckpt")
    with pytest.raises(UsageError, match=r"^--resume in ckpt takes true or false, got 'perhaps'$"):
        check_values({"resume": "perhaps"}, Toy, "ckpt")
    with pytest.raises(UsageError, match=r"^--lengths in ckpt takes a comma-separated list of integers"):
        check_values({"lengths": [True]}, Toy, "ckpt")


def test_config_files_sit_under_the_flags_and_print_config_reads_back(tmp_path: Path, capsys) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text("# a recipe\nB: 3\nlr: 0.01\ncrop_size: [64, 96]\nsplits: a,b\n")
    flags = read_command_line(Toy, ["--config", str(path), "--lr", "0.5"], "toy.py")
    config, notes = default_resolve(Toy, flags)
    assert config == Toy(B=3, lr=0.5, crop_size=(64, 96), splits=("a", "b")) and notes == []
    assert resolve(Toy, read_file(path, Toy)) == Toy(B=3, lr=0.01, crop_size=(64, 96), splits=("a", "b"))
    (tmp_path / "printed.yaml").write_text(to_yaml(config))
    assert resolve(Toy, read_file(tmp_path / "printed.yaml", Toy)) == config  # the printed config reads back
    assert yaml.safe_load(to_yaml(config))["crop_size"] == [64, 96]

    ran = []
    run(ran.append, Toy, argv=["--config", str(path), "--print_config"])
    assert ran == [] and yaml.safe_load(capsys.readouterr().out)["B"] == 3
    for text, message in [
        ("B: [1", "is not valid YAML"),
        ("- 1\n- 2\n", "must hold a mapping of settings"),
        ("lrr: 1\n", "unknown setting 'lrr'; did you mean --lr?"),
    ]:
        path.write_text(text)
        with pytest.raises(UsageError, match=message):
            read_file(path, Toy)
    with pytest.raises(UsageError, match="--config: no such file"):
        read_file(tmp_path / "missing.yaml", Toy)


def test_run_calls_main_with_the_config_and_notes_come_first(capsys) -> None:
    seen = []

    def resolver(cls: type, flags: Flags) -> tuple[Toy, list[str]]:
        return dataclasses.replace(resolve(cls, flags.given), run_name="picked"), ["recipe line"]

    run(seen.append, Toy, resolver, argv=["--B", "2"])
    assert seen == [Toy(B=2, run_name="picked")] and capsys.readouterr().out == "recipe line\n"
    run(seen.append, Toy, resolver, argv=["--print_config"])
    assert capsys.readouterr().out.startswith("# recipe line\nB: null\n") and len(seen) == 1


def test_run_names_the_mode_of_a_script_in_help_and_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(print, Toy, argv=["--help"], prog="toy.py fast", description="Fast toys.")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python toy.py fast [--flag value ...]\n\nFast toys.\n")
    seen = []
    run(seen.append, Toy, argv=["--lengths", "3"], prog="toy.py fast")
    assert seen == [Toy(lengths=(3,))]


def test_user_errors_end_in_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    monkeypatch.delenv("PIPS_DEBUG", raising=False)

    def missing(cfg: Toy) -> None:
        raise FileNotFoundError(f"no such file:\n  {cfg.run_name}")

    def bug(cfg: Toy) -> None:
        raise TypeError("a bug")

    def stopped(cfg: Toy) -> None:
        raise KeyboardInterrupt

    for argv, code, err in [
        (["--run_name", "data/a.npz"], 1, "error: no such file: data/a.npz\n"),
        (["--B", "0"], 2, "error: --B must be at least 1, got 0\n"),
        (["--BB", "0"], 2, "error: unknown flag --BB; did you mean --B?\n"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run(missing, Toy, argv=argv)
        assert exit_info.value.code == code and capsys.readouterr().err == err
    with pytest.raises(TypeError, match="a bug"):
        run(bug, Toy, argv=[])
    with pytest.raises(SystemExit) as exit_info:
        run(stopped, Toy, argv=[])
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(FileNotFoundError):
        run(missing, Toy, argv=["--debug"])
    with pytest.raises(UsageError):
        run(missing, Toy, argv=["--B", "0", "--debug"])
    monkeypatch.setenv("PIPS_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run(missing, Toy, argv=[])


def test_error_from_a_dataloader_worker_is_its_own_message() -> None:
    def fail(items: list[int]) -> None:
        raise ValueError(f"export folder x:\n no readable clip left ({items[0]})")

    loader = torch.utils.data.DataLoader(list(range(2)), num_workers=1, collate_fn=fail)
    with pytest.raises(ValueError) as err:
        next(iter(loader))
    assert "Original Traceback" in str(err.value)
    assert one_line(err.value) == "export folder x: no readable clip left (0)"
