"""bench/cpu_backends.py: one row per backend, eager first as the reference; a backend that cannot run here
is a row that says why, and the others still run."""

import bench.cpu_backends
from bench.cpu_backends import cpu_backend_rows, table


def test_rows_compare_with_eager_and_keep_failures(monkeypatch) -> None:
    def no_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter unavailable\nsecond line")

    monkeypatch.setattr(bench.cpu_backends, "export_window", no_export)
    rows = cpu_backend_rows(image_size=(64, 96), S=3, N=4, iters=1, repeats=1, compile=False, video_frames=9)
    assert [row["backend"] for row in rows] == [
        "PyTorch eager float32",
        "onnxruntime float32",
        "onnxruntime int8 (dynamic)",
    ]
    eager = rows[0]
    assert eager["speedup"] == 1.0 and eager["max_diff_px"] == 0.0 and eager["agrees"]
    assert eager["setting"].startswith("64x96, S=3, N=4, 1 iterations")
    assert abs(eager["video_s"] - eager["first_call_s"] - 3 * eager["window_s"]) < 0.1  # 4 windows
    for row in rows[1:]:
        assert (
            row["note"] == "failed: RuntimeError: exporter unavailable second line" and "window_s" not in row
        )
    assert "failed: RuntimeError" in table(rows).get_string()
