"""The agree mode: how far the fast path's tracks are from the exact path's, with trained weights.

    python benchmark.py agree --ckpt ./checkpoints/<run>         # 8 clips, S16 N64 128x192, 8 iterations
    python benchmark.py agree --ckpt model.pth --precision bf16 --clips 32

The weights of a trained model track held-out synthetic clips from zero velocity on both paths (the fast
path autocasts per --precision, on CPU too); the row gives the distance between the two paths' tracks
(median, mean and p90 in pixels over frames 1..S-1) and each path's d_avg. Random weights would not do:
their iterations amplify rounding rather than converge.
"""

import statistics
from collections.abc import Generator
from dataclasses import dataclass

import torch
from prettytable import PrettyTable
from tqdm import tqdm

from bench.config import BenchConfig, Precision, dtype_name, fast_dtype
from bench.measure import environment
from bench.report import Report, collect
from datasets.sample import collate_clips
from datasets.synthetic import SyntheticClips
from nets.pips2 import frames_to_rgbs
from tracking.predictor import build_model
from utils.config import knob, require
from utils.dist import pick_device
from utils.metrics import compute_pips_metrics

AGREE_SEED = 2_000_003  # clips of the agreement check: neither train.py's training nor its validation clips


@dataclass(frozen=True)
class AgreeConfig(BenchConfig):
    ckpt: str = knob("", "trained weights: a checkpoint file or a run's directory of model-*.pth")
    clips: int = knob(8, "held-out synthetic clips to track")
    S: int = knob(16, "frames per clip")
    N: int = knob(64, "points per clip")
    H: int = knob(128, "frame height")
    W: int = knob(192, "frame width")
    iters: int = knob(8, "refinement iterations")
    precision: Precision = knob("auto", "fast path's autocast dtype; auto = fp16, as inference on CUDA")
    out: str = knob("benchmark_agree.json", "JSON of the environment and the row")

    def __post_init__(self) -> None:
        require(bool(self.ckpt), "ckpt", "a checkpoint file or directory", self.ckpt)
        require(self.S >= 2, "S", "at least 2", self.S)
        for name in ("clips", "N", "H", "W", "iters"):
            require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))


@torch.no_grad()
def measure_agreement(cfg: AgreeConfig, device: torch.device) -> dict:
    """Track `cfg.clips` held-out synthetic clips with the weights of `cfg.ckpt` on the exact and the fast
    path; the per-point distance between the two paths' tracks (pixels, frames 1..S-1) and each d_avg."""
    dtype = fast_dtype(cfg.precision, train=False)
    model = build_model(cfg.ckpt, device, fast=False)
    data = SyntheticClips(cfg.S, cfg.N, (cfg.H, cfg.W), length=cfg.clips, seed=AGREE_SEED + cfg.seed)
    dists, d_avg = [], {"exact": [], "fast": []}
    for i in tqdm(range(cfg.clips), desc="agreement"):
        rgbs, trajs_g, _, valids = collate_clips([data[i]]).to(device)
        trajs_e0 = trajs_g[:, :1].expand_as(trajs_g).contiguous()  # B,S,N,2
        tracks = {}
        for path in ("exact", "fast"):
            model.set_fast(path == "fast", dtype)
            tracks[path] = model(trajs_e0, frames_to_rgbs(rgbs), iters=cfg.iters).tracks  # B,S,N,2
            d_avg[path].append(compute_pips_metrics(tracks[path], trajs_g, valids, cfg.H, cfg.W)["d_avg"])
        dists.append((tracks["fast"] - tracks["exact"])[:, 1:].norm(dim=-1).flatten().cpu())
    dist = torch.cat(dists).double()
    shape = {"S": cfg.S, "N": cfg.N, "H": cfg.H, "W": cfg.W, "iters": cfg.iters}
    return {"ckpt": cfg.ckpt, "dtype": dtype_name(dtype), "clips": cfg.clips, **shape} | {
        "median_px": dist.median().item(),
        "mean_px": dist.mean().item(),
        "p90_px": dist.quantile(0.9).item(),
        "d_avg_exact": statistics.mean(d_avg["exact"]),
        "d_avg_fast": statistics.mean(d_avg["fast"]),
    }


def agreement_table(rows: list[dict]) -> PrettyTable:
    columns = ["fast dtype", "clips", "shape", "median px", "mean px", "p90 px", "d_avg exact", "d_avg fast"]
    table = PrettyTable(columns)
    for a in rows:
        cells = [f"{a[k]:.3f}" for k in ("median_px", "mean_px", "p90_px", "d_avg_exact", "d_avg_fast")]
        shape = f"S{a['S']} N{a['N']} {a['H']}x{a['W']} i{a['iters']}"
        table.add_row([a["dtype"], a["clips"], shape, *cells])
    return table


def agreement_rows(cfg: AgreeConfig, device: torch.device) -> Generator[dict, None, None]:
    yield measure_agreement(cfg, device)


def main(cfg: AgreeConfig) -> None:
    device = pick_device(cfg.device)
    report = Report(cfg.out, environment(device) | {"mode": "agree"})
    rows = collect(agreement_rows(cfg, device), report)
    print(agreement_table(rows))
    print(f"wrote {cfg.out}")
