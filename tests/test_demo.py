import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from demo import DemoConfig, load_queries, main
from tracking.outputs import drawn_frames
from utils.video import read_frames, video_info, write_video

REPO = Path(__file__).resolve().parents[1]
TINY = dict(S=8, iters=1, image_size=(64, 96), random_weights=True, device="cpu", runtime="torch")


def make_video(path: Path, T: int = 16, H: int = 96, W: int = 128) -> Path:
    yy, xx = np.mgrid[:H, :W]
    frames = [np.stack([(2 * xx + 3 * t) % 256, 2 * yy % 256, (xx + yy + 5 * t) % 256], -1) for t in range(T)]
    write_video(path, np.stack(frames).astype(np.uint8), fps=12)
    return path


def test_grid_run_writes_video_tracks_and_gifs(tmp_path, capsys) -> None:
    video = make_video(tmp_path / "walk.mp4")
    main(
        DemoConfig(
            filename=str(video), N=17, out_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"), **TINY
        )
    )
    info = video_info(tmp_path / "out" / "walk_tracks.mp4")
    assert (info.num_frames, info.height, info.width, info.fps) == (16, 96, 128, 12.0)
    saved = np.load(tmp_path / "out" / "walk_tracks.npz")
    assert saved["tracks"].shape == (16, 16, 2) and saved["queries"].shape == (16, 3)  # round(sqrt(17))^2
    assert float(saved["fps"]) == 12.0
    np.testing.assert_allclose(saved["tracks"][0], saved["queries"][:, 1:], atol=1e-4)
    drawn, plain = (
        read_frames(tmp_path / "out" / "walk_tracks.mp4", max_frames=1),
        read_frames(video, max_frames=1),
    )
    assert np.abs(drawn.astype(int) - plain).max() > 100  # the dots are there
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) == 1
    out = capsys.readouterr().out
    assert "tracked 16 points through 16 frames in" in out and "frames/s)" in out


def test_queries_at_a_middle_frame(tmp_path) -> None:
    video = make_video(tmp_path / "clip.mp4")
    (tmp_path / "q.txt").write_text("# t x y\n8 40 30\n8, 100.5, 80\n0 5 5\n")
    main(
        DemoConfig(
            filename=str(video), queries=str(tmp_path / "q.txt"), max_frames=12, out_dir=str(tmp_path), **TINY
        )
    )
    saved = np.load(tmp_path / "clip_tracks.npz")
    assert saved["tracks"].shape == (12, 3, 2)
    np.testing.assert_allclose(saved["tracks"][8, :2], [[40, 30], [100.5, 80]], atol=1e-4)
    np.testing.assert_allclose(saved["tracks"][0, 2], [5, 5], atol=1e-4)
    assert video_info(tmp_path / "clip_tracks.mp4").num_frames == 12


def test_drawing_in_chunks_equals_drawing_at_once(tmp_path) -> None:
    video = make_video(tmp_path / "clip.mp4", T=11, H=32, W=48)
    rng = np.random.default_rng(0)
    tracks = np.cumsum(rng.normal(0, 2, (11, 5, 2)), axis=0) + [24, 16]  # T,N,2 random walks
    colors = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    visible = rng.random((11, 5)) > 0.3  # T,N: hidden points drawn hollow
    whole = np.concatenate(
        list(drawn_frames(str(video), tracks, visible, colors, trail=4, radius=2, chunk=64))
    )
    chunked = list(drawn_frames(str(video), tracks, visible, colors, trail=4, radius=2, chunk=3))
    assert [len(c) for c in chunked] == [3, 3, 3, 2] and whole.shape == (11, 32, 48, 3)
    np.testing.assert_array_equal(np.concatenate(chunked), whole)
    assert np.abs(whole.astype(int) - read_frames(video)).max() > 100


def test_load_queries(tmp_path) -> None:
    rows = np.array([[0, 1.5, 2.0], [3, 4.0, 5.0]], np.float32)
    np.save(tmp_path / "q.npy", rows)
    np.testing.assert_array_equal(load_queries(tmp_path / "q.npy"), rows)
    (tmp_path / "one.txt").write_text("2,3.5,4\n")
    np.testing.assert_array_equal(load_queries(tmp_path / "one.txt"), [[2, 3.5, 4]])


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Case name -> (demo.py arguments, text its one-line error must contain)."""
    video = str(make_video(tmp / "ok.mp4", T=4, H=64, W=64))
    (tmp / "text.mp4").write_text("not a video")
    zero = tmp / "zero.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x64"]
        + ["-frames:v", "0", str(zero)],
        check=True,
    )
    (tmp / "outside.txt").write_text("0 64 10\n")
    (tmp / "late.txt").write_text("4 10 10\n")
    (tmp / "junk.txt").write_text("t x y\n")
    weights = ["--random_weights"]
    return {
        "missing": ([str(tmp / "nope.mp4")] + weights, f"no such video file or folder: {tmp / 'nope.mp4'}"),
        "unreadable": ([str(tmp / "text.mp4")] + weights, f"cannot read video {tmp / 'text.mp4'}"),
        "zero frames": ([str(zero)] + weights, str(zero)),
        "outside": ([video, "--queries", str(tmp / "outside.txt")] + weights, "lies outside the 64x64 frame"),
        "too late": ([video, "--queries", str(tmp / "late.txt")] + weights, "outside the video's 4 frames"),
        "junk": ([video, "--queries", str(tmp / "junk.txt")] + weights, "cannot read query file"),
        "checkpoint": ([video, "--init_dir", str(tmp / "ckpt")], "Run ./get_reference_model.sh"),
    }


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path) -> None:
    cases = _bad_inputs(tmp_path)
    runs = {
        name: subprocess.Popen(
            [sys.executable, "demo.py", "--filename", *args, "--out_dir", str(tmp_path / "out")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in cases.items()
    }
    for name, run in runs.items():
        _, err = run.communicate(timeout=120)
        assert run.returncode == 1, (name, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (name, err)
        assert cases[name][1] in err, (name, err)
    assert not (tmp_path / "out").exists()


def test_more_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="pass --filename"):
        main(DemoConfig())
    (tmp_path / "frames").mkdir()
    with pytest.raises(ValueError, match="no .jpg/.jpeg/.png images in folder"):
        main(DemoConfig(filename=str(tmp_path / "frames"), **TINY))
    np.save(tmp_path / "pairs.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"must hold rows of t,x,y; got an array of shape \(3, 2\)"):
        load_queries(tmp_path / "pairs.npy")
    with pytest.raises(ValueError, match="must be a .txt or .npy file"):
        load_queries(tmp_path / "q.csv")


def test_ctrl_c_while_tracking_keeps_the_frames_done(tmp_path) -> None:
    """SIGINT to the real demo once the tracking bar has passed 20 frames: the npz holds the tracks of the
    frames done (and their count), the mp4 plays with as many frames, and a line says so."""
    video = make_video(tmp_path / "long.mp4", T=240, H=64, W=96)
    cmd = [sys.executable, "demo.py", "--filename", str(video), "--N", "16", "--S", "8", "--iters", "1"]
    cmd += ["--runtime", "torch"]  # the tracker's loop is the same in onnxruntime; no export to wait for
    cmd += [
        "--image_size",
        "64,96",
        "--random_weights",
        "--device",
        "cpu",
        "--out_dir",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = b""
    while not re.search(rb"tracking: .*\| *(2\d|[3-9]\d|1\d\d)/239", seen):
        chunk = proc.stderr.read1(4096)
        assert chunk, seen.decode()[-2000:]
        seen += chunk
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"Traceback" not in err, (out + err).decode()[-3000:]
    saved = np.load(tmp_path / "out" / "long_tracks.npz")
    frames = int(saved["num_frames"])
    assert (
        20 <= frames < 240 and saved["tracks"].shape == (frames, 16, 2) and np.isfinite(saved["tracks"]).all()
    )
    assert f"interrupted: wrote the tracks of the first {frames} frames" in out.decode()
    assert len(read_frames(tmp_path / "out" / "long_tracks.mp4")) == frames
