from pathlib import Path

import pytest
import torch

from utils.cli import UsageError, explain_flags, one_line, parse_flags, run, usage

REPO = Path(__file__).parent.parent
SCRIPTS = (
    "train.py",
    "export_mp4_dataset.py",
    "make_synthetic_dataset.py",
    "test_on_pod.py",
    "test_on_tap.py",
    "test_on_cro.py",
    "demo.py",
    "benchmark.py",
)


def toy(
    *,
    B: int | None = None,  # clips per batch
    lr: float = 5e-4,  # peak learning rate
    crop_size: tuple[int, int] = (256, 384),  # H,W of the clips
    resume: bool = False,  # continue the run
    splits: str | tuple[str, ...] = "train,val",  # comma-separated split names
    run_name: str = "",
) -> dict:
    """Train."""
    return dict(locals())


def test_flags_documented_from_comments() -> None:
    @explain_flags
    def main(
        *,
        lr: float = 5e-4,  # peak learning rate
        crop_size: tuple[int, int] = (256, 384),  # H,W of the clips
        quiet: bool = False,
    ) -> None:
        """Train."""

    assert main.__doc__ == "Train.\n\nArgs:\n    lr: peak learning rate\n    crop_size: H,W of the clips\n"


def test_values_follow_the_annotations() -> None:
    argv = [
        "--B",
        "2",
        "--lr=1e-3",
        "--crop-size",
        "128, 192",
        "--resume",
        "--splits",
        "a,b",
        "--run_name",
        "2024",
    ]
    assert parse_flags(toy, argv) == {
        "B": 2,
        "lr": 1e-3,
        "crop_size": (128, 192),
        "resume": True,
        "splits": "a,b",
        "run_name": "2024",  # text stays text
    }
    assert parse_flags(toy, ["-B", "none", "--noresume"]) == {"B": None, "resume": False}
    assert parse_flags(toy, ["--resume", "false", "--lr", "-1"]) == {"resume": False, "lr": -1.0}
    assert parse_flags(toy, ["--B", "4", "--B", "2"]) == {"B": 2}  # the last wins, as wrappers expect
    assert parse_flags(toy, ["--run_name", ""]) == {"run_name": ""}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--crop_size", "128x192"], "--crop_size takes H,W (two integers, e.g. 256,384), got '128x192'"),
        (["--crop_size", "1,2,3"], "--crop_size takes H,W"),
        (["--B", "1.5"], "--B takes an integer or none, got '1.5'"),
        (["--lr", "fast"], "--lr takes a number, got 'fast'"),
        (["--lr"], "--lr needs a value (FLOAT)"),
        (["--resume", "maybe"], "unexpected argument 'maybe'"),
        (["--ler", "1"], "unknown flag --ler; did you mean --lr?"),
        (["-lr", "1"], "unknown flag -lr; did you mean --lr?"),
        (["--zzz"], "unknown flag --zzz (--help lists the flags)"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(
        UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        parse_flags(toy, argv)


def test_usage_lists_types_comments_and_defaults() -> None:
    text = usage(toy, "toy.py")
    assert text.startswith("usage: python toy.py [--flag value ...]")
    assert "--crop_size H,W" in text and "H,W of the clips (default: (256, 384))" in text
    assert "--B INT" in text and "clips per batch\n" in text  # a None default is not shown
    assert "--resume " in text and "--debug" in text and "-h, --help" in text


def test_error_from_a_dataloader_worker_is_its_own_message() -> None:
    def fail(items: list[int]) -> None:
        raise ValueError(f"export folder x:\n no readable clip left ({items[0]})")

    loader = torch.utils.data.DataLoader(list(range(2)), num_workers=1, collate_fn=fail)
    with pytest.raises(ValueError) as err:
        next(iter(loader))
    assert "Original Traceback" in str(err.value)
    assert one_line(err.value) == "export folder x: no readable clip left (0)"


def test_user_errors_end_in_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    def missing(*, path: str = "x") -> None:
        raise FileNotFoundError(f"no such file:\n  {path}")

    def bug(*, n: int = 0) -> None:
        raise TypeError("a bug")

    with pytest.raises(SystemExit) as exit_info:
        run(missing, ["--path", "data/a.npz"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: no such file: data/a.npz\n"
    with pytest.raises(TypeError, match="a bug"):
        run(bug, [])

    def stopped(*, n: int = 0) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run(stopped, [])
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(FileNotFoundError):
        run(missing, ["--debug"])
    monkeypatch.setenv("PIPS_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run(missing, [])
