"""bench/online.py with a stand-in model: the rows it reports hold what they name."""

import numpy as np

from bench.online import flatness_rows, online_rows
from tests.test_online import ShiftModel, stamped_frame
from tracking import PipsTracker


def test_speed_rows_compare_offline_online_and_provisional() -> None:
    video = np.stack([stamped_frame(t) for t in range(11)])
    tracker = PipsTracker(ShiftModel(), S=4, iters=1, image_size=(64, 64))
    rows = online_rows(video, points=4, provisional=(3,), tracker=tracker)
    assert [r["mode"] for r in rows] == ["offline", "online", "online+provisional 3"]
    assert [r["latency_frames"] for r in rows] == [10, 3, 0]
    assert all(r["frames"] == 11 and r["points"] == 4 and r["fps"] > 0 and r["latency_ms"] > 0 for r in rows)
    # the stand-in's estimates are its final tracks (a point moves 1 px per frame whatever the window)
    assert rows[2]["provisional_px_max"] == rows[2]["final_vs_no_provisional_px"] == 0


def test_flatness_rows_per_block() -> None:
    tracker = PipsTracker(ShiftModel(), S=4, iters=1, image_size=(64, 64))
    rows = flatness_rows(frames=30, block=10, points=4, tracker=tracker)
    assert [r["frames"] for r in rows] == [10, 20, 30]
    assert all(r["frames_held_max"] == 4 and r["ms_per_frame"] > 0 and r["rss_mib"] > 0 for r in rows)
