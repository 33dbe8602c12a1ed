import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tracking.frames
from nets.pips2 import PipsOutput
from nets.tracker import track_from_first_frame
from tracking.frames import ArrayFrames, ImageFiles, VideoFileFrames, open_frames, resize_frames
from utils.video import VideoInfo, read_frames, write_video


def random_video(T: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)  # T,H,W,3


def test_bilinear_rule_is_torch_interpolate_and_cv2_rule_is_cv2_resize() -> None:
    video = random_video(5, 20, 30)
    window = ArrayFrames(video, image_size=(12, 16)).get(1, 4)  # 1,3,3,12,16
    ref = F.interpolate(torch.from_numpy(video[1:4]).permute(0, 3, 1, 2).float(), (12, 16), mode="bilinear")
    torch.testing.assert_close(window[0], ref, atol=0, rtol=0)
    window = ArrayFrames(torch.from_numpy(video), image_size=(12, 16), resize="cv2").get(1, 4)
    ref = np.stack([cv2.resize(f, (16, 12), interpolation=cv2.INTER_LINEAR) for f in video[1:4]])
    torch.testing.assert_close(window[0], torch.from_numpy(ref).permute(0, 3, 1, 2).float(), atol=0, rtol=0)
    assert window.dtype == torch.float32 and window.shape == (1, 3, 3, 12, 16)


def test_resize_rules_by_hand() -> None:
    # 2x2 frames, red 0|7 left to right and green 0|7 top to bottom, doubled: output pixel i samples the
    # source at (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped to the border), so the ramp reads
    # 0, 1.75, 5.25, 7; cv2.resize rounds it to uint8
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[:, 1, 0] = 7
    frame[1, :, 1] = 7
    video = np.stack([frame, frame * 0])  # T=2; the second frame stays black
    for resize, ramp in [("bilinear", [0, 1.75, 5.25, 7]), ("cv2", [0, 2, 5, 7])]:
        window = ArrayFrames(video, image_size=(4, 4), resize=resize).get(0, 2)  # 1,2,3,4,4
        ramp = torch.tensor(ramp, dtype=torch.float32)
        torch.testing.assert_close(window[0, 0, 0], ramp[None].expand(4, 4), atol=0, rtol=0)
        torch.testing.assert_close(window[0, 0, 1], ramp[:, None].expand(4, 4), atol=0, rtol=0)
        assert window[0, 0, 2].eq(0).all() and window[0, 1].eq(0).all()


def test_image_files_read_rgb_resized(tmp_path: Path) -> None:
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 200  # red
    paths = []
    for t in range(3):
        paths.append(tmp_path / f"{t}.png")
        cv2.imwrite(str(paths[-1]), rgb[..., ::-1])
    source = ImageFiles(paths, image_size=(5, 10), resize="cv2")
    assert (source.name, source.num_frames, source.height, source.width) == (str(tmp_path), 3, 10, 20)
    frames = source.get(1, 3)
    assert frames.shape == (1, 2, 3, 5, 10) and frames.dtype == torch.float32
    assert frames[0, :, 0].eq(200).all() and frames[0, :, 1:].eq(0).all()
    assert source.frames_read == 2
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ImageFiles([tmp_path / "missing.png"], image_size=(5, 10)).get(0, 1)
    with pytest.raises(ValueError, match="no image files given for clip"):
        ImageFiles([], name="clip")


def test_resize_frames_keeps_frames_of_the_size() -> None:
    rgbs = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(1, 2, 3, 4, 6)
    assert resize_frames(rgbs, (4, 6)) is rgbs
    half = resize_frames(rgbs, (2, 3))[0, 1]  # 3,2,3
    torch.testing.assert_close(half[0, 0, 0], rgbs[0, 1, 0, :2, :2].mean())  # a 2x2 box, no corners


def test_every_input_gives_the_same_frames(tmp_path: Path) -> None:
    video = random_video(6, 16, 24)
    folder = tmp_path / "frames"
    folder.mkdir()
    paths = []
    for t, frame in enumerate(video):
        paths.append(folder / f"{t:03d}.png")
        cv2.imwrite(str(paths[-1]), frame[..., ::-1])
    write_video(tmp_path / "clip.mp4", video, fps=5)
    decoded = read_frames(tmp_path / "clip.mp4")
    expected = torch.from_numpy(video).permute(0, 3, 1, 2).float()[None]  # 1,T,3,H,W
    for source in (
        open_frames(video),
        open_frames(torch.from_numpy(video)),
        open_frames(folder),
        open_frames(paths),
    ):
        assert (source.num_frames, source.height, source.width) == (6, 16, 24)
        torch.testing.assert_close(source.get(0, 6), expected, atol=0, rtol=0)
        assert source.frames_read == 6
    with open_frames(tmp_path / "clip.mp4", max_frames=4) as source:
        assert source.num_frames == 4 and isinstance(source, VideoFileFrames)
        torch.testing.assert_close(
            source.get(1, 4), torch.from_numpy(decoded[1:4]).permute(0, 3, 1, 2).float()[None]
        )
    assert open_frames(paths, max_frames=2).num_frames == 2


def test_images_of_another_size_are_named(tmp_path: Path) -> None:
    for t, (H, W) in enumerate([(8, 10), (8, 10), (9, 10)]):
        cv2.imwrite(str(tmp_path / f"{t}.png"), np.zeros((H, W, 3), np.uint8))
    source = ImageFiles(sorted(tmp_path.glob("*.png")))
    with pytest.raises(ValueError, match=r"image .*2\.png is 10x9, unlike the first image \(10x8\)"):
        source.get(0, 3)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        open_frames(np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="T,H,W,3"):
        open_frames(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="a path or a list of image paths, got int"):
        open_frames(3)
    with pytest.raises(ValueError, match="resize must be one of"):
        ArrayFrames(np.zeros((3, 8, 8, 3), np.uint8), resize="nearest")
    with pytest.raises(ValueError, match="max_frames must be at least 1"):
        open_frames(np.zeros((3, 8, 8, 3), np.uint8), max_frames=0)
    with pytest.raises(ValueError, match=r"frames \[2, 5\) are not among the 3"):
        open_frames(np.zeros((3, 8, 8, 3), np.uint8)).get(2, 5)


def test_a_cut_off_video_warns_and_gives_the_frames_it_has(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    write_video(tmp_path / "full.mp4", random_video(60, 48, 64), fps=10)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 5])
    decoded = read_frames(tmp_path / "cut.mp4")
    assert 5 < len(decoded) < 60
    with caplog.at_level(logging.WARNING), VideoFileFrames(tmp_path / "cut.mp4", cache=True) as source:
        assert source.num_frames == 60  # as announced
        window = source.get(0, 60)
        assert window.shape[1] == len(decoded) == source.num_frames
    assert f"announces 60 frames but only {len(decoded)} decode" in caplog.text and "cut.mp4" in caplog.text


def test_tracking_a_cut_off_video_from_frame_0_ends_with_its_last_decoded_frame(tmp_path: Path) -> None:
    write_video(tmp_path / "full.mp4", random_video(60, 32, 32), fps=10)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    decodable = len(read_frames(tmp_path / "cut.mp4"))
    starts = []

    def still(trajs_e0, rgbs, iters, feat_init):  # noqa: ANN001, ANN202
        starts.append(len(starts))
        return PipsOutput(trajs_e0, [trajs_e0], tuple(torch.zeros(*trajs_e0.shape[:3], 1) for _ in range(3)))

    with VideoFileFrames(tmp_path / "cut.mp4") as source:  # no cache: the last window is laid out again
        tracks = track_from_first_frame(still, source, torch.zeros(1, 2, 2), S=8, iters=1).tracks
    assert tracks.shape[1] == decodable == source.num_frames


def test_a_video_longer_than_announced_warns(tmp_path: Path, caplog, monkeypatch) -> None:  # noqa: ANN001
    write_video(tmp_path / "clip.mp4", random_video(12, 16, 16), fps=10)
    monkeypatch.setattr(tracking.frames, "video_info", lambda path: VideoInfo(10, 16, 16, 10.0))
    with caplog.at_level(logging.WARNING), VideoFileFrames(tmp_path / "clip.mp4") as source:
        assert source.get(4, 10).shape[1] == 6
    assert "announces 10 frames but more decode; only the first 10 are read" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), VideoFileFrames(tmp_path / "clip.mp4", max_frames=5) as source:
        source.get(0, 5)  # a limit of the caller's: no warning
    assert not caplog.text


def test_backward_windows_read_the_cache_not_the_decoder(tmp_path: Path) -> None:
    video = random_video(20, 16, 16)
    write_video(tmp_path / "clip.mp4", video, fps=10)
    decoded = torch.from_numpy(read_frames(tmp_path / "clip.mp4")).permute(0, 3, 1, 2).float()[None]
    with VideoFileFrames(tmp_path / "clip.mp4", cache=True) as source:
        for start in range(15, -1, -5):  # windows going back in time, as a backward pass asks for them
            torch.testing.assert_close(source.get(start, start + 5), decoded[:, start : start + 5])
        assert source.frames_read == 20  # each frame decoded once
        assert len(source._held) <= 5  # memory: the current window only


def test_sources_report_what_they_read(tmp_path: Path) -> None:
    video = random_video(5, 6, 8)
    source = ArrayFrames(torch.from_numpy(video), image_size=(3, 4), resize="cv2")
    assert (source.name, source.num_frames, source.height, source.width) == ("array", 5, 6, 8)
    assert source.image_size == (3, 4) and source.device == torch.device("cpu") and source.resize == "cv2"
    assert source.get(1, 3).shape == (1, 2, 3, 3, 4) and source.get(4, 5).shape == (1, 1, 3, 3, 4)
    assert source.frames_read == 3 and source.read_seconds > 0
    for start, end in [(-1, 2), (2, 2), (3, 1), (0, 6)]:
        with pytest.raises(ValueError, match=rf"frames \[{start}, {end}\) are not among the 5 of array"):
            source.get(start, end)
    same = ArrayFrames(video)  # no image_size: the video's own
    assert same.image_size == (6, 8)
    torch.testing.assert_close(same.get(0, 5)[0], torch.from_numpy(video).permute(0, 3, 1, 2).float())
    for bad in [(0, 4), (4,), [4, 4.0], "4,4", (True, 4)]:
        with pytest.raises(ValueError, match="image_size must be two positive integers H,W"):
            ArrayFrames(video, image_size=bad)
    with pytest.raises(
        ValueError, match="at least one frame of uint8 RGB, got ndarray of shape \\(0, 6, 8, 3\\)"
    ):
        ArrayFrames(video[:0])
    with pytest.raises(
        ValueError, match="T,H,W,3 \\(numpy or torch\\) or a path, got ndarray of shape \\(5, 6, 8\\)"
    ):
        ArrayFrames(video[..., 0])


def test_open_frames_picks_the_source(tmp_path: Path) -> None:
    video = random_video(4, 8, 10)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in (3, 1, 0, 2):  # written out of order: read sorted by name
        cv2.imwrite(str(folder / f"{t:02d}.png"), video[t][..., ::-1])
    (folder / "notes.txt").write_text("not a frame")
    source = open_frames(folder, (4, 5), max_frames=3, resize="cv2")
    assert isinstance(source, ImageFiles) and source.name == str(folder) and source.num_frames == 3
    assert (source.image_size, source.resize) == ((4, 5), "cv2")
    expected = np.stack([cv2.resize(f, (5, 4), interpolation=cv2.INTER_LINEAR) for f in video[:3]])
    torch.testing.assert_close(source.get(0, 3)[0], torch.from_numpy(expected).permute(0, 3, 1, 2).float())
    listed = open_frames([str(p) for p in sorted(folder.glob("*.png"))][::-1], max_frames=2)
    assert isinstance(listed, ImageFiles) and listed.num_frames == 2 and listed.name == str(folder)
    torch.testing.assert_close(listed.get(0, 1)[0, 0], torch.from_numpy(video[3]).permute(2, 0, 1).float())
    write_video(tmp_path / "clip.mp4", video, fps=4)
    with open_frames(tmp_path / "clip.mp4", cache=True) as source:
        assert (
            isinstance(source, VideoFileFrames)
            and source.cache
            and source.num_frames == 4
            and source.fps == 4
        )
    assert not open_frames(str(tmp_path / "clip.mp4")).cache
    assert open_frames(torch.from_numpy(video), max_frames=3).num_frames == 3
    with pytest.raises(ValueError, match="got list"):
        open_frames([1, 2])
    with pytest.raises(ValueError, match="got list"):
        open_frames([])
    with pytest.raises(ValueError, match="max_frames must be at least 1, got 0"):
        VideoFileFrames(tmp_path / "clip.mp4", max_frames=0)


def test_a_closed_video_reads_again_from_the_start(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", random_video(10, 16, 16), fps=10)
    decoded = torch.from_numpy(read_frames(tmp_path / "clip.mp4")).permute(0, 3, 1, 2).float()[None]
    source = VideoFileFrames(tmp_path / "clip.mp4")
    torch.testing.assert_close(source.get(6, 10), decoded[:, 6:10])
    source.close()
    torch.testing.assert_close(source.get(0, 3), decoded[:, :3])  # a fresh decoder
    assert source.frames_read == 13
    source.close()
    source.close()  # closing twice is fine


def test_sources_start_without_a_cache_and_count_every_read(tmp_path: Path) -> None:
    video = random_video(3, 6, 8)
    assert ArrayFrames(video).cache is False
    paths = []
    for t, frame in enumerate(video):
        paths.append(tmp_path / f"{t}.png")
        cv2.imwrite(str(paths[-1]), frame[..., ::-1])
    source = open_frames(paths, (4, 5), resize="cv2")
    assert source.cache is False and (source.image_size, source.resize) == ((4, 5), "cv2")
    source.get(0, 2)
    source.get(2, 3)
    assert source.frames_read == 3
    single = ImageFiles(paths[:1])
    assert single.name == str(tmp_path) and single.num_frames == 1
    with pytest.raises(ValueError, match="^no image files given for a video$"):
        ImageFiles([])


def test_sizes_and_frame_limits_at_their_smallest(tmp_path: Path) -> None:
    tracking.frames.check_size((1, 1))
    with pytest.raises(ValueError, match=r"^image_size must be two positive integers H,W, got 5$"):
        tracking.frames.check_size(5)
    video = random_video(4, 6, 8)
    assert open_frames(video, max_frames=1).num_frames == 1
    write_video(tmp_path / "clip.mp4", video, fps=4)
    with VideoFileFrames(tmp_path / "clip.mp4", max_frames=1) as source:
        assert source.num_frames == 1 and source.name == str(tmp_path / "clip.mp4")
        assert source.get(0, 1).shape == (1, 1, 3, 6, 8)


def test_a_window_past_the_decodable_frames_is_empty(tmp_path: Path, caplog, monkeypatch) -> None:
    # the container announces 20 frames, 12 decode
    path = tmp_path / "clip.mp4"
    write_video(path, random_video(12, 16, 16), fps=10)
    monkeypatch.setattr(tracking.frames, "video_info", lambda path: VideoInfo(20, 16, 16, 10.0))
    with caplog.at_level(logging.WARNING), VideoFileFrames(path, image_size=(8, 12)) as source:
        window = source.get(15, 20)
        assert window.shape == (1, 0, 3, 8, 12) and window.dtype == torch.float32
        assert source.num_frames == 12
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: the container announces 20 frames but only 12 decode; the tracks cover 12 frames"
    ]
    with VideoFileFrames(path, image_size=(8, 12)) as source:
        assert source.get(12, 20).shape == (1, 0, 3, 8, 12)
        # frame 11 was decoded on the way and dropped: only the frames from a window's start on are held
        message = "frame 11 was read and dropped; open it with cache=True to read windows backward$"
        with pytest.raises(ValueError, match=message):
            source.get(11, 12)


def test_a_longer_video_is_reported_once_even_at_the_callers_limit(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    # the container announces 10 frames, 13 decode
    write_video(tmp_path / "clip.mp4", random_video(13, 16, 16), fps=10)
    monkeypatch.setattr(tracking.frames, "video_info", lambda path: VideoInfo(10, 16, 16, 10.0))
    with caplog.at_level(logging.WARNING), VideoFileFrames(tmp_path / "clip.mp4", max_frames=10) as source:
        source.get(4, 10)
        source.get(8, 10)  # the last window again
    announced = "the container announces 10 frames but more decode; only the first 10 are read"
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'clip.mp4'}: {announced}"]


def test_a_single_frame_comes_back_from_the_cache(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", random_video(16, 16, 16), fps=10)
    decoded = torch.from_numpy(read_frames(tmp_path / "clip.mp4")).permute(0, 3, 1, 2).float()[None]
    with VideoFileFrames(tmp_path / "clip.mp4", cache=True) as source:
        source.get(10, 15)
        torch.testing.assert_close(source.get(2, 3), decoded[:, 2:3], atol=0, rtol=0)
        assert source.frames_read == 15
