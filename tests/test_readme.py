"""Every command of the README's "What you can do" table runs as written, in a fresh folder, made small by
the flags appended here (the last value of a flag wins): each exits 0, or ends with the one line the README
documents for a missing reference model or dataset."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.video import write_video

REPO = Path(__file__).resolve().parents[1]
SMALL_TRAIN = "--B 1 --iters 1 --max_steps 2 --log_freq 1000"
SMALL_CLIPS = "--S 8 --N 16 --crop_size 64,64"
NO_MODEL = "error: checkpoint not found: reference_model. Run ./get_reference_model.sh"
# command as the README writes it -> (replacements in it, flags appended, None = exits 0, else its error line)
ROWS = {
    "python make_synthetic_dataset.py --out data/synth_pod --splits train,val,test": (
        {},
        "--num_sequences 1 --num_frames 16 --height 96 --width 128 --num_points 256",
        None,
    ),
    "python export_mp4_dataset.py --dataset_location data/synth_pod --S 36 --N 128 --crop_size 384,512": (
        {},
        f"{SMALL_CLIPS} --max_clips 6",
        None,
    ),
    "python train.py --dataset_location pod_export/ae_36_128_384x512": (
        {"ae_36_128_384x512": "ae_8_16_64x64"},
        f"{SMALL_TRAIN} --val_freq 1 --run_name export",
        None,
    ),
    "python train.py --dataset_location /path/to/point_odyssey": (
        {"/path/to/point_odyssey": "data/synth_pod"},
        f"{SMALL_TRAIN} {SMALL_CLIPS} --run_name pod",
        None,
    ),
    "torchrun --nproc_per_node=8 train.py ...": (
        {"torchrun": f"{sys.executable} -m torch.distributed.run --master_port=29541", "=8": "=2", "...": ""},
        f"{SMALL_TRAIN} {SMALL_CLIPS} --val_freq 0 --device cpu --run_name ddp",
        None,
    ),
    "python train.py --resume --run_name <run>": ({"<run>": "pod"}, f"{SMALL_TRAIN} --max_steps 3", None),
    "python train.py --init_ckpt reference_model --S 64 --crop_size 512,896 --B 1": ({}, "", NO_MODEL),
    "python test_on_pod.py --dataset_location /path/to/point_odyssey": (
        {"/path/to/point_odyssey": "data/synth_pod"},
        "",
        NO_MODEL,
    ),
    "python test_on_tap.py --dataset_location /path/to/tapvid_davis": (
        {},
        "",
        "error: TAP-Vid-DAVIS pickle not found: /path/to/tapvid_davis/tapvid_davis.pkl",
    ),
    "python test_on_cro.py --dataset_location /path/to/crohd": (
        {},
        "",
        "error: CroHD folder not found: /path/to/crohd/HT21/train",
    ),
    "python demo.py --filename video.mp4": ({}, "", NO_MODEL),
    "python demo.py --filename video.mp4 --queries q.txt": ({}, "", NO_MODEL),
    "python demo.py --filename video.mp4 --random_weights": (
        {},
        "--max_frames 8 --S 8 --iters 1 --image_size 64,96 --N 16 --runtime torch",
        None,
    ),
    # the page serves until stopped; tests/test_app.py starts it and drives it in a browser
    "python app.py": ({}, "--help", None),
    "python export_onnx.py": ({}, "", NO_MODEL),
    "python demo.py --filename video.mp4 --onnx pips2.onnx": (
        {},
        "",
        "error: no such ONNX model: pips2.onnx",
    ),
    "python benchmark.py": ({}, "--S 4 --N 8 --H 64 --W 64 --iters 1 --warmup 0 --repeats 1", None),
    "python benchmark.py videos --lengths 250,1000": ({}, "--lengths 12", None),
}
# what each command leaves behind, relative to the folder it ran in
LEFT = {
    "python make_synthetic_dataset.py": "data/synth_pod/test",
    "python export_mp4_dataset.py": "pod_export/ae_8_16_64x64/export_config.json",
    "python demo.py --filename video.mp4 --random_weights": "demo_out/video_tracks.npz",
    "python benchmark.py": "benchmark.json",
    "python benchmark.py videos": "benchmark_videos.json",
}


def readme_commands() -> list[str]:
    """The commands (code spans that start with python or torchrun) of the README's "What you can do"
    table, in order."""
    text = (REPO / "README.md").read_text()
    table = text.split("## What you can do", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
    spans = [span for row in rows for span in re.findall(r"`([^`]+)`", row.split(" | ", 1)[1])]
    return [span for span in spans if span.startswith(("python ", "torchrun "))]


def command_line(command: str) -> list[str]:
    replacements, extra, _ = ROWS[command]
    for old, new in replacements.items():
        command = command.replace(old, new)
    words = shlex.split(command) + shlex.split(extra)
    if words[0] == "python":
        words[:2] = [sys.executable, str(REPO / words[1])]
    elif words[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        words[script] = str(REPO / words[script])
    return words


def test_the_table_lists_the_commands_this_test_runs() -> None:
    assert readme_commands() == list(ROWS)


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """Every command, in the table's order, in one fresh folder."""
    here = tmp_path_factory.mktemp("fresh")
    write_video(here / "video.mp4", np.random.default_rng(0).integers(0, 256, (12, 96, 128, 3), np.uint8))
    (here / "q.txt").write_text("0 10 20\n5 60.5 40\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPS_CACHE": str(here / "cache")}
    env.pop("PIPS_DEBUG", None)
    done = {}
    for command in ROWS:
        done[command] = subprocess.run(
            command_line(command), cwd=here, capture_output=True, text=True, timeout=600, env=env
        )
    return here, done


@pytest.mark.parametrize("command", list(ROWS))
def test_each_command_runs_as_written(ran, command: str) -> None:
    here, done = ran
    proc, expected = done[command], ROWS[command][2]
    if expected is None:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    else:
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[-1].startswith(expected), proc.stderr[-2000:]
    left = next((path for prefix, path in LEFT.items() if command.startswith(prefix)), None)
    if expected is None and left is not None:
        assert (here / left).exists(), left


def test_the_chained_rows_read_what_the_rows_above_wrote(ran) -> None:
    here, done = ran
    export = done["python train.py --dataset_location pod_export/ae_36_128_384x512"].stdout
    assert "from pod_export/ae_8_16_64x64/export_config.json: S, N, crop_size" in export
    assert "resuming at step 2" in done["python train.py --resume --run_name <run>"].stdout
    assert "2 process(es)" in done["torchrun --nproc_per_node=8 train.py ..."].stdout
    timed = json.loads((here / "benchmark.json").read_text())
    assert timed["complete"] and timed["rows"]
