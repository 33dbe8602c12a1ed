import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from datasets.sample import collate_clips
from datasets.synthetic import SyntheticClips
from nets.pips2 import Pips
from utils import checkpoint

REPO = Path(__file__).parent.parent
TINY = [
    "--B",
    "1",
    "--S",
    "4",
    "--N",
    "8",
    "--crop_size",
    "64,64",
    "--iters",
    "1",
    "--num_workers",
    "0",
    "--val_freq",
    "0",
    "--log_freq",
    "1000",
]


def run_train(tmp_path: Path, *args: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "train.py",
        *TINY,
        "--log_dir",
        str(tmp_path / "logs"),
        "--ckpt_dir",
        str(tmp_path / "ckpt"),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state_dict"]


def test_overfits_one_fixed_batch() -> None:
    torch.manual_seed(0)
    batch = collate_clips([SyntheticClips(S=4, N=8, crop_size=(64, 64), length=1, seed=3)[0]])
    model = Pips()
    params = [p for n, p in model.named_parameters() if not n.startswith("norm.")]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-6)
    losses = []
    for _ in range(30):
        g = torch.Generator().manual_seed(0)  # the same initial tracks every step: a fixed problem
        out = train.train_step(model, params, opt, itertools.repeat(batch), g, 2, 1, 5.0, "cpu", 0.0)
        assert not out.skipped
        losses.append(out.loss)
    assert losses[-1] < 0.5 * losses[0], losses


def test_non_finite_loss_skips_the_step() -> None:
    torch.manual_seed(0)
    sample = SyntheticClips(S=4, N=8, crop_size=(64, 64), length=1, seed=3)[0]
    sample.trajs[1, 0] = float("nan")
    model = Pips()
    params = [p for n, p in model.named_parameters() if not n.startswith("norm.")]
    opt = torch.optim.AdamW(params, lr=5e-4)
    before = [p.detach().clone() for p in params]
    out = train.train_step(
        model, params, opt, iter([collate_clips([sample])]), torch.Generator(), 1, 1, 5.0, "cpu", 0.0
    )
    assert out.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_resume_after_kill_matches_straight_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    recompute = ("--recompute", "True")  # the default; resuming must not depend on how activations are kept
    finish(run_train(straight, "--max_steps", "10", "--save_freq", "100", "--run_name", "r", *recompute))

    killed = tmp_path / "killed"
    proc = run_train(killed, "--max_steps", "10", "--save_freq", "5", "--run_name", "r", *recompute)
    ckpt5 = killed / "ckpt" / "r" / "model-000000005.pth"
    while not ckpt5.exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest_checkpoint(killed / "ckpt" / "r") == ckpt5, "killed too late"

    out = finish(
        run_train(killed, "--max_steps", "10", "--save_freq", "5", "--run_name", "r", "--resume", *recompute)
    )
    assert "resuming at step 5" in out and "step 000006/10" in out
    a = weights(straight / "ckpt" / "r" / "model-000000010.pth")
    b = weights(killed / "ckpt" / "r" / "model-000000010.pth")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "train.py",
        *TINY,
        "--max_steps",
        "2",
        "--save_freq",
        "2",
        "--run_name",
        "ddp",
        "--device",
        "cpu",
        "--log_dir",
        str(tmp_path / "logs"),
        "--ckpt_dir",
        str(tmp_path / "ckpt"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in (tmp_path / "ckpt" / "ddp").iterdir()) == ["model-000000002.pth"]
    assert out.stdout.count("step 000002/2") == 1  # only rank 0 logs
    assert "2 process(es)" in out.stdout


def test_bad_dataset_location(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither an export folder"):
        train.open_data(str(tmp_path / "empty"), 4, 8, (64, 64), False, 0, 4)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        train.open_data(str(tmp_path / "missing"), 4, 8, (64, 64), False, 0, 4)


def test_open_data_reads_pointodyssey_layout_and_exports(tmp_path: Path) -> None:
    import export_mp4_dataset
    import make_synthetic_dataset

    root = tmp_path / "pod"
    make_synthetic_dataset.main(
        out=str(root), splits="train", num_sequences=1, num_frames=12, height=96, width=128, seed=0
    )
    train_data, val_data = train.open_data(str(root), 4, 8, (64, 64), False, 0, 4)
    assert val_data is None  # no val/ split: no validation on training data
    batch = collate_clips([train_data[0], train_data[1]])
    assert batch.rgbs.shape == (2, 4, 64, 64, 3) and batch.trajs.shape == (2, 4, 8, 2)

    export_mp4_dataset.main(
        dataset_location=str(root), S=4, N=8, crop_size=(64, 64), max_clips=4, out_root=str(tmp_path / "exp")
    )
    (folder,) = (tmp_path / "exp").iterdir()
    train_data, val_data = train.open_data(str(folder), 4, 8, (64, 64), False, 0, 4)
    assert len(train_data) + len(val_data) == len(list(folder.glob("*/track.npz")))
    assert not set(train_data.clips) & set(val_data.clips)
    assert val_data[0].rgbs.shape == (4, 64, 64, 3)
