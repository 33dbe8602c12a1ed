import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from datasets.exportdataset import (
    ExportDataset,
    claim_clip,
    clip_dir,
    export_version,
    list_clips,
    release_clip,
    write_clip,
)
from datasets.sample import ClipSample, UnreadableMarks
from utils.video import write_video

S, N, H, W = 6, 10, 32, 48
VERSION = export_version("t", S, N, (H, W))


def make_sample(seed: int, num_points: int = N, num_frames: int = S) -> ClipSample:
    """A smooth clip (H.264 keeps it within a few grey levels) whose red level encodes the frame
    and whose blue level encodes the seed, with random tracks."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W]
    rgbs = np.zeros((num_frames, H, W, 3), dtype=np.uint8)
    for t in range(num_frames):
        rgbs[t, ..., 0] = 40 + 30 * t
        rgbs[t, ..., 1] = 2 * xs + ys
        rgbs[t, ..., 2] = 20 + 10 * seed
    return ClipSample(
        rgbs=rgbs,
        trajs=rng.uniform(0, W - 1, (num_frames, num_points, 2)).astype(np.float32),
        visibs=(rng.random((num_frames, num_points)) < 0.7).astype(np.float32),
        valids=(rng.random((num_frames, num_points)) < 0.9).astype(np.float32),
    )


def make_export(root: Path, num_clips: int, num_points: int = N) -> Path:
    out_dir = root / VERSION
    out_dir.mkdir(parents=True)
    for i in range(num_clips):
        assert write_clip(out_dir, i, make_sample(i, num_points))
    return out_dir


def stack_rgbs(batch: list[ClipSample]) -> np.ndarray:
    return np.stack([s.rgbs for s in batch])  # B,S,H,W,3


def test_round_trip_through_export_dataset(tmp_path):
    out_dir = make_export(tmp_path, 3, num_points=N + 5)
    ds = ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W))
    assert len(ds) == 3 and [p.name for p in ds.clips] == ["000000", "000001", "000002"]
    for i in range(3):
        written, item = make_sample(i, N + 5), ds[i]
        assert item.rgbs.shape == (S, H, W, 3) and item.rgbs.dtype == np.uint8
        assert np.abs(item.rgbs.astype(int) - written.rgbs).mean() < 2  # RGB order kept
        # a subset of N distinct points, with their x, y, vis, valid kept together
        match = (item.track_g[:, :, None] == written.track_g[:, None]).all(axis=(0, 3))  # N,N'
        assert (match.sum(axis=1) == 1).all() and len(set(match.argmax(axis=1))) == N
    assert sorted(p.name for p in out_dir.iterdir()) == ["000000", "000001", "000002"]


def test_items_are_a_function_of_seed_epoch_and_index(tmp_path):
    make_export(tmp_path, 2, num_points=3 * N)
    ds = ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W), use_augs=True, seed=1)
    a, b = ds[1], ds[1]
    np.testing.assert_array_equal(a.rgbs, b.rgbs)
    np.testing.assert_array_equal(a.trajs, b.trajs)
    ds.set_epoch(1)
    assert not np.array_equal(ds[1].trajs, a.trajs)
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[1].trajs, a.trajs)
    plain = ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W), seed=1)
    changed = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        changed += sum(not np.array_equal(ds[i].rgbs, plain[i].rgbs) for i in range(2))
    assert changed > 0


def test_clear_errors_for_missing_or_mismatched_exports(tmp_path):
    with pytest.raises(FileNotFoundError, match="no export folder"):
        ExportDataset(str(tmp_path), VERSION)
    (tmp_path / VERSION).mkdir()
    with pytest.raises(FileNotFoundError, match="holds no complete clips"):
        ExportDataset(str(tmp_path), VERSION)
    (tmp_path / VERSION).rmdir()
    make_export(tmp_path, 1)
    with pytest.raises(ValueError, match=r"000000 has 10 points, fewer than N=11"):
        ExportDataset(str(tmp_path), VERSION, S=S, N=N + 1, crop_size=(H, W))
    with pytest.raises(ValueError, match=r"000000: track_g has shape \(6, 10, 4\), expected \(8, N, 4\)"):
        ExportDataset(str(tmp_path), VERSION, S=8, N=N, crop_size=(H, W))
    with pytest.raises(ValueError, match=r"000000: frames are \(32, 48\), expected \(64, 48\)"):
        ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(64, W))


def test_corrupted_clips_are_reported_once_and_replaced(tmp_path, caplog):
    out_dir = make_export(tmp_path, 5)
    (clip_dir(out_dir, 1) / "rgb.mp4").write_bytes(b"not a video")
    write_video(clip_dir(out_dir, 2) / "rgb.mp4", make_sample(2).rgbs[:3])  # short
    (clip_dir(out_dir, 4) / "track.npz").unlink()  # incomplete: left out at indexing
    seeds = set()
    with caplog.at_level(logging.WARNING):
        ds = ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W))
        for epoch in range(3):
            ds.set_epoch(epoch)
            for batch in DataLoader(ds, batch_size=2, collate_fn=stack_rgbs):
                assert batch.shape == (2, S, H, W, 3)
                assert (batch.reshape(2, -1).max(axis=1) > 0).all()  # never an all-zero placeholder
                seeds.update(int(round((v - 20) / 10)) for v in batch[:, 0, ..., 2].mean(axis=(1, 2)))
    assert ds.skipped == [f"clip {clip_dir(out_dir, 4)}: no track.npz"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert f"skipping 000001: unreadable {clip_dir(out_dir, 1) / 'rgb.mp4'}" in messages[1]
    assert f"skipping 000002: short {clip_dir(out_dir, 2) / 'rgb.mp4'}: 3 frames, expected 6" in messages[2]
    assert seeds == {0, 3}
    assert ds.unreadable.found() == ["000001", "000002"]
    fresh = ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W))
    loader = DataLoader(fresh, batch_size=2, num_workers=2, collate_fn=stack_rgbs)
    assert all((b.reshape(2, -1).max(axis=1) > 0).all() for b in loader)
    assert fresh.unreadable.found() == ["000001", "000002"]  # found by the workers, seen here
    for i in (0, 3):
        (clip_dir(out_dir, i) / "track.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="no clip can be read"):
        ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W))


def test_clip_folders_are_written_once_and_locks_exclude(tmp_path):
    out_dir = tmp_path / VERSION
    out_dir.mkdir()
    assert claim_clip(out_dir, 7)
    assert not claim_clip(out_dir, 7)  # held by this live process
    assert write_clip(out_dir, 7, make_sample(7))
    assert not write_clip(out_dir, 7, make_sample(8))  # a second writer loses, the first clip stays
    release_clip(out_dir, 7)
    with np.load(clip_dir(out_dir, 7) / "track.npz") as data:
        np.testing.assert_array_equal(data["track_g"], make_sample(7).track_g)
    assert [p.name for p in out_dir.iterdir()] == ["000007"]


def test_stale_locks_and_temporary_folders_are_replaced(tmp_path):
    out_dir = tmp_path / VERSION
    out_dir.mkdir()
    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    (out_dir / "000003.lock").write_text(f"{host} {dead_pid}\n")
    abandoned = out_dir / f".tmp-000003-{host}-{dead_pid}"
    abandoned.mkdir()
    (abandoned / "rgb.mp4").write_bytes(b"half")
    assert claim_clip(out_dir, 3)
    assert not abandoned.exists()
    assert list_clips(out_dir) == []


# End to end: generated PointOdyssey-layout data -> export_mp4_dataset.py -> ExportDataset.

REPO = Path(__file__).resolve().parents[1]
E2E = dict(S=8, N=16, crop_size=(64, 96), version="e2e", seed=3)
E2E_VERSION = export_version("e2e", 8, 16, (64, 96))
CONFIG = "export_config.json"


@pytest.fixture(scope="module")
def pod_root(tmp_path_factory) -> Path:
    from datasets.synthetic import make_scene, write_sequence

    root = tmp_path_factory.mktemp("pod")
    scene = make_scene(20, 96, 128, np.random.default_rng(0), num_points=600)
    write_sequence(scene, root / "train" / "seq0")
    return root


def export_args(pod_root: Path, out_root: Path, **extra) -> list[str]:
    args = dict(E2E, dataset_location=pod_root, out_root=out_root, **extra)
    return [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in args.items()]


def start_export(pod_root: Path, out_root: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "export_mp4_dataset.py", *export_args(pod_root, out_root, **extra)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a kill reaches its workers too
    )


@pytest.fixture(scope="module")
def expected_tracks(pod_root) -> list[np.ndarray]:
    from datasets.pointodyssey import PointOdysseyDataset

    ds = PointOdysseyDataset(pod_root, S=8, N=16, crop_size=(64, 96), use_augs=True, seed=3)
    return [ds[i].track_g for i in range(len(ds))]


def folder_names(out_dir: Path, num_clips: int) -> bool:
    """True if the folder holds exactly the clips 0..num_clips-1 and the settings file."""
    expected = [CONFIG, *(f"{i:06d}" for i in range(num_clips))]
    return sorted(p.name for p in out_dir.iterdir()) == sorted(expected)


def group_running(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def check_complete(out_dir: Path, tracks: list[np.ndarray]) -> list[int]:
    """Every clip folder holds the clip's exact tracks and S readable frames; returns the ids."""
    ids = []
    for clip in list_clips(out_dir):
        assert sorted(p.name for p in clip.iterdir()) == ["rgb.mp4", "track.npz"]
        with np.load(clip / "track.npz") as data:
            np.testing.assert_array_equal(data["track_g"], tracks[int(clip.name)])
        ids.append(int(clip.name))
    ds = ExportDataset(str(out_dir.parent), out_dir.name, S=8, N=16, crop_size=(64, 96))
    for i in range(len(ds)):
        assert ds[i].rgbs.reshape(8, -1).max(axis=1).min() > 0
    return ids


def test_export_end_to_end_resumes_and_refuses_other_settings(pod_root, expected_tracks, tmp_path, capsys):
    import export_mp4_dataset

    export_mp4_dataset.main(
        export_mp4_dataset.ExportConfig(
            **dict(E2E, dataset_location=str(pod_root), out_root=str(tmp_path), max_clips=4)
        )
    )
    out_dir = tmp_path / E2E_VERSION
    assert check_complete(out_dir, expected_tracks) == [0, 1, 2, 3]
    assert "written 4, skipped 0, failed 0" in capsys.readouterr().out
    # locks beside complete clips: one of a writer killed before releasing it, one of a live writer
    host = socket.gethostname()
    (out_dir / "000001.lock").write_text(f"{host} {2**22 + 12345}\n")  # above the default pid_max: dead
    (out_dir / "000002.lock").write_text(f"{host} {os.getpid()}\n")
    export_mp4_dataset.main(
        export_mp4_dataset.ExportConfig(
            **dict(E2E, dataset_location=str(pod_root), out_root=str(tmp_path), max_clips=5)
        )
    )
    assert "written 1, skipped 4, failed 0" in capsys.readouterr().out
    assert not (out_dir / "000001.lock").exists() and (out_dir / "000002.lock").exists()
    with pytest.raises(
        ValueError, match=f"{out_dir} holds clips of another export \\(seed 3 there, seed 4 now\\)"
    ):
        export_mp4_dataset.main(
            export_mp4_dataset.ExportConfig(
                **dict(E2E, dataset_location=str(pod_root), out_root=str(tmp_path), seed=4)
            )
        )
    sample = ExportDataset(str(tmp_path), E2E_VERSION, S=8, N=16, crop_size=(64, 96), use_augs=True)[4]
    assert sample.rgbs.shape == (8, 64, 96, 3) and sample.trajs.shape == (8, 16, 2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the workers die")
def test_killed_export_leaves_only_complete_clips_and_resumes(pod_root, expected_tracks, tmp_path, capsys):
    import export_mp4_dataset

    out_dir, num_clips = tmp_path / E2E_VERSION, len(expected_tracks)
    proc = start_export(pod_root, tmp_path, num_workers=2)
    deadline = time.time() + 60
    while (len(list_clips(out_dir)) if out_dir.is_dir() else 0) < 2 and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while group_running(proc.pid):  # the workers die a moment later
        assert time.time() < deadline
        time.sleep(0.01)
    done = check_complete(out_dir, expected_tracks)
    assert 2 <= len(done) < num_clips

    export_mp4_dataset.main(
        export_mp4_dataset.ExportConfig(**dict(E2E, dataset_location=str(pod_root), out_root=str(tmp_path)))
    )
    assert f"written {num_clips - len(done)}, skipped {len(done)}, failed 0" in capsys.readouterr().out
    assert check_complete(out_dir, expected_tracks) == list(range(num_clips))
    assert folder_names(out_dir, num_clips)  # no lock or temporary folder left behind


def test_concurrent_exporters_write_each_clip_once(pod_root, expected_tracks, tmp_path):
    out_dir, num_clips = tmp_path / E2E_VERSION, len(expected_tracks)
    procs = [start_export(pod_root, tmp_path), start_export(pod_root, tmp_path)]
    outs = [p.communicate(timeout=90)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert check_complete(out_dir, expected_tracks) == list(range(num_clips))
    written = [int(re.search(r"written (\d+)", out).group(1)) for out in outs]
    assert sum(written) == num_clips, outs
    assert folder_names(out_dir, num_clips)


class FlakySource:
    """Stands in for PointOdysseyDataset: clip 1 has too few valid points, clips 2 and 3 raise."""

    sequences: list = []
    skipped = ["seq9/anno.npz: not a readable .npz file"]
    unreadable = UnreadableMarks(["seq7"])

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> ClipSample:
        if index >= 2:
            raise RuntimeError(f"item {index}: unreadable frame")
        sample = make_sample(index, num_points=16, num_frames=8)
        sample.valids[:] = 1.0 if index == 0 else 0.0
        return sample


def test_export_counts_and_summarises_failures(tmp_path, monkeypatch, capsys):
    import export_mp4_dataset

    monkeypatch.setattr(export_mp4_dataset, "_dataset", lambda config: FlakySource())
    export_mp4_dataset.main(
        export_mp4_dataset.ExportConfig(
            **dict(E2E, crop_size=(H, W), dataset_location="unused", out_root=str(tmp_path))
        )
    )
    out = capsys.readouterr().out
    assert "written 1, skipped 0, failed 3" in out
    assert "unreadable sequences skipped: 1\n  seq9/anno.npz: not a readable .npz file\n" in out
    assert "failed      2: RuntimeError: item #: unreadable frame" in out
    assert "failed      1: too few valid points" in out
    assert [p.name for p in list_clips(tmp_path / export_version("e2e", 8, 16, (H, W)))] == ["000000"]


def test_a_selected_split_keeps_its_own_marks(tmp_path, caplog):
    out_dir = make_export(tmp_path, 5)
    (clip_dir(out_dir, 4) / "rgb.mp4").write_bytes(b"not a video")
    full = ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W))
    held_out = ExportDataset(str(tmp_path), VERSION, S=S, N=N, crop_size=(H, W))
    held_out.select(slice(3, None))
    assert [p.name for p in held_out.clips] == ["000003", "000004"]
    seed = int(round((held_out[1].rgbs[0, ..., 2].mean() - 20) / 10))
    assert seed == 3 and held_out.unreadable.found() == ["000004"] and full.unreadable.found() == []
    (clip_dir(out_dir, 3) / "track.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="no readable clip left"):
        held_out[0]
