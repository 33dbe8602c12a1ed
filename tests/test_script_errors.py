"""A first run with bad input, as a user meets it: the real scripts, each in a subprocess, end a user error
with one line `error: ...` (the traceback only on request), and go on past data they cannot read."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.synthetic import make_scene, write_sequence
from utils import checkpoint
from utils.video import write_video

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--B", "1", "--S", "4", "--N", "8", "--crop_size", "64,64", "--iters", "1"]
TINY_EVAL = ["--S", "8", "--iters", "1", "--image_size", "64,96", "--device", "cpu"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PIPS_DEBUG", None)
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )


RUN_EACH = """
import contextlib, io, json, logging, os, runpy, sys, traceback
results = []
for script, argv, debug in json.loads(sys.argv[1]):
    os.environ.pop("PIPS_DEBUG", None)
    os.environ.update({"PIPS_DEBUG": "1"} if debug else {})
    sys.argv, code, err = [script, *argv], 0, io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code
        except Exception:
            code, _ = "raised", err.write(traceback.format_exc())
    logging.root.handlers.clear()  # a script's logging setup must not write into the next one's stderr
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def run_each(*cases: tuple[str, list[str], bool]) -> list[subprocess.CompletedProcess]:
    """(script, flags, PIPS_DEBUG) cases run one after another in one child process (one start-up), each
    as __main__ of its script: their exit codes and stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN_EACH, json.dumps(cases)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    return [subprocess.CompletedProcess(case[:2], code, "", err) for case, (code, err) in zip(cases, results)]


def one_error_line(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """The error line of a run that failed with one (exit status 1 while working, 2 for a bad flag or value
    refused before any work), and nothing else on stderr but warnings."""
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    *_, last = proc.stderr.splitlines()
    assert last.startswith("error: ") and proc.stderr.count("error: ") == 1
    return last


@pytest.fixture(scope="module")
def pod_root(tmp_path_factory) -> Path:
    """Three sequences in train/; the annotations of seq1 truncated as by a failed copy."""
    root = tmp_path_factory.mktemp("pod")
    for i in range(3):
        scene = make_scene(12, 96, 128, np.random.default_rng(i), num_points=800)
        write_sequence(scene, root / "train" / f"seq{i}")
    anno = root / "train" / "seq1" / "anno.npz"
    anno.write_bytes(anno.read_bytes()[:3000])
    return root


def test_missing_dataset_location_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    missing = str(tmp_path / "no_such_dir")
    train, export, debug = run_each(
        ("train.py", ["--dataset_location", missing, "--ckpt_dir", str(tmp_path / "c")], False),
        ("export_mp4_dataset.py", ["--dataset_location", missing, "--out_root", str(tmp_path / "e")], False),
        ("export_mp4_dataset.py", ["--dataset_location", missing, "--out_root", str(tmp_path / "e")], True),
    )
    assert one_error_line(train) == f"error: --dataset_location {missing} is not a directory"
    assert one_error_line(export) == f"error: split folder {missing}/train does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert debug.returncode == "raised" and "Traceback (most recent call last)" in debug.stderr


def test_bad_checkpoints_and_sizes_are_one_line(tmp_path: Path, pod_root: Path) -> None:
    from nets.pips2 import Pips

    good = checkpoint.save(tmp_path / "run", Pips(), step=7)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100_000])
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(2)}}, wrong_keys)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("<html>404 not found</html>\n")
    pod = ["--dataset_location", str(pod_root), "--dset", "train", "--device", "cpu"]
    expected = {
        truncated: f"error: cannot read checkpoint {truncated}: the file is truncated or corrupt",
        wrong_keys: f"error: checkpoint {wrong_keys} does not fit the model: missing ",
        garbage: f"error: {garbage} is not a checkpoint (not a file written by torch.save)",
    }
    *loads, size = run_each(
        *(("test_on_pod.py", [*pod, "--init_dir", str(path)], False) for path in expected),
        ("test_on_pod.py", [*pod, "--random_weights", "--image_size", "100,150"], False),
    )
    for proc, line in zip(loads, expected.values()):
        assert one_error_line(proc).startswith(line) and "weights_only" not in proc.stderr
    refused = one_error_line(size, 2)
    assert refused == "error: --image_size sides must be positive multiples of 32, got 100x150"


def test_corrupt_annotations_stop_neither_export_nor_training_nor_evaluation(tmp_path: Path, pod_root):
    anno = pod_root / "train" / "seq1" / "anno.npz"
    warning = f"skipping {anno}: not a readable .npz file"

    export = run(
        "export_mp4_dataset.py",
        "--dataset_location",
        str(pod_root),
        "--S",
        "4",
        "--N",
        "8",
        "--crop_size",
        "64,64",
        "--max_clips",
        "2",
        "--out_root",
        str(tmp_path / "export"),
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert "written 2, skipped 0, failed 0" in export.stdout and export.stderr.count(warning) == 1
    assert f"unreadable sequences skipped: 1\n  {anno}: not a readable .npz file" in export.stdout
    (folder,) = (tmp_path / "export").iterdir()
    settings = json.loads((folder / "export_config.json").read_text())
    assert settings["sequences"] == ["seq0", "seq2"] and settings["dataset_location"] == str(pod_root)

    train = run(
        "train.py",
        *TINY_TRAIN,
        "--num_workers",
        "0",
        "--dataset_location",
        str(pod_root),
        "--max_steps",
        "2",
        "--log_dir",
        str(tmp_path / "logs"),
        "--ckpt_dir",
        str(tmp_path / "ckpt"),
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert re.search(r"step 000002/2; .* steps/s; eta 0:00:00\n", train.stdout)
    assert train.stderr.count(warning) == 1
    assert f"training data: 1 unreadable sequence(s) or clip(s) skipped\n  {anno}" in train.stdout

    evaluate = run(
        "test_on_pod.py",
        "--dataset_location",
        str(pod_root),
        "--dset",
        "train",
        *TINY_EVAL,
        "--random_weights",
        "--log_dir",
        str(tmp_path / "eval"),
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert evaluate.stderr.count(warning) == 1 and "seq2" in evaluate.stdout + evaluate.stderr


def test_export_from_another_dataset_is_refused(tmp_path: Path, pod_root: Path) -> None:
    other = tmp_path / "other"
    scene = make_scene(12, 96, 128, np.random.default_rng(5), num_points=800)
    write_sequence(scene, other / "train" / "seq0")
    common = ["--S", "4", "--N", "8", "--crop_size", "64,64", "--max_clips", "1", "--out_root", str(tmp_path)]
    first = run("export_mp4_dataset.py", "--dataset_location", str(pod_root), *common)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "ae_4_8_64x64"
    line = one_error_line(run("export_mp4_dataset.py", "--dataset_location", str(other), *common))
    assert line == (
        f"error: {folder} holds clips of another export (dataset_location {pod_root} there, dataset_location "
        f"{other} now; sequences ['seq0', 'seq2'] there, sequences ['seq0'] now); use another --version or "
        "--out_root"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["000000", "export_config.json"]


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path: Path) -> None:
    dirs = ["--log_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpt"), "--run_name", "r"]
    flags = [*TINY_TRAIN, "--num_workers", "0", "--val_freq", "0", "--save_freq", "1", *dirs]
    first = run("train.py", *flags, "--max_steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    newest = tmp_path / "ckpt" / "r" / "model-000000003.pth"
    newest.write_bytes(newest.read_bytes()[:50_000])
    (tmp_path / "ckpt" / "r" / ".model-000000004-999.tmp").write_bytes(b"left by a killed save")
    resumed = run("train.py", *flags, "--max_steps", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"cannot read checkpoint {newest}: the file is truncated or corrupt" in resumed.stderr
    assert "resuming at step 2" in resumed.stdout and "step 000003/4" in resumed.stdout
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "ckpt" / "r")][-1] == "model-000000004.pth"
    assert not list((tmp_path / "ckpt" / "r").glob(".model-*"))


SCRIPTS = (
    "train.py",
    "export_mp4_dataset.py",
    "make_synthetic_dataset.py",
    "test_on_pod.py",
    "test_on_tap.py",
    "test_on_cro.py",
    "demo.py",
    "benchmark.py",
    "export_onnx.py",
)


def test_every_script_has_help_and_refuses_unknown_flags() -> None:
    # one interpreter for all scripts: each runs as __main__ with -h, with --help and with a mistyped flag
    cases = [(script, argv) for script in SCRIPTS for argv in (["-h"], ["--help"], ["--seeed", "1"])]
    cases += [("export_mp4_dataset.py", ["--crop_size", "128x192"]), ("demo.py", ["--max_frame", "4"])]
    child = f"""
import runpy, sys
for script, argv in {cases!r}:
    print("==", script, argv[0], flush=True)
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        print("exit", e.code)
"""
    proc = subprocess.run(
        [sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = dict(chunk.split("\n", 1) for chunk in proc.stdout.split("== ")[1:])
    for script in SCRIPTS:
        for flag in ("-h", "--help"):
            assert runs[f"{script} {flag}"].startswith(f"usage: python {script} [--flag value ...]")
            assert "-h, --help" in runs[f"{script} {flag}"]
        assert runs[f"{script} --seeed"] == "exit 2\n"
    assert runs["export_mp4_dataset.py --crop_size"] == runs["demo.py --max_frame"] == "exit 2\n"
    assert "error: --crop_size takes H,W (two integers, e.g. 256,384), got '128x192'" in proc.stderr
    assert "error: unknown flag --max_frame; did you mean --max_frames?" in proc.stderr
    assert proc.stderr.count("error: unknown flag --seeed") == len(SCRIPTS)
    assert "error: unknown flag --seeed; did you mean --seed?" in proc.stderr
    assert (
        "--lr FLOAT" in runs["train.py --help"] and "peak learning rate of AdamW" in runs["train.py --help"]
    )


def test_mistyped_flag_stops_before_any_work(tmp_path: Path) -> None:
    began = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--max_iters",
            "1",
            "--ckpt_dir",
            str(tmp_path),
            "--log_dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - began < 60  # imports only: no data read, no model built
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: unknown flag --max_iters; did you mean --max_steps?\n"
    assert list(tmp_path.iterdir()) == []


def test_make_synthetic_dataset_help_is_not_height(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "make_synthetic_dataset.py", "-h", "--out", str(tmp_path / "d")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--height INT" in proc.stdout and not (tmp_path / "d").exists()


def test_bad_values_stop_before_any_work_in_the_flags_own_words(tmp_path: Path) -> None:
    dirs = ["--log_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpt")]
    video = tmp_path / "v.mp4"
    write_video(video, np.zeros((4, 64, 96, 3), np.uint8))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nan.txt").write_text("0 nan 3\n")
    demo = ["--filename", str(video), "--random_weights", "--out_dir", str(tmp_path / "out")]
    cases = {
        ("train.py", "--B", "-1"): "error: --B must be at least 1, got -1",
        (
            "train.py",
            "--crop_size",
            "10,10",
        ): "error: --crop_size must be at least 64 pixels a side, got 10,10",
        ("train.py", "--S", "0"): "error: --S must be at least 2 (frames per clip), got 0",
        (
            "demo.py",
            "--image_size",
            "10,10",
        ): "error: --image_size sides must be at least 64 pixels, got 10x10",
        (
            "demo.py",
            "--queries",
            str(tmp_path / "empty.txt"),
        ): f"error: query file {tmp_path / 'empty.txt'} holds",
        (
            "demo.py",
            "--queries",
            str(tmp_path / "nan.txt"),
        ): f"error: query file {tmp_path / 'nan.txt'}: query",
    }
    procs = run_each(
        *((script, [*flags, *(dirs if script == "train.py" else demo)], False) for script, *flags in cases)
    )
    for proc, line in zip(procs, cases.values()):
        code = 1 if "query" in line else 2
        assert one_error_line(proc, code).startswith(line) and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "nan.txt", "v.mp4"]
