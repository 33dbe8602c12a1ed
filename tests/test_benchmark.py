import json
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

import benchmark
from benchmark import Config
from datasets.sample import collate_clips
from datasets.synthetic import SyntheticClips
from nets.pips2 import Pips, frames_to_rgbs
from utils import checkpoint
from utils.metrics import compute_pips_metrics


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


def test_main_times_both_paths_and_counts_flops(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    benchmark.main(
        S=2, N=4, H=64, W=64, iters=1, warmup=0, repeats=2, precision="fp32", device="cpu", out=str(out)
    )
    report = json.loads(out.read_text())
    assert report["env"]["fused_corr"] is False and report["env"]["repeats"] == 2
    rows = report["results"]
    assert [(r["name"], r["path"]) for r in rows] == [("custom", "exact"), ("custom", "fast")]
    for r in rows:
        assert r["flops"] == hand_flops(1, 2, 4, 64, 64, 1)
        assert len(r["times_s"]) == 2 and r["min_s"] == min(r["times_s"]) <= r["median_s"]
        assert r["fps"] == pytest.approx(2 / r["median_s"])
        assert r["tflops_per_s"] == pytest.approx(r["flops"] / r["median_s"] / 1e12)
        assert r["peak_gib"] is None or r["peak_gib"] >= 0
        assert not any(k.startswith("official") for k in r)  # shown only on CUDA


def test_train_step_updates_the_weights() -> None:
    cfg = Config("t", 1, 2, 4, 64, 64, 1, train=True)
    model = benchmark.timed_model(
        torch.device("cpu"), 0, fast=False, dtype=torch.float32, compile_parts=False
    )
    before = model.delta_block.dense.weight.detach().clone()
    benchmark.make_step(model, cfg, benchmark.make_inputs(cfg, torch.device("cpu"), 0))()
    assert model.training and model.delta_block.dense.weight.grad is None  # zeroed after the step
    assert not torch.equal(model.delta_block.dense.weight, before)


def test_inputs_stay_inside_the_frame() -> None:
    inputs = benchmark.make_inputs(Config("t", 2, 6, 50, 64, 80, 1), torch.device("cpu"), 3)
    trajs = inputs["trajs_g"]
    assert trajs.shape == (2, 6, 50, 2) and inputs["rgbs"].shape == (2, 6, 3, 64, 80)
    assert trajs.min() >= 0 and trajs[..., 0].max() <= 79 and trajs[..., 1].max() <= 63
    assert torch.equal(inputs["trajs_e0"], trajs[:, :1].expand_as(trajs))


def test_table_shows_official_ratios_only_when_asked() -> None:
    row = {"name": "demo", "B": 1, "S": 48, "N": 1024, "H": 512, "W": 896, "iters": 16, "path": "fast"}
    row |= {"dtype": "float16"}
    row |= {"median_s": 0.5, "min_s": 0.4, "peak_gib": 8.0, "fps": 96.0, "flops": 2e13, "tflops_per_s": 40.0}
    row |= {"official_s": 1.19, "official_gib": 72.9, "official_tflop": 31.2, "speedup_vs_official": 2.38}
    cuda = benchmark.format_table([row], official=True).get_string()
    assert "speed-up" in cuda and "2.38" in cuda and "72.9" in cuda and "float16" in cuda
    assert "speed-up" not in benchmark.format_table([row], official=False).get_string()
    oom = {k: row[k] for k in ("name", "B", "S", "N", "H", "W", "iters", "path", "dtype")}
    oom["error"] = "out of memory"
    assert "out of memory" in benchmark.format_table([oom], official=True).get_string()


def test_presets_and_errors() -> None:
    cpu = torch.device("cpu")
    assert [c.name for c in benchmark.select_configs("", "", cpu)] == ["cpu-infer", "cpu-train"]
    official = benchmark.select_configs("official", "eval-window", cpu)
    assert official == (Config("eval-window", 1, 128, 256, 512, 896, 16, False, 0.696, 69.9, 28.3),)
    with pytest.raises(ValueError, match="unknown preset 'h200'"):
        benchmark.select_configs("h200", "", cpu)
    with pytest.raises(ValueError, match=r"unknown configs \['eval'\]"):
        benchmark.select_configs("official", "demo,eval", cpu)
    with pytest.raises(ValueError, match="paths must name exact and/or fast, got 'exact,slow'"):
        benchmark.main(paths="exact,slow", device="cpu")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS only")
def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    cpu = torch.device("cpu")
    baseline = benchmark._reset_peak(cpu)
    block = torch.ones(64, 2**20)  # 256 MiB, touched
    del block
    assert benchmark._read_peak_gib(cpu, baseline) >= 0.2


def test_count_flops_by_hand_and_out_of_memory() -> None:
    a, b = torch.ones(3, 4), torch.ones(4, 5)
    assert benchmark.count_flops(lambda: a @ b) == 2 * 3 * 4 * 5

    def too_big() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert benchmark.count_flops(too_big) is None


def test_agreement_compares_the_paths_on_saved_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Pips()
    checkpoint.save(tmp_path / "run", model, None, None, step=1)
    out = tmp_path / "agree.json"
    run = str(tmp_path / "run")
    benchmark.main(S=4, N=8, H=64, W=64, iters=1, agree_ckpt=run, agree_clips=2, out=str(out))
    a = json.loads(out.read_text())["agreement"]
    assert (a["clips"], a["S"], a["N"], a["iters"]) == (2, 4, 8, 1)
    # the exact path's d_avg, recomputed by hand from the same clips
    data = SyntheticClips(4, 8, (64, 64), length=2, seed=benchmark.AGREE_SEED)
    d_avg = []
    with torch.no_grad():
        for i in range(2):
            rgbs, trajs_g, _, valids = collate_clips([data[i]])
            trajs_e = model(trajs_g[:, :1].expand_as(trajs_g), frames_to_rgbs(rgbs), iters=1).tracks
            d_avg.append(compute_pips_metrics(trajs_e, trajs_g, valids, 64, 64)["d_avg"])
    assert a["d_avg_exact"] == pytest.approx(sum(d_avg) / 2, abs=1e-9)
    # bf16 rounding moves the random-weight tracks a little, but not by whole frames
    assert 0 < a["median_px"] <= a["p90_px"] < 16


def test_agreement_names_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        benchmark.main(agree_ckpt=str(tmp_path / "nowhere"), out=str(tmp_path / "a.json"))


def test_video_rows_decode_each_frame_once(tmp_path: Path) -> None:
    with tqdm(total=4, disable=True) as progress:
        rows = benchmark.run_videos([12, 30], torch.device("cpu"), 0, progress)
    assert [(r["frames"], r["queries_at"]) for r in rows] == [
        (12, "last"),
        (12, "first"),
        (30, "last"),
        (30, "first"),
    ]
    for r in rows:
        assert r["tracked_frames"] == r["frames"] and r["decodes_per_frame"] == 1.0
        assert r["ms_per_frame"] == pytest.approx(1000 * r["seconds"] / r["frames"])
    table = benchmark.videos_table(rows).get_string()
    assert "decodes/frame" in table and "1.000" in table
