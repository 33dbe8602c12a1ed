import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import benchmark
from bench import agreement, isolation, measure, paths, report, timing, videos, workloads
from bench.paths import PathOptions
from bench.workloads import Workload
from datasets.sample import collate_clips
from datasets.synthetic import SyntheticClips
from nets.pips2 import Pips, frames_to_rgbs
from utils import checkpoint
from utils.config import UsageError
from utils.metrics import compute_pips_metrics

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TINY = ["--S", "2", "--N", "4", "--H", "64", "--W", "64", "--iters", "1", "--device", "cpu"]


def conv_flops(c_in: int, c_out: int, k: int, pixels: int) -> int:
    return 2 * c_in * c_out * k * k * pixels


def hand_flops(B: int, S: int, N: int, H: int, W: int, iters: int) -> int:
    """Convolutions of the encoder per frame, the delta block per point and frame, the correlation dot
    products (3 templates x 4 levels x an 8x8 window of 128 channels) and the final linear layer."""
    p2, p4, p8, p16 = (H // 2) * (W // 2), (H // 4) * (W // 4), (H // 8) * (W // 8), (H // 16) * (W // 16)
    encoder = conv_flops(3, 64, 7, p2) + 4 * conv_flops(64, 64, 3, p2)
    for c_in, c, p in ((64, 96, p4), (96, 128, p8), (128, 128, p16)):
        encoder += conv_flops(c_in, c, 3, p) + 3 * conv_flops(c, c, 3, p) + conv_flops(c_in, c, 1, p)
    encoder += conv_flops(416, 256, 3, p8) + conv_flops(256, 128, 1, p8)
    widths = [128, 128, 128, 256, 256, 512, 512, 1024, 1024]  # into and out of each residual block
    blocks = sum(2 * 3 * (a * b + b * b) for a, b in zip(widths[:-1], widths[1:]))
    delta = 2 * 718 * 128 * 3 + blocks + 2 * 1024 * 2
    corr = 3 * 4 * 2 * 64 * 128
    return B * S * encoder + iters * B * S * N * (delta + corr)


def test_time_mode_times_both_paths_and_counts_flops(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    benchmark.dispatch([*TINY, "--warmup", "0", "--repeats", "2", "--precision", "fp32", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["complete"] and data["env"]["mode"] == "time"
    assert data["env"]["fused_corr"] is False and data["env"]["repeats"] == 2
    rows = data["rows"]
    assert [(r["name"], r["path"], r["dtype"]) for r in rows] == [
        ("custom", "exact", "float32"),
        ("custom", "fast", "float32"),
    ]
    for r in rows:
        assert r["flops"] == hand_flops(1, 2, 4, 64, 64, 1)
        assert len(r["times_s"]) == 2 and r["min_s"] == min(r["times_s"]) <= r["median_s"]
        assert r["fps"] == pytest.approx(2 / r["median_s"])
        assert r["tflops_per_s"] == pytest.approx(r["flops"] / r["median_s"] / 1e12)
        assert r["peak_gib"] is None or r["peak_gib"] >= 0
        assert not any(k.startswith("official") for k in r)  # shown only on CUDA


def test_train_step_updates_the_weights() -> None:
    w = Workload("t", 1, 2, 4, 64, 64, 1, train=True)
    model = paths.timed_model(CPU, 0, fast=False, dtype=torch.float32, compile_parts=False, recompute=False)
    before = model.delta_block.dense.weight.detach().clone()
    paths.make_step(model, w, workloads.make_inputs(w, CPU, 0))()
    assert model.training and model.delta_block.dense.weight.grad is None  # zeroed after the step
    assert not torch.equal(model.delta_block.dense.weight, before)


def test_inputs_stay_inside_the_frame() -> None:
    inputs = workloads.make_inputs(Workload("t", 2, 6, 50, 64, 80, 1), CPU, 3)
    trajs = inputs.trajs_g
    assert trajs.shape == (2, 6, 50, 2) and inputs.rgbs.shape == (2, 6, 3, 64, 80)
    assert trajs.min() >= 0 and trajs[..., 0].max() <= 79 and trajs[..., 1].max() <= 63
    assert torch.equal(inputs.trajs_e0, trajs[:, :1].expand_as(trajs))


def test_training_rows_run_in_capped_processes_with_recompute_off_and_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the rows' processes: tiny steps, a shared machine
    out = tmp_path / "bench.json"
    flags = ["--train", "--paths", "exact", "--warmup", "0", "--repeats", "1", "--mem_cap_gib", "6"]
    benchmark.dispatch([*TINY, *flags, "--out", str(out)])
    data = json.loads(out.read_text())
    assert "own process, capped at 6.0 GiB" in data["env"]["memory"]
    off, on = data["rows"]
    assert (off["recompute"], on["recompute"]) == ("off", "on")
    forward = hand_flops(1, 2, 4, 64, 64, 1)
    assert off["flops"] == on["flops"] and 2 * forward < off["flops"] < 3 * forward  # + backward (not rgbs)
    assert on["tflops_per_s"] == pytest.approx(on["flops"] / on["median_s"] / 1e12)
    for r in (off, on):
        assert r["mem_cap_gib"] == 6.0 and len(r["times_s"]) == 1 and r["dtype"] == "float32"
        assert 0.1 < r["peak_gib"] < 6.0  # the whole process: interpreter, torch, model, one step
    assert on["time_vs_off"] == pytest.approx(on["median_s"] / off["median_s"])
    assert on["peak_vs_off"] == pytest.approx(on["peak_gib"] / off["peak_gib"])


def test_capped_process_reports_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    big = Workload("big", 1, 32, 4, 1024, 1024, 1, train=True)
    options = PathOptions(CPU, 0, torch.float32, compile=False, recompute=False)
    args = (paths.exact, big, options, 0, 1, False)
    # 400 MB of frames, then 400 MB more for the normalised copy: over a 0.7 GiB cap on the way
    found = isolation.run_capped(timing.measure_alone, args, cap_gib=0.7, name="big")
    assert found == {"error": "out of memory"}


def test_table_shows_official_ratios_only_when_asked() -> None:
    row = {"name": "demo", "B": 1, "S": 48, "N": 1024, "H": 512, "W": 896, "iters": 16, "path": "fast"}
    row |= {"dtype": "float16", "recompute": None}
    row |= {"median_s": 0.5, "min_s": 0.4, "peak_gib": 8.0, "fps": 96.0, "flops": 2e13, "tflops_per_s": 40.0}
    row |= {"official_s": 1.19, "official_gib": 72.9, "official_tflop": 31.2, "speedup_vs_official": 2.38}
    cuda = timing.format_table([row], official=True).get_string()
    assert "speed-up" in cuda and "2.38" in cuda and "72.9" in cuda and "float16" in cuda
    assert "speed-up" not in timing.format_table([row], official=False).get_string()
    oom = {k: row[k] for k in ("name", "B", "S", "N", "H", "W", "iters", "path")}
    oom["error"] = "out of memory"
    assert "out of memory" in timing.format_table([oom], official=True).get_string()


def test_recompute_rows_compared_with_their_store_everything_row() -> None:
    base = {"name": "official-B1", "B": 1, "S": 36, "N": 128, "H": 256, "W": 384, "iters": 6}
    base |= {"dtype": "float32", "flops": None, "fps": 1.0, "tflops_per_s": None, "min_s": 1.0}
    rows = [
        base | {"path": "exact", "recompute": "off", "median_s": 10.0, "peak_gib": 8.0},
        base | {"path": "exact", "recompute": "on", "median_s": 12.0, "peak_gib": 2.0},
        base | {"path": "fast", "recompute": "off", "error": "out of memory"},
        base | {"path": "fast", "recompute": "on", "median_s": 3.0, "peak_gib": 1.0},
    ]
    timing.compare_recompute(rows)
    assert rows[1]["time_vs_off"] == pytest.approx(1.2) and rows[1]["peak_vs_off"] == pytest.approx(0.25)
    assert "time_vs_off" not in rows[0] and "time_vs_off" not in rows[3]  # nothing to compare with
    table = timing.format_table(rows, official=False).get_string()
    assert "1.20" in table and "0.25" in table and "out of memory" in table


def test_presets_custom_workloads_and_errors(capsys: pytest.CaptureFixture) -> None:
    assert [w.name for w in workloads.select_workloads("", (), CPU)] == ["cpu-infer", "cpu-train"]
    recipes = workloads.select_workloads("train-memory", (), CPU)
    assert [(w.name, w.B, w.S, w.N, w.H, w.W, w.iters, w.train) for w in recipes] == [
        ("official-B1", 1, 36, 128, 256, 384, 6, True),
        ("official-B4", 4, 36, 128, 256, 384, 6, True),
        ("finetune", 1, 64, 128, 512, 896, 6, True),
    ]
    official = workloads.select_workloads("official", ("eval-window",), CPU)
    assert official == (Workload("eval-window", 1, 128, 256, 512, 896, 16, False, 0.696, 69.9, 28.3),)
    with pytest.raises(ValueError, match=r"unknown workloads \['eval'\]"):
        workloads.select_workloads("official", ("demo", "eval"), CPU)
    assert timing.TimingConfig(S=8, N=32).custom() == Workload("custom", 1, 8, 32, 512, 896, 16, False)
    for kwargs, message in [
        ({"preset": "h200"}, "--preset must be one of official, cpu, train-memory, got 'h200'"),
        ({"N": 32}, "--N must be given with --S (a custom workload), got 32"),
        ({"S": 8, "preset": "cpu"}, "--S times a custom workload: give it without --preset"),
        ({"recompute": ("yes",)}, "--recompute must be off and/or on, got yes"),
        ({"repeats": 0}, "--repeats must be at least 1, got 0"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            timing.TimingConfig(**kwargs)
    for argv, code, message in [
        (["--paths", "exact,slow"], 1, "error: --paths must be some of exact, fast, got exact,slow"),
        (["video"], 2, "error: unknown mode 'video'; did you mean videos? (the modes: time, agree, videos)"),
        (["videos", "--lengths", "1"], 2, "error: --lengths must be frame counts of at least 2, got 1"),
    ]:
        with pytest.raises(SystemExit) as stop:
            benchmark.dispatch(argv)
        assert stop.value.code == code and capsys.readouterr().err == message + "\n"
    with pytest.raises(SystemExit):
        benchmark.dispatch(["videos", "--help"])
    assert capsys.readouterr().out.startswith("usage: python benchmark.py videos [--flag value ...]")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS only")
def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    baseline = measure.reset_peak(CPU)
    block = torch.ones(64, 2**20)  # 256 MiB, touched
    del block
    assert measure.read_peak_gib(CPU, baseline) >= 0.2


def test_count_flops_by_hand_and_out_of_memory() -> None:
    a, b = torch.ones(3, 4), torch.ones(4, 5)
    assert measure.count_flops(lambda: a @ b) == 2 * 3 * 4 * 5

    def too_big() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert measure.count_flops(too_big) is None


def test_agreement_compares_the_paths_on_saved_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Pips()
    checkpoint.save(tmp_path / "run", model, None, None, step=1)
    out = tmp_path / "agree.json"
    shape = ["--S", "4", "--N", "8", "--H", "64", "--W", "64", "--iters", "1"]
    benchmark.dispatch(["agree", "--ckpt", str(tmp_path / "run"), "--clips", "2", *shape, "--out", str(out)])
    (a,) = json.loads(out.read_text())["rows"]
    assert (a["clips"], a["S"], a["N"], a["iters"], a["dtype"]) == (2, 4, 8, 1, "float16")
    # the exact path's d_avg, recomputed by hand from the same clips
    data = SyntheticClips(4, 8, (64, 64), length=2, seed=agreement.AGREE_SEED)
    d_avg = []
    with torch.no_grad():
        for i in range(2):
            rgbs, trajs_g, _, valids = collate_clips([data[i]])
            trajs_e = model(trajs_g[:, :1].expand_as(trajs_g), frames_to_rgbs(rgbs), iters=1).tracks
            d_avg.append(compute_pips_metrics(trajs_e, trajs_g, valids, 64, 64)["d_avg"])
    assert a["d_avg_exact"] == pytest.approx(sum(d_avg) / 2, abs=1e-9)
    # float16 rounding moves the random-weight tracks a little, but not by whole frames
    assert 0 < a["median_px"] <= a["p90_px"] < 16


def test_agreement_names_a_missing_checkpoint(tmp_path: Path) -> None:
    cfg = agreement.AgreeConfig(ckpt=str(tmp_path / "nowhere"), out=str(tmp_path / "a.json"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        agreement.main(cfg)


def test_video_rows_decode_each_frame_once() -> None:
    rows = list(videos.video_rows((12, 30), CPU, 0))
    assert [(r["frames"], r["queries_at"]) for r in rows] == [
        (12, "last"),
        (12, "first"),
        (30, "last"),
        (30, "first"),
    ]
    for r in rows:
        assert r["tracked_frames"] == r["frames"] and r["decodes_per_frame"] == 1.0
        assert r["ms_per_frame"] == pytest.approx(1000 * r["seconds"] / r["frames"])
    table = videos.videos_table(rows).get_string()
    assert "decodes/frame" in table and "1.000" in table


def test_each_row_is_in_the_json_when_it_ends_and_sigterm_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "runs" / "rows.json"
    seen, handler = [], signal.getsignal(signal.SIGTERM)

    def rows():
        for i in range(3):
            seen.append(json.loads(out.read_text()))  # what the file holds as row i begins
            yield {"row": i}
            if i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the signal stops it here

    with pytest.raises(SystemExit) as stop:
        report.collect(rows(), report.Report(out, {"device": "cpu"}))
    assert stop.value.code == 128 + signal.SIGTERM
    assert [len(s["rows"]) for s in seen] == [0, 1] and not seen[0]["complete"]
    assert capsys.readouterr().err == f"terminated; 2 rows kept in {out}\n"
    kept = {"env": {"device": "cpu"}, "rows": [{"row": 0}, {"row": 1}], "complete": False}
    assert json.loads(out.read_text()) == kept
    assert sorted(p.name for p in out.parent.iterdir()) == ["rows.json"]  # no temporary file left
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


def test_ctrl_c_keeps_the_rows_that_ended_and_stops_the_row_processes(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    flags = ["--train", "--paths", "exact,fast", "--recompute", "on", "--warmup", "0", "--repeats", "1"]
    proc = subprocess.Popen(
        [sys.executable, "benchmark.py", *TINY, *flags, "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, to which a terminal sends Ctrl-C
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and json.loads(out.read_text())["rows"]:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # the second row's process is starting up
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert stdout == "" and "Traceback" not in stderr
    assert stderr.endswith(f"\ninterrupted; 1 row kept in {out}\n")
    data = json.loads(out.read_text())
    assert not data["complete"] and [(r["path"], r["recompute"]) for r in data["rows"]] == [("exact", "on")]
    assert len(data["rows"][0]["times_s"]) == 1
    while time.monotonic() < deadline:  # the row processes (and multiprocessing's helper) are gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("a process of the benchmark outlived it")
