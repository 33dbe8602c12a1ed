import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.crohd import CroHD, hold_while_occluded, read_labels
from datasets.sample import UnreadableSequence
from datasets.tapvid import TapVidDavis


def write_pickle(folder: Path, data: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tapvid_davis.pkl", "wb") as f:
        pickle.dump(data, f)


def tapvid_entry(T: int = 3, H: int = 5, W: int = 9) -> dict:
    points = np.array([[[0.0, 0.0]] * T, [[1.0, 1.0]] * T, [[0.5, 0.25]] * T], np.float32)  # N,T,2
    occluded = np.array([[False] * T, [True] + [False] * (T - 1), [False, True] + [False] * (T - 2)])
    return {"video": np.zeros((T, H, W, 3), np.uint8), "points": points, "occluded": occluded}


def test_tapvid_coordinates_visibility_and_frame0_filter(tmp_path: Path) -> None:
    write_pickle(tmp_path, {"bear": tapvid_entry(), "cows": tapvid_entry(T=4)})
    data = TapVidDavis(tmp_path)
    assert len(data) == 2
    clip = data[0]
    assert clip.name == "bear" and clip.image_hw == (5, 9)
    assert clip.trajs.shape == (3, 3, 2) and clip.trajs.dtype == np.float32
    # x * (W-1), y * (H-1): 1.0 lies on the last pixel centre
    np.testing.assert_array_equal(clip.trajs[0], [[0, 0], [8, 4], [4, 1]])
    np.testing.assert_array_equal(clip.visibs, [[1, 0, 1], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(clip.valids, clip.visibs)  # the frame-0 protocol queries valids[0] > 0
    assert data[1].trajs.shape == (4, 3, 2)


def test_tapvid_list_pickle_is_named_by_index(tmp_path: Path) -> None:
    write_pickle(tmp_path, [tapvid_entry(), tapvid_entry()])
    assert [TapVidDavis(tmp_path)[i].name for i in range(2)] == ["000", "001"]


def test_tapvid_errors_name_the_file_or_video(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tapvid_davis.pkl"):
        TapVidDavis(tmp_path)
    bad = tapvid_entry()
    bad["occluded"] = bad["occluded"][:, :2]
    write_pickle(tmp_path, {"bear": bad, "cows": tapvid_entry(), "dog": {"video": None}})
    data = TapVidDavis(tmp_path)
    assert len(data) == 1 and data[0].name == "cows"
    assert data.skipped[0].endswith(
        "video 'bear' needs points N,3,2 and occluded N,3, got (3, 3, 2) and (3, 2)"
    )
    assert data.skipped[1].endswith("video 'dog' needs the keys 'video', 'points' and 'occluded'")
    write_pickle(tmp_path, {"bear": bad})
    with pytest.raises(ValueError, match="tapvid_davis.pkl: no readable video .1 skipped."):
        TapVidDavis(tmp_path)
    pkl = tmp_path / "tapvid_davis.pkl"
    pkl.write_bytes(pkl.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read .*tapvid_davis.pkl: truncated or not a pickle"):
        TapVidDavis(tmp_path)


# CroHD: frames of H x W = 200 x 300; BORDER = 32 keeps centres in [32, 268] x [32, 168]
H, W = 200, 300


def box_row(frame: int, head: int, cx: float, cy: float, vis: float = 1.0) -> str:
    """A gt.txt row (1-based frame and id) for a 10x10 box centred at (cx, cy)."""
    return f"{frame},{head},{cx - 5},{cy - 5},10,10,1,1,{vis}"


def make_ht21(root: Path, rows: list[str], num_images: int, name: str = "HT21-01") -> Path:
    seq = root / "HT21" / "train" / name
    (seq / "gt").mkdir(parents=True)
    (seq / "img1").mkdir()
    (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    for t in range(1, num_images + 1):
        cv2.imwrite(str(seq / "img1" / f"{t:06d}.jpg"), np.full((H, W, 3), 128, np.uint8))
    return seq


def heads_rows(T: int) -> list[str]:
    rows = []
    for t in range(T):
        f = t + 1
        rows.append(box_row(f, 1, 50 + 40 * t, 100))  # 1: moves 40 px/frame -> kept
        rows.append(box_row(f, 2, 20 + 40 * t, 100))  # 2: centre x = 20 < 32 at frame 0 -> dropped
        rows.append(box_row(f, 3, 100 + t, 100))  # 3: path 1 px/frame, too short -> dropped
        rows.append(
            box_row(f, 4, 50 + 40 * t, 120, vis=0.0 if t == 1 else 1.0)
        )  # 4: occluded at 1 -> dropped
        if t != 1:
            rows.append(box_row(f, 5, 50 + 40 * t, 140))  # 5: unlabelled at frame 1 -> dropped
        # 6: moves, labelled but occluded at frames 3 and 4 -> kept, gt held at frame 2's position
        rows.append(box_row(f, 6, 60 + 40 * t, 60, vis=0.0 if t in (3, 4) else 1.0))
        if t != 2:  # 7: static but unlabelled at frame 2: the jumps to (0, 0) count as motion (official)
            rows.append(box_row(f, 7, 150, 150))
    return rows


def test_crohd_head_filters_and_held_positions(tmp_path: Path) -> None:
    make_ht21(tmp_path, heads_rows(6), num_images=6)
    data = CroHD(tmp_path, S=6, S_min=6)
    assert len(data) == 1
    clip = data[0]
    assert clip.name == "HT21-01_000000_000006" and clip.image_hw == (H, W)
    assert clip.frames[0].name == "000001.jpg" and len(clip.frames) == 6
    # kept, in id order: heads 1, 6, 7
    np.testing.assert_array_equal(clip.trajs[0], [[50, 100], [60, 60], [150, 150]])
    np.testing.assert_array_equal(clip.trajs[:, 0, 0], 50 + 40 * np.arange(6))
    np.testing.assert_array_equal(clip.valids[:, 0], np.ones(6))
    # head 6: occluded frames 3, 4 stay valid and hold frame 2's position; frame 5 is its own again
    np.testing.assert_array_equal(clip.visibs[:, 1], [1, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(clip.valids[:, 1], np.ones(6))
    np.testing.assert_array_equal(clip.trajs[:, 1, 0], [60, 100, 140, 140, 140, 260])
    # head 7: unlabelled frame 2 is neither valid nor visible; its gt holds the previous position
    np.testing.assert_array_equal(clip.valids[:, 2], [1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(clip.trajs[:, 2], np.full((6, 2), 150.0))
    assert clip.trajs.dtype == np.float32 and clip.visibs.shape == clip.valids.shape == (6, 3)


def test_crohd_without_holding_keeps_annotated_positions(tmp_path: Path) -> None:
    make_ht21(tmp_path, heads_rows(6), num_images=6)
    clip = CroHD(tmp_path, S=6, S_min=6, hold_occluded=False)[0]
    np.testing.assert_array_equal(clip.trajs[:, 1, 0], 60 + 40 * np.arange(6))
    np.testing.assert_array_equal(clip.trajs[2, 2], [0, 0])


def test_crohd_border_uses_the_image_size(tmp_path: Path) -> None:
    # inside: x <= W - 32 and y >= 32; frame 3 moves head 1 to x = W - 31 and head 2 to y = 31.5
    rows = [box_row(1, 1, W - 32, 50), box_row(2, 1, W - 32, 150), box_row(3, 1, W - 31, 50)]
    rows += [box_row(1, 2, 50, 32), box_row(2, 2, 200, 32), box_row(3, 2, 50, 31.5)]
    make_ht21(tmp_path, rows, num_images=3)
    clip = CroHD(tmp_path, S=3, S_min=2)[0]
    np.testing.assert_array_equal(clip.valids, [[1, 1], [1, 1], [0, 0]])
    np.testing.assert_array_equal(clip.visibs, [[1, 1], [1, 1], [0, 0]])


def test_crohd_clips_every_half_length(tmp_path: Path) -> None:
    make_ht21(tmp_path, [box_row(13, 1, 100, 100)], num_images=1)
    make_ht21(tmp_path, [box_row(7, 1, 100, 100)], num_images=1, name="HT21-02")
    data = CroHD(tmp_path, S=10, S_min=4)
    # HT21-01: 13 frames -> [0, 10), [5, 13); [10, 13) is too short
    # HT21-02: 7 frames -> [0, 7); [5, 7) is too short
    assert [(seq.name, s, e) for seq, s, e in data.clips] == [
        ("HT21-01", 0, 10),
        ("HT21-01", 5, 13),
        ("HT21-02", 0, 7),
    ]


def test_crohd_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="HT21/train"):
        CroHD(tmp_path)
    seq = make_ht21(tmp_path, ["1,1,2,3"], num_images=1)
    with pytest.raises(ValueError, match="gt.txt: expected rows of 9"):
        read_labels(seq / "gt" / "gt.txt")
    with pytest.raises(ValueError, match="need 2 <= S_min <= S"):
        CroHD(tmp_path, S=100, S_min=200)
    with pytest.raises(ValueError, match="no readable CroHD sequence .* .1 skipped."):
        CroHD(tmp_path)


def test_crohd_unreadable_sequences_are_left_out_or_raise(tmp_path: Path) -> None:
    make_ht21(tmp_path, heads_rows(6), num_images=6)
    make_ht21(tmp_path, heads_rows(6), num_images=6, name="HT21-02")
    make_ht21(tmp_path, heads_rows(6), num_images=6, name="HT21-03")
    labels = tmp_path / "HT21" / "train" / "HT21-02" / "gt" / "gt.txt"
    labels.write_bytes(b"\x89PNG not labels")
    data = CroHD(tmp_path, S=6, S_min=6)
    assert [seq.name for seq in data.sequences] == ["HT21-01", "HT21-03"]
    (message,) = data.skipped
    assert message.startswith(f"{labels}: cannot read the labels")
    (tmp_path / "HT21" / "train" / "HT21-03" / "img1" / "000001.jpg").write_bytes(b"")
    assert data[0].name == "HT21-01_000000_000006"
    with pytest.raises(UnreadableSequence, match="clip HT21-03 0-6: cannot read image .*000001.jpg"):
        data[1]


def test_hold_while_occluded_takes_the_last_visible_position() -> None:
    trajs = np.arange(10, dtype=np.float32).reshape(5, 1, 2).repeat(2, axis=1)  # 5,2,2
    visibs = np.array([[1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], np.float32)
    held = hold_while_occluded(trajs, visibs)
    np.testing.assert_array_equal(held[:, 0, 0], [0, 0, 0, 6, 6])
    np.testing.assert_array_equal(held[:, 1, 0], [0, 2, 2, 2, 8])
