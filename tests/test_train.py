import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from datasets.sample import ClipBatch, collate_clips
from datasets.synthetic import SyntheticClips
from nets.delta import DeltaBlock
from nets.pips2 import Pips, PipsOutput
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


STEP = train.TrainConfig(iters=2, grad_acc=1, grad_clip=5.0, vis_weight=0.0)  # what train_step reads


def data_config(location: str, **knobs) -> train.TrainConfig:
    fixed = dict(S=4, N=8, crop_size=(64, 64), use_augs=False, seed=0, val_clips=4, B=1, val_freq=1)
    return train.TrainConfig(location, **(fixed | knobs))


def test_overfits_one_fixed_batch() -> None:
    torch.manual_seed(0)
    batch = collate_clips([SyntheticClips(S=4, N=8, crop_size=(64, 64), length=1, seed=3)[0]])
    model = Pips()
    params = [p for n, p in model.named_parameters() if not n.startswith("norm.")]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-6)
    losses = []
    for _ in range(30):
        g = torch.Generator().manual_seed(0)  # the same initial tracks every step: a fixed problem
        out = train.train_step(train.TrainState(model, params, opt, STEP), [batch], g)
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
    state = train.TrainState(model, params, opt, dataclasses.replace(STEP, iters=1))
    out = train.train_step(state, [collate_clips([sample])], torch.Generator())
    assert out.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, params))


S_CODE, H_CODE, W_CODE = (
    3,
    6,
    10,
)  # a clip whose pixel colours code their position: red 20 x + 5, green 20 y + 5


def position_coded_batch() -> tuple[ClipBatch, torch.Tensor]:
    """B=2 clips of a canvas 6 high and 10 + 3 wide seen through a window moving 1 px/frame, with four points
    on it -> the batch (B,S,H,W,3 uint8 frames, tracks in the window) and the points' canvas x,y (B,N,2)."""
    yy, xx = np.mgrid[:H_CODE, : W_CODE + S_CODE]
    canvas = np.stack([20 * xx + 5, 20 * yy + 5, np.full_like(xx, 99)], -1).astype(np.uint8)  # H,W+S,3
    frames = np.stack([canvas[:, s : s + W_CODE] for s in range(S_CODE)])  # S,H,W,3
    canvas_xy = torch.tensor(
        [[[3.0, 1.0], [5.0, 4.0], [8.0, 2.0], [9.0, 5.0]], [[4.0, 0.0], [6.0, 3.0], [7.0, 5.0], [3.0, 2.0]]]
    )
    trajs = canvas_xy[:, None].repeat(1, S_CODE, 1, 1)  # B,S,N,2
    trajs[..., 0] -= torch.arange(S_CODE, dtype=torch.float32)[None, :, None]  # the window moves right
    ones = torch.ones(2, S_CODE, 4)
    return ClipBatch(torch.from_numpy(frames)[None].repeat(2, 1, 1, 1, 1), trajs, ones, ones), canvas_xy


class ColourSearch(torch.nn.Module):
    """Stands in for Pips: finds, in every frame it is given, the pixel of the colour under each point's
    initial frame-0 position, so its tracks are exact in the frames' own coordinates."""

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        B, S, _, H, W = rgbs.shape
        inside = (
            (trajs_e0 >= 0).all() and (trajs_e0[..., 0] <= W - 1).all() and (trajs_e0[..., 1] <= H - 1).all()
        )
        assert inside, "initial tracks outside the frames"
        x0 = trajs_e0[:, 0, :, 0].round().long().clamp(0, W - 1)  # B,N
        y0 = trajs_e0[:, 0, :, 1].round().long().clamp(0, H - 1)  # B,N
        code = rgbs[:, :, 0] * 256 + rgbs[:, :, 1]  # B,S,H,W
        wanted = torch.stack([code[b, 0, y0[b], x0[b]] for b in range(B)])  # B,N
        hits = (code.flatten(2)[:, :, None] == wanted[:, None, :, None]).float().argmax(-1)  # B,S,N
        tracks = torch.stack([hits % W, hits // W], -1).float()  # B,S,N,2
        feats = tuple(torch.zeros(B, S, trajs_e0.shape[2], 1) for _ in range(3))
        return PipsOutput(tracks, [tracks], feats)


def test_transpose_augmentation_keeps_the_tracks_on_their_pixels() -> None:
    batch, canvas_xy = position_coded_batch()
    seen = set()
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        res = train.run_model(ColourSearch(), batch, 1, g, train=True, transpose=seed % 2 == 1)
        frames, trajs_g = res.batch.rgbs, res.batch.trajs  # B,S,H,W,3
        transposed = frames.shape[2:4] == (W_CODE, H_CODE)
        seen.add(transposed)
        assert transposed or frames.shape[2:4] == (H_CODE, W_CODE)
        # under every ground-truth position, the frame the model is given shows that point's canvas colour
        x, y = trajs_g[..., 0].long(), trajs_g[..., 1].long()  # B,S,N
        assert (x < frames.shape[3]).all() and (y < frames.shape[2]).all(), "the tracks leave the frames"
        b, s = torch.meshgrid(torch.arange(2), torch.arange(S_CODE), indexing="ij")  # B,S
        colour = frames[b[..., None], s[..., None], y, x]  # B,S,N,3
        torch.testing.assert_close(
            colour[..., :2].float(), (20 * canvas_xy[:, None] + 5).expand(2, S_CODE, 4, 2)
        )
        # a tracker exact on those frames is exact against the ground truth: zero loss, d_avg 100
        assert res.loss.item() == 0.0
        assert train.metrics_of(res)["d_avg"] == 100.0
    assert seen == {False, True}


def tiny_model() -> Pips:
    torch.manual_seed(0)
    model = Pips(latent_dim=32, corr_levels=2, corr_radius=2)
    model.delta_block = DeltaBlock(32, 2, 2, base_filters=16, num_blocks=2)  # seconds, not minutes
    return model


def test_micro_batches_make_the_step_of_one_batch() -> None:
    clips = SyntheticClips(S=4, N=8, crop_size=(32, 32), length=2, seed=5)
    a, b = clips[0], clips[1]
    b.valids[:, :6] = 0  # the second clip has a quarter of the first one's valid annotations
    splits = {"one batch": [collate_clips([a, b])], "micro": [collate_clips([a]), collate_clips([b])]}
    # seed 0 draws a transposed step, seed 1 one that is not; an SGD step of lr 1 is minus the gradient
    assert [bool(torch.rand((), generator=torch.Generator().manual_seed(s)) < 0.5) for s in (0, 1)] == [
        True,
        False,
    ]
    for seed in (0, 1):
        steps = {}
        for name, micro_batches in splits.items():
            model = tiny_model()
            params = [p for n, p in model.named_parameters() if not n.startswith("norm.")]
            before = [p.detach().clone() for p in params]
            optimizer = torch.optim.SGD(params, lr=1.0)
            state = train.TrainState(model, params, optimizer, dataclasses.replace(STEP, grad_clip=1e9))
            out = train.train_step(state, micro_batches, torch.Generator().manual_seed(seed))
            assert not out.skipped
            steps[name] = torch.cat([(q - p).flatten() for p, q in zip(params, before)]), out.loss
        (grad, loss), (grad_micro, loss_micro) = steps["one batch"], steps["micro"]
        assert grad.abs().max() > 0
        torch.testing.assert_close(grad_micro, grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))
        assert loss_micro == pytest.approx(loss, rel=1e-5)


def test_initial_tracks_start_exact_and_spread_over_the_frame() -> None:
    B, S, N, H, W = 2, 5, 400, 6, 10
    trajs_g = torch.zeros(B, S, N, 2)
    trajs_g[:, 0] = 3.0
    e0 = train.initial_trajs(trajs_g, torch.Generator().manual_seed(0), H, W)
    assert torch.equal(e0[:, 0], trajs_g[:, 0])  # frame 0 is the query
    still = (e0[:, 1:] == 3.0).all(-1).all(1)  # B,N: zero-velocity tracks
    assert 0.4 < still.float().mean() < 0.6
    moving = e0[:, 1:][~still[:, None].expand(B, S - 1, N)]  # random positions blended with the truth (0, 0)
    assert moving.min() >= 0 and moving[:, 0].max() <= W - 1 and moving[:, 1].max() <= H - 1
    assert moving[:, 0].max() > 0.8 * (W - 1) and moving[:, 1].max() > 0.8 * (H - 1)


def test_resume_continues_the_run_exactly(tmp_path: Path) -> None:
    """A run stopped after its step-5 checkpoint (as a kill leaves it: the next checkpoint's temporary file
    half written) and resumed ends where a straight run ends, with the official schedule's learning rate."""
    straight = tmp_path / "straight"
    finish(run_train(straight, "--max_steps", "10", "--save_freq", "5", "--run_name", "r"))
    ckpts = straight / "ckpt" / "r"
    assert [p.name for p in checkpoint.list_checkpoints(ckpts)] == [
        "model-000000005.pth",
        "model-000000010.pth",
    ]

    stopped = tmp_path / "stopped" / "ckpt" / "r"
    stopped.mkdir(parents=True)
    shutil.copy(ckpts / "model-000000005.pth", stopped)
    (stopped / ".model-x1y2z3.tmp").write_bytes((ckpts / "model-000000010.pth").read_bytes()[:5000])
    out = finish(
        run_train(
            tmp_path / "stopped", "--max_steps", "10", "--save_freq", "5", "--run_name", "r", "--resume"
        )
    )
    assert "resuming at step 5" in out and "step 000005/10" not in out
    assert [line.split("; ")[1] for line in out.splitlines() if "; step " in line] == [
        f"step {k:06d}/10" for k in range(6, 11)
    ]
    a = torch.load(ckpts / "model-000000010.pth", weights_only=True)
    b = torch.load(stopped / "model-000000010.pth", weights_only=True)
    for k, v in a["model_state_dict"].items():
        torch.testing.assert_close(v, b["model_state_dict"][k], atol=1e-5, rtol=1e-4, msg=k)
    at5 = torch.load(ckpts / "model-000000005.pth", weights_only=True)
    assert not torch.equal(
        at5["model_state_dict"]["fnet.conv1.weight"], b["model_state_dict"]["fnet.conv1.weight"]
    )
    # OneCycleLR over max_steps + 100 = 110 steps, 10% warm-up from lr/25 (lr = 5e-4): step 5 is halfway up
    # (lr/25 + (lr - lr/25) * 5/10), step 10 is the peak
    for state, step, lr in [(at5, 5, 2.6e-4), (b, 10, 5e-4)]:
        assert state["step"] == step and state["scheduler_state_dict"]["last_epoch"] == step
        assert state["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(lr, rel=1e-9)
        assert all(v["step"] == step for v in state["optimizer_state_dict"]["state"].values())


def test_bad_dataset_location(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither an export folder"):
        train.open_data(data_config(str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        train.open_data(data_config(str(tmp_path / "missing")))


def test_open_data_reads_pointodyssey_layout_and_exports(tmp_path: Path) -> None:
    import export_mp4_dataset
    import make_synthetic_dataset

    root = tmp_path / "pod"
    make_synthetic_dataset.main(
        make_synthetic_dataset.SyntheticConfig(
            out=str(root), splits=("train",), num_sequences=1, num_frames=12, height=96, width=128
        )
    )
    train_data, val_data = train.open_data(data_config(str(root)))
    assert val_data is None  # no val/ split: no validation on training data
    batch = collate_clips([train_data[0], train_data[1]])
    assert batch.rgbs.shape == (2, 4, 64, 64, 3) and batch.trajs.shape == (2, 4, 8, 2)

    export_mp4_dataset.main(
        export_mp4_dataset.ExportConfig(
            dataset_location=str(root),
            S=4,
            N=8,
            crop_size=(64, 64),
            max_clips=4,
            out_root=str(tmp_path / "exp"),
        )
    )
    (folder,) = (tmp_path / "exp").iterdir()
    train_data, val_data = train.open_data(data_config(str(folder)))
    assert len(train_data) + len(val_data) == len(list(folder.glob("*/track.npz")))
    assert not set(train_data.clips) & set(val_data.clips)
    assert val_data[0].rgbs.shape == (4, 64, 64, 3)
    # 4 clips: B=2 holds 2 out and trains on 2; B=1 on 2 processes the same; without validation all 4 train
    for knobs, processes in [(dict(B=2), 1), (dict(B=1), 2)]:
        train_data, val_data = train.open_data(data_config(str(folder), **knobs), processes)
        assert (len(train_data), len(val_data)) == (2, 2)
    train_data, val_data = train.open_data(data_config(str(folder), B=3, val_freq=0))
    assert (len(train_data), val_data) == (4, None)
    with pytest.raises(
        ValueError,
        match=r"has 4 clips: too few for training and a held-out validation split, "
        r"which each need B x processes = 3 clips; pass --val_freq 0",
    ):
        train.open_data(data_config(str(folder), B=3))
    with pytest.raises(ValueError, match=r"has 4 clips: too few for one batch \(B x processes = 6 clips\)"):
        train.open_data(data_config(str(folder), B=3, val_freq=0), 2)
