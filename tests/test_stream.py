"""Streams tracked as they arrive (tracking/stream.py, demo.py --online): the files equal the offline demo's,
and a stalled stream, a frame of another size, a camera that cannot be opened or Ctrl-C end the stream with
what was received written."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from demo import DemoConfig, main
from tests.test_demo import TINY, make_video
from tests.test_online import ShiftModel, stamped_frame
from tracking import PipsTracker
from tracking.online import OnlineTracker
from tracking.stream import FrameStream, StreamRecorder, open_stream, track_stream
from utils.video import read_frames, video_info

REPO = Path(__file__).resolve().parents[1]


class FakeCapture:
    """A capture that delivers `frames` (RGB, handed out as BGR as OpenCV does), then fails a read ("fail"),
    or blocks until released ("stall")."""

    def __init__(self, frames: list[np.ndarray], then: str = "fail") -> None:
        self.frames, self.then = list(frames), then
        self.released = threading.Event()

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.frames:
            return True, self.frames.pop(0)[..., ::-1].copy()
        if self.then == "stall":
            self.released.wait()
        return False, None

    def release(self) -> None:
        self.released.set()


def recorder(tmp_path: Path) -> StreamRecorder:
    return StreamRecorder(tmp_path / "s_tracks.mp4", tmp_path / "s_tracks.npz", fps=10.0, trail=2)


def stub_online(S: int = 4) -> OnlineTracker:
    return OnlineTracker(PipsTracker(ShiftModel(), S=S, iters=1, image_size=(48, 64)))


def written(tmp_path: Path) -> tuple[int, np.ndarray]:
    """The mp4's frame count and the npz's tracks."""
    return video_info(tmp_path / "s_tracks.mp4").num_frames, np.load(tmp_path / "s_tracks.npz")["tracks"]


def test_online_demo_writes_the_offline_tracks(tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", T=12, H=96, W=128)
    (tmp_path / "q.txt").write_text("0 10 10\n5 40 30\n0 100.5 80\n9 60 50\n")
    flags = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    args = ["--online", "--filename", str(video), "--queries", str(tmp_path / "q.txt"), "--out_dir", "on"]
    command = [sys.executable, str(REPO / "demo.py"), *args, *flags]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "the stream ended: tracked 4 points through 12 frames" in proc.stdout
    main(
        DemoConfig(
            filename=str(video), queries=str(tmp_path / "q.txt"), out_dir=str(tmp_path / "off"), **TINY
        )
    )
    streamed, offline = (
        np.load(tmp_path / "on" / "clip_tracks.npz"),
        np.load(tmp_path / "off" / "clip_tracks.npz"),
    )
    np.testing.assert_array_equal(streamed["queries"], offline["queries"])
    assert float(streamed["fps"]) == float(offline["fps"]) == 12.0
    after = np.arange(12)[:, None] >= streamed["queries"][:, 0]  # T,N: from each point's frame on
    assert streamed["tracks"].shape == (12, 4, 2) and np.isnan(streamed["tracks"][~after]).all()
    np.testing.assert_allclose(streamed["tracks"][after], offline["tracks"][after], atol=1e-4, rtol=0)
    info = video_info(tmp_path / "on" / "clip_tracks.mp4")
    assert (info.num_frames, info.height, info.width) == (12, 96, 128)
    drawn = read_frames(tmp_path / "on" / "clip_tracks.mp4", max_frames=1)
    assert np.abs(drawn.astype(int) - read_frames(video, max_frames=1)).max() > 100  # the dots are there


def test_a_stalled_stream_ends_with_one_line_and_keeps_its_frames(tmp_path: Path) -> None:
    frames = [stamped_frame(t, 48, 64) for t in range(7)]
    stream = FrameStream(FakeCapture(frames, then="stall"), "camera 5", camera=True, stall_seconds=0.3)
    message = (
        r"^camera 5 delivered no frame for 0.3 s after 7 frames; the 7 frames before it are in .*s_tracks"
    )
    with pytest.raises(OSError, match=message):
        track_stream(stream, stub_online(), recorder(tmp_path), grid_size=2)
    stream.close()
    count, tracks = written(tmp_path)
    assert count == 7 and tracks.shape == (7, 4, 2)
    np.testing.assert_array_equal(tracks[:, 0, 0] - tracks[0, 0, 0], np.arange(7))  # +1 px per frame


def test_a_camera_that_stops_or_cannot_be_opened_is_named(tmp_path: Path) -> None:
    stream = FrameStream(FakeCapture([stamped_frame(t, 48, 64) for t in range(3)]), "camera 2", camera=True)
    with pytest.raises(OSError, match="^camera 2 stopped delivering frames after 3 frames; the 3 frames"):
        track_stream(stream, stub_online(), recorder(tmp_path), grid_size=1)
    assert written(tmp_path)[0] == 3
    with pytest.raises(OSError, match="^cannot open camera 57$"):
        open_stream("57")
    with pytest.raises(FileNotFoundError, match="no such video file: .*nothing.mp4"):
        open_stream(str(tmp_path / "nothing.mp4"))
    with pytest.raises(OSError, match="^cannot open camera 57$"):
        main(DemoConfig(online=True, filename="57", out_dir=str(tmp_path / "out"), N=16, **TINY))
    assert not (tmp_path / "out").exists()


def test_a_frame_of_another_size_ends_the_stream_and_keeps_the_frames_before(tmp_path: Path) -> None:
    frames = [stamped_frame(t, 48, 64) for t in range(6)] + [stamped_frame(6, 32, 32)]
    stream = FrameStream(FakeCapture(frames), "video file x.mp4")
    with pytest.raises(
        ValueError, match=r"^frame 6 is 32x32, unlike the stream's first frame \(64x48\); the 6"
    ):
        track_stream(stream, stub_online(), recorder(tmp_path), queries=np.array([[0, 5.0, 6.0], [2, 7, 8]]))
    count, tracks = written(tmp_path)
    assert count == 6 and tracks.shape == (6, 2, 2) and np.isnan(tracks[:2, 1]).all()
    np.testing.assert_array_equal(tracks[2:, 1], [[7 + t, 8] for t in range(4)])


def test_ctrl_c_ends_the_stream_after_the_frame_under_way(tmp_path: Path) -> None:
    def frames():
        for t in range(20):
            if t == 9:
                signal.raise_signal(signal.SIGINT)
            yield stamped_frame(t, 48, 64)

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    summary = track_stream(frames(), stub_online(), recorder(tmp_path), grid_size=1)
    assert summary.interrupted and summary.frames == 10
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    count, tracks = written(tmp_path)
    assert count == 10 and tracks.shape == (10, 1, 2)


def test_the_mp4_writer_outlives_a_terminal_ctrl_c(tmp_path: Path) -> None:
    # a terminal sends Ctrl-C to its whole foreground process group, ffmpeg included
    script = (
        "import os, signal, time\n"
        "import numpy as np\n"
        "from utils.video import VideoWriter\n"
        f"writer = VideoWriter({str(tmp_path / 'out.mp4')!r}, fps=10)\n"
        "try:\n"
        "    for t in range(5):\n"
        "        writer.write(np.full((32, 48, 3), 40 * t, np.uint8))\n"
        "    os.killpg(0, signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    writer.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", script]
    proc = subprocess.run(
        command, env=env, start_new_session=True, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_frames(tmp_path / "out.mp4")) == 5
