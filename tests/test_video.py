import imageio.v3 as iio
import numpy as np
import pytest

from utils.video import VideoInfo, VideoWriter, read_frames, read_video, video_info, write_gif, write_video


def _clip(T: int = 12, H: int = 48, W: int = 64) -> np.ndarray:
    """Smooth frames (easy on H.264) whose brightness encodes the frame index."""
    yy, xx = np.mgrid[:H, :W]
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    for t in range(T):
        frames[t, ..., 0] = 40 + 15 * t
        frames[t, ..., 1] = 60 + 2 * xx
        frames[t, ..., 2] = 60 + 2 * yy
    return frames


def _frame_indices(frames: np.ndarray) -> list[int]:
    return [round((float(f[..., 0].mean()) - 40) / 15) for f in frames]


def test_mp4_round_trip(tmp_path):
    frames = _clip()
    path = tmp_path / "clip.mp4"
    assert write_video(path, frames, fps=24) == 12
    assert video_info(path) == VideoInfo(num_frames=12, height=48, width=64, fps=24.0)
    back = read_frames(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 2.0
    assert _frame_indices(back) == list(range(12))


def test_streaming_writer_to_a_temporary_name(tmp_path):
    frames = _clip(T=5)
    path = tmp_path / "rgb.mp4.tmp"
    with VideoWriter(path, fps=10, format="mp4") as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.num_frames == 5
    with pytest.raises(ValueError, match="is closed"):
        writer.write(frames[0])
    assert path.read_bytes()[4:8] == b"ftyp"  # an mp4 container despite the name
    final = path.rename(tmp_path / "rgb.mp4")
    assert video_info(final).fps == 10.0
    assert _frame_indices(read_frames(final)) == list(range(5))


def test_start_max_frames_stride(tmp_path):
    path = tmp_path / "clip.mkv"
    write_video(path, _clip())
    assert _frame_indices(read_frames(path, start=2, max_frames=3, stride=4)) == [2, 6, 10]
    assert _frame_indices(read_frames(path, start=9, stride=2)) == [9, 11]
    assert _frame_indices(read_frames(path, max_frames=2)) == [0, 1]
    stream = read_video(path, start=1)
    assert _frame_indices([next(stream)]) == [1]
    stream.close()
    with pytest.raises(ValueError, match="no frames selected"):
        read_frames(path, start=12)
    with pytest.raises(ValueError, match="stride >= 1"):
        read_video(path, stride=0)


def test_folder_of_images(tmp_path):
    frames = _clip(T=4, H=9, W=11)  # odd sizes are fine for images
    for t, frame in enumerate(frames):
        iio.imwrite(tmp_path / f"{t:03d}.png", frame)
    (tmp_path / "notes.txt").write_text("not a frame")
    assert video_info(tmp_path) == VideoInfo(num_frames=4, height=9, width=11, fps=None)
    np.testing.assert_array_equal(read_frames(tmp_path), frames)  # png is lossless
    np.testing.assert_array_equal(read_frames(tmp_path, start=1, stride=2), frames[1::2])

    iio.imwrite(tmp_path / "004.png", frames[0, :5])
    with pytest.raises(ValueError, match="004.png has shape"):
        read_frames(tmp_path)


def test_gif_round_trip_keeps_every_frame(tmp_path):
    frames = _clip(T=6, H=31, W=45)
    path = tmp_path / "anim.gif"
    assert write_gif(path, frames, fps=5) == 6
    info = video_info(path)
    assert (info.num_frames, info.height, info.width) == (6, 31, 45)
    assert info.fps == pytest.approx(5.0)
    back = read_frames(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4.0
    assert _frame_indices(back) == list(range(6))


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        video_info(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        VideoWriter(tmp_path / "no_such_dir" / "out.mp4")


def test_unreadable_inputs(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"definitely not a video" * 20)
    with pytest.raises(ValueError, match="garbage.mp4"):
        read_frames(garbage)
    with pytest.raises(ValueError, match="garbage.mp4"):
        video_info(garbage)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .*images in folder .*empty"):
        read_video(empty)


def test_writer_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="even frame size; got 33x64"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 33, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="H,W,3 uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 32, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="differs from the first"):
        write_video(
            tmp_path / "mixed.mp4", [np.zeros((32, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
        )
    with pytest.raises(ValueError, match="no frames were written"):
        write_video(tmp_path / "none.mp4", [])
    with pytest.raises(ValueError, match="format 'tmp'"):
        VideoWriter(tmp_path / "out.tmp")


def test_ffmpeg_failure_is_reported_with_its_reason(tmp_path):
    target = tmp_path / "taken.mp4"
    target.mkdir()  # ffmpeg cannot open a folder as its output
    with pytest.raises(OSError, match="taken.mp4.*Is a directory"):
        write_video(target, np.zeros((3, 32, 32, 3), dtype=np.uint8))
