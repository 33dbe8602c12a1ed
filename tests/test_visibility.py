"""The optional visibility head: loading, head-only training, overfitting, and the outputs that carry it."""

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import demo
import test_on_tap
import train
from datasets.sample import collate_clips
from datasets.synthetic import SyntheticClips
from nets.losses import sequence_loss, visibility_loss
from nets.pips2 import VIS_HEAD_PREFIX, Pips, PipsOutput, frames_to_rgbs
from tracking.evaluate import frame0_jaccard
from tracking.predictor import PipsTracker, build_model
from utils import checkpoint
from utils.config import UsageError, run
from utils.metrics import occlusion_accuracy
from utils.video import write_video

TINY = dict(S=8, iters=1, image_size=(64, 64), device="cpu")


def backbone(model: Pips) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(VIS_HEAD_PREFIX)}


def head(model: Pips) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(VIS_HEAD_PREFIX)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def clip() -> tuple[torch.Tensor, ...]:
    data = SyntheticClips(S=8, N=16, crop_size=(64, 64), length=1, seed=3)
    frames, trajs, visibs, valids = collate_clips([data[0]])
    return frames_to_rgbs(frames), trajs, visibs, valids


def test_the_head_leaves_the_tracks_alone(clip: tuple) -> None:
    rgbs, trajs, _, _ = clip
    torch.manual_seed(0)
    plain = Pips().eval()
    torch.manual_seed(0)
    with_head = Pips(vis_head=True).eval()
    assert same(backbone(with_head), plain.state_dict())  # same seed, the head is built last
    assert len(plain.state_dict()) == 82 and all(k.startswith(VIS_HEAD_PREFIX) for k in head(with_head))
    e0 = trajs[:, :1].expand_as(trajs)
    with torch.no_grad():
        a, b = plain(e0, rgbs, iters=2), with_head(e0, rgbs, iters=2)
    assert torch.equal(a.tracks, b.tracks) and a.vis is None and a.conf is None
    assert b.vis.shape == b.conf.shape == trajs.shape[:3]


def test_reference_weights_load_into_a_model_with_the_head(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    reference = Pips()
    checkpoint.save(tmp_path / "ref", reference, step=5)  # the 82 official keys
    with caplog.at_level(logging.WARNING):
        plain = build_model(tmp_path / "ref", "cpu")  # follows the checkpoint: no head
    assert plain.vis_head is None and not caplog.text
    with caplog.at_level(logging.WARNING):
        model = build_model(tmp_path / "ref", "cpu", vis_head=True)
    assert same(backbone(model), reference.state_dict())
    assert caplog.text.count("has no vis_head.* parameters") == 1 and "untrained" in caplog.text
    checkpoint.save(tmp_path / "head", model, step=6)  # with the head: 102 keys
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = build_model(tmp_path / "head", "cpu")  # the head is found in the file, loaded strictly
    assert again.vis_head is not None and same(again.state_dict(), model.state_dict()) and not caplog.text
    with pytest.raises(ValueError, match=r"unexpected 20 \['vis_head\."):
        build_model(tmp_path / "head", "cpu", vis_head=False)
    broken = {k: v for k, v in model.state_dict().items() if k != "fnet.conv1.weight"}
    torch.save({"model_state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing 1 \['fnet.conv1.weight'\]"):  # the backbone stays strict
        build_model(tmp_path / "broken.pth", "cpu", vis_head=True)


def test_the_head_sees_each_track_s_distance_to_the_frame_s_edge() -> None:
    # a 48x32 frame at stride 8: feature maps 6x4, the last pixel centre at x 47/8 = 5.875, y 31/8 = 3.875
    coords = torch.tensor([[1.0, 2.0], [5.0, 1.5], [5.875, 2.0], [-2.0, 2.0], [3.0, 4.375], [100.0, -50.0]])
    edge = Pips().edge_distance(coords[None, None], (4, 6))
    assert edge.shape == (1, 1, 6, 1)
    # inside by min(x, 5.875 - x, y, 3.875 - y) feature pixels, in units of 4, clipped to [-1, 1]
    expected = torch.tensor([1.0, 0.875, 0.0, -2.0, -0.5, -4.0]) / 4
    assert torch.allclose(edge.flatten(), expected.clamp(min=-1))


def test_visibility_loss_by_hand() -> None:
    vis = torch.tensor([[[2.0, -1.0]]])  # B,S,N = 1,1,2
    conf = torch.tensor([[[0.0, 3.0]]])
    tracks = torch.tensor([[[[0.0, 0.0], [10.0, 0.0]]]])
    gt = torch.zeros(1, 1, 2, 2)  # point 0 exact (confident), point 1 10 px off (not)
    visibs = torch.tensor([[[1.0, 0.0]]])
    valids = torch.tensor([[[1.0, 1.0]]])

    def bce(logit: float, target: float) -> float:
        p = 1 / (1 + np.exp(-logit))
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))

    expected = (bce(2, 1) + bce(-1, 0)) / 2 + (bce(0, 1) + bce(3, 0)) / 2
    got = visibility_loss(vis, conf, tracks, gt, visibs, valids)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    only_first = visibility_loss(vis, conf, tracks, gt, visibs, torch.tensor([[[1.0, 0.0]]]))
    assert only_first.item() == pytest.approx(bce(2, 1) + bce(0, 1), rel=1e-5)


def test_overfitting_one_batch_learns_its_visibility(clip: tuple) -> None:
    rgbs, trajs, visibs, valids = clip
    torch.manual_seed(0)
    model = Pips(vis_head=True)
    model.requires_grad_(False)
    model.vis_head.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.vis_head.parameters(), lr=1e-3)
    baseline = occlusion_accuracy(torch.ones_like(visibs), visibs, valids)  # "always visible"
    assert baseline < 90
    for _ in range(16):
        out = model(trajs, rgbs, iters=1)
        loss = visibility_loss(out.vis, out.conf, out.tracks, trajs, visibs, valids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model(trajs, rgbs, iters=1)
    assert occlusion_accuracy(torch.sigmoid(out.vis), visibs, valids) >= 95


def test_head_only_training_leaves_the_backbone_bitwise(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    torch.manual_seed(2)
    checkpoint.save(tmp_path / "backbone", Pips(), step=100)
    start = checkpoint.read(tmp_path / "backbone")["model_state_dict"]
    starts = []  # how each training forward started its tracks
    run_model = train.run_model

    def recording(*args, **kwargs) -> train.StepResult:
        starts.append((kwargs["train"], kwargs.get("zero_velocity")))
        return run_model(*args, **kwargs)

    monkeypatch.setattr(train, "run_model", recording)
    flags = f"--init_ckpt {tmp_path / 'backbone'} --head_only --B 1 --S 4 --N 8 --crop_size 64,64 --iters 1"
    flags += " --max_steps 3 --num_workers 0 --val_freq 3 --val_clips 1 --save_freq 3 --log_freq 1000"
    flags += f" --run_name head --log_dir {tmp_path / 'logs'} --ckpt_dir {tmp_path / 'ckpt'} --device cpu"
    run(train.main, train.TrainConfig, train.resolve_config, argv=flags.split())
    # validation puts the head's occlusion accuracy beside its clip's share of visible entries (frames 1..)
    held_out = SyntheticClips(4, 8, (64, 64), length=1, seed=1_000_003)[0]
    visibs, valids = held_out.visibs[1:], held_out.valids[1:]
    share = 100 * float((visibs * valids).sum() / valids.sum())
    first = next(line for line in capsys.readouterr().out.splitlines() if "validation at step 1:" in line)
    assert f"(always visible: {share:.1f})" in first
    trained = checkpoint.read(tmp_path / "ckpt" / "head")["model_state_dict"]
    assert all(torch.equal(trained[k], v) for k, v in start.items())  # the backbone did not move
    assert [z for is_train, z in starts if is_train] == [True] * 3  # tracks from zero velocity, as inference
    assert any(k.startswith(VIS_HEAD_PREFIX) for k in trained)
    torch.manual_seed(3)
    fresh = Pips(vis_head=True)
    assert not same(head(fresh), {k: v for k, v in trained.items() if k.startswith(VIS_HEAD_PREFIX)})
    with pytest.raises(UsageError, match="--head_only .* --init_ckpt"):
        train.TrainConfig(head_only=True)


def test_in_head_only_mode_only_the_head_gets_gradients(clip: tuple) -> None:
    rgbs, trajs, visibs, valids = clip
    model = Pips(vis_head=True)
    model.requires_grad_(False)
    model.vis_head.requires_grad_(True)
    frames = rgbs.movedim(-3, -1).to(torch.uint8)  # back to B,S,H,W,3
    res = train.run_model(model, train.ClipBatch(frames, trajs, visibs, valids), 1, torch.Generator(), True)
    res.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.vis_head.named_parameters(prefix="vis_head")}


@pytest.mark.parametrize("head_only", [False, True])
def test_the_visibility_loss_trains_the_head_alone(clip: tuple, head_only: bool) -> None:
    rgbs, trajs, visibs, valids = (x[:, :4] for x in clip)  # 4 frames are enough
    torch.manual_seed(0)
    model = Pips(vis_head=True)
    if head_only:  # as train.py's head_only sets it up
        model.requires_grad_(False)
        model.vis_head.requires_grad_(True)
    out = model(trajs[:, :1].expand_as(trajs), rgbs, iters=1)
    visibility_loss(out.vis, out.conf, out.tracks, trajs, visibs, valids).backward(retain_graph=True)
    for name, p in model.named_parameters():
        if name.startswith(VIS_HEAD_PREFIX):  # the biases before a norm get next to nothing: weights only
            assert p.grad is not None and (p.dim() == 1 or p.grad.abs().sum() > 0), name
        else:
            assert p.grad is None or not p.grad.any(), name
    if not head_only:  # the tracking loss still trains the backbone, and leaves the head alone
        model.zero_grad(set_to_none=True)
        sequence_loss(out.preds, trajs, valids).backward()
        assert model.fnet.conv1.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.vis_head.parameters())


def head_checkpoint(path: Path) -> Path:
    torch.manual_seed(4)
    checkpoint.save(path, Pips(vis_head=True), step=1)
    return path


def test_api_and_demo_give_visibility(tmp_path: Path) -> None:
    video = np.random.default_rng(0).integers(0, 256, (10, 48, 64, 3), dtype=np.uint8)
    ckpt = head_checkpoint(tmp_path / "ckpt")
    tracker = PipsTracker.from_checkpoint(ckpt, device="cpu", S=6, iters=1, image_size=(64, 64))
    result = tracker.predict(video, queries=[[0, 10.0, 10.0], [5, 30.0, 20.0]])
    assert result.tracks.shape == (10, 2, 2) and np.array_equal(
        result.tracks, tracker(video, queries=[[0, 10.0, 10.0], [5, 30.0, 20.0]])
    )
    for probs in (result.visibility, result.confidence):
        assert probs.shape == (10, 2) and ((probs > 0) & (probs < 1)).all()
    torch.manual_seed(0)
    plain = PipsTracker(Pips(), S=6, iters=1, image_size=(64, 64)).predict(video, grid_size=2)
    assert plain.visibility is None and plain.confidence is None
    write_video(tmp_path / "clip.mp4", video, fps=5)
    demo.main(
        demo.DemoConfig(
            filename=str(tmp_path / "clip.mp4"),
            init_ckpt=str(ckpt),
            N=4,
            out_dir=str(tmp_path / "out"),
            runtime="torch",
            **TINY,
        )
    )
    saved = np.load(tmp_path / "out" / "clip_tracks.npz")
    assert saved["visibility"].shape == saved["confidence"].shape == (10, 4)
    assert saved["tracks"].shape == (10, 4, 2)


def test_on_tap_reports_aj_and_oa_with_a_head(tmp_path: Path) -> None:
    T, H, W = 6, 64, 64
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    points = rng.uniform(0.2, 0.8, (3, T, 2)).astype(np.float32)
    occluded = np.zeros((3, T), bool)
    occluded[1, 3:] = True
    (tmp_path / "tap").mkdir()
    with open(tmp_path / "tap" / "tapvid_davis.pkl", "wb") as f:
        pickle.dump({"clip": {"video": video, "points": points, "occluded": occluded}}, f)
    test_on_tap.main(
        test_on_tap.TapConfig(
            dataset_location=str(tmp_path / "tap"),
            init_ckpt=str(head_checkpoint(tmp_path / "ckpt")),
            log_dir=str(tmp_path / "logs"),
            **TINY,
        )
    )
    row = read_row(tmp_path / "logs" / "results.json")
    for mode in ("first", "strided"):
        assert 0 <= row[f"tapvid_{mode}/average_jaccard"] <= 100
        assert 0 <= row[f"tapvid_{mode}/occlusion_accuracy"] <= 100
    assert 0 <= row["occlusion_accuracy"] <= 100 and row["d_avg_occluded"] is None  # TAP-Vid: visible only


def read_row(path: Path) -> dict:
    (row,) = json.loads(path.read_text())["videos"]
    return row


def test_frame0_jaccard_by_hand() -> None:
    T, size = 3, (64, 128)  # the TAP-Vid space scales x by 2 and y by 4
    gt = np.zeros((T, 2, 2), np.float32)
    gt[:, 0] = [10.0, 10.0]
    gt[:, 1] = [40.0, 20.0]
    visibs = np.ones((T, 2), np.float32)
    visibs[2, 1] = 0  # point 1 hidden at frame 2
    tracks = torch.from_numpy(gt.copy())[None]
    tracks[0, 1, 0, 0] += 3.0  # frame 1, point 0: 3 px off in x = 6 px in the 256 space
    seen = torch.from_numpy(visibs)[None]
    # frames 1 and 2 count: 3 visible entries; point 0 at frame 1 is within 8 and 16 only
    # jaccard_thr = correct / (visible + false positives): thr 1,2,4: 2/(3+1); thr 8,16: 3/3
    expected = (3 * 2 / 4 + 2 * 1.0) / 5 * 100
    assert frame0_jaccard(tracks, seen, gt, visibs, size) == pytest.approx(expected)
    everywhere = torch.ones_like(seen)  # the hidden entry predicted visible: one more false positive
    assert frame0_jaccard(tracks, everywhere, gt, visibs, size) == pytest.approx(
        (3 * 2 / 5 + 2 * 3 / 4) / 5 * 100
    )


class StartRecorder(torch.nn.Module):
    """Stands in for Pips: returns its initial tracks and remembers them."""

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.start = trajs_e0.clone()
        return PipsOutput(trajs_e0, [trajs_e0], ())


def test_head_only_training_starts_tracks_from_zero_velocity_as_inference_does(clip: tuple) -> None:
    rgbs, trajs, visibs, valids = clip
    batch = train.ClipBatch(rgbs.movedim(-3, -1).to(torch.uint8), trajs, visibs, valids)
    model = StartRecorder()
    for seed in range(4):
        res = train.run_model(model, batch, 1, torch.Generator().manual_seed(seed), True, zero_velocity=True)
        assert torch.equal(model.start, res.batch.trajs[:, :1].expand_as(res.batch.trajs))
    train.run_model(model, batch, 1, torch.Generator().manual_seed(0), True)
    assert not torch.equal(model.start[:, 1:], model.start[:, :1].expand_as(model.start[:, 1:]))
