"""Train PIPs++.

python train.py                                       # synthetic clips, with a recipe fit for this machine
python train.py --recipe official                     # the official recipe: B=4, S=36, N=128, 256x384
python train.py --dataset_location ./pod_export/ae_36_128_256x384  # clips written by export_mp4_dataset.py
python train.py --dataset_location /data/point_odyssey  # PointOdyssey itself, augmented on the fly
torchrun --nproc_per_node=8 train.py ...              # one process per GPU (DDP); B is per process
python train.py --resume --run_name <run>             # continue a run from its latest checkpoint
"""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.exportdataset import ExportDataset
from datasets.pointodyssey import PointOdysseyDataset
from datasets.sample import ClipBatch, collate_clips
from datasets.synthetic import SyntheticClips
from nets.losses import sequence_loss, visibility_loss
from nets.pips2 import frames_to_rgbs
from tracking.predictor import build_model
from utils import checkpoint, dist, recipes
from utils.cli import explain_flags, run
from utils.logger import Logger, Pace, RunningMeans, parameter_table
from utils.metrics import compute_ate, compute_pips_metrics, occlusion_accuracy
from utils.vis import draw_tracks

log = logging.getLogger("train")


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch by seed + epoch) that can start inside an epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def batches(dataset: Dataset, B: int, num_workers: int, info: dist.DistInfo, seed: int, start: int = 0):
    """Endless batches; batch k of the stream is fixed by (seed, k), so a run resumed at step k continues
    exactly where it stopped."""
    sampler = ResumableSampler(dataset, info.world_size, info.rank, seed)
    per_epoch = sampler.num_samples // B
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} clips are too few for B={B} on {info.world_size} process(es)")
    epoch, offset = divmod(start, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler.skip = offset * B
        loader = DataLoader(
            dataset,
            B,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_clips,
            drop_last=True,
            pin_memory=info.device.type == "cuda",
            persistent_workers=False,
        )
        yield from loader
        epoch, offset = epoch + 1, 0


def open_data(
    location: str, S: int, N: int, crop: tuple[int, int], use_augs: bool, seed: int, val_clips: int
):
    """(train, val) datasets: synthetic clips when `location` is empty, an export folder (clip folders with
    rgb.mp4 + track.npz; its last clips are held out), or a PointOdyssey root (train/ and, if present, val/;
    without one val is None)."""
    if not location:
        return (
            SyntheticClips(S, N, crop, length=100_000, seed=seed, use_augs=use_augs),
            SyntheticClips(S, N, crop, length=val_clips, seed=seed + 1_000_003),
        )
    root = Path(location)
    if not root.is_dir():
        raise FileNotFoundError(f"--dataset_location {root} is not a directory")
    if any(root.glob("*/track.npz")):
        train = ExportDataset(str(root.parent), root.name, S, N, crop, use_augs=use_augs, seed=seed)
        val = ExportDataset(str(root.parent), root.name, S, N, crop, use_augs=False, seed=seed + 1)
        held_out = max(1, min(val_clips, len(train.clips) // 10))  # the last clips are the held-out split
        train.select(slice(None, -held_out))
        val.select(slice(-held_out, None))
        return train, val
    if (root / "train").is_dir():
        train = PointOdysseyDataset(str(root), "train", S, N, crop_size=crop, use_augs=use_augs, seed=seed)
        if not (root / "val").is_dir():
            log.warning("%s has no val/ split: validation is off", root)
            return train, None
        val = PointOdysseyDataset(str(root), "val", S, N, crop_size=crop, use_augs=False, seed=seed + 1)
        return train, val
    raise FileNotFoundError(
        f"{root} is neither an export folder (<id>/rgb.mp4 + track.npz) nor a PointOdyssey root (train/)"
    )


def initial_trajs(trajs_g: torch.Tensor, g: torch.Generator, H: int, W: int) -> torch.Tensor:
    """The official training init: random tracks blended with the truth, half of them replaced by
    zero-velocity tracks, frame 0 exact."""
    B, S, N, _ = trajs_g.shape
    dev = trajs_g.device
    rand = torch.rand(B, S, N, 2, generator=g).to(dev) * torch.tensor([W - 1.0, H - 1.0], device=dev)
    coeff = torch.rand(B, 1, N, 1, generator=g).to(dev)
    trajs = rand * coeff + trajs_g * (1 - coeff)  # B,S,N,2
    zero_vel = trajs_g[:, :1].expand(B, S, N, 2)
    keep = (torch.rand(B, 1, N, 1, generator=g) > 0.5).to(dev, trajs.dtype)
    trajs = trajs * keep + zero_vel * (1 - keep)
    trajs[:, 0] = trajs_g[:, 0]
    return trajs


@dataclass
class StepResult:
    loss: torch.Tensor
    trajs_e: torch.Tensor  # B,S,N,2 detached final prediction
    batch: ClipBatch  # as fed to the model (after the transpose augmentation)
    vis_e: torch.Tensor | None = None  # B,S,N detached visibility logits, with a visibility head


def run_model(
    model,
    batch: ClipBatch,
    iters: int,
    g: torch.Generator,
    train: bool,
    vis_weight: float = 1.0,
    zero_velocity: bool = False,
) -> StepResult:
    """One forward + loss. In training, half of the batches are transposed (H<->W) and tracks start from
    the official random init; validation, and training with zero_velocity, start from zero velocity as
    inference does. With a visibility head the loss adds vis_weight times its visibility_loss."""
    frames, trajs_g, visibs, valids = batch  # frames B,S,H,W,3 uint8
    if train and torch.rand((), generator=g) < 0.5:
        frames, trajs_g = frames.transpose(2, 3), trajs_g.flip(-1)  # H<->W, and x<->y with them
    H, W = frames.shape[2:4]
    if train and not zero_velocity:
        trajs_e0 = initial_trajs(trajs_g, g, H, W)
    else:
        trajs_e0 = trajs_g[:, :1].expand_as(trajs_g).clone()
    out = model(trajs_e0, frames_to_rgbs(frames), iters=iters)
    loss = sequence_loss([c.float() for c in out.preds], trajs_g, valids, gamma=0.8)
    vis_e = None
    if out.vis is not None:
        loss = loss + vis_weight * visibility_loss(out.vis, out.conf, out.tracks, trajs_g, visibs, valids)
        vis_e = out.vis.detach().float()
    batch = ClipBatch(frames, trajs_g, visibs, valids)
    return StepResult(loss, out.tracks.detach().float(), batch, vis_e)


def metrics_of(res: StepResult) -> dict[str, float]:
    _, trajs_g, visibs, valids = res.batch
    H, W = res.batch.rgbs.shape[2:4]
    m = compute_pips_metrics(res.trajs_e, trajs_g, valids, H, W)
    m.update(compute_ate(res.trajs_e, trajs_g, visibs, valids))
    if res.vis_e is not None:
        m["occlusion_accuracy"] = occlusion_accuracy(torch.sigmoid(res.vis_e), visibs, valids)
        m["occlusion_accuracy_always_visible"] = occlusion_accuracy(torch.ones_like(visibs), visibs, valids)
    return m


def tracks_gif(res: StepResult) -> np.ndarray:
    """T,H,W,3 uint8: predicted tracks of the first clip drawn on its frames."""
    frames = res.batch.rgbs[0].cpu().numpy()  # S,H,W,3
    keep = res.batch.valids[0, 0] > 0
    return draw_tracks(
        frames, res.trajs_e[0][:, keep].cpu().numpy(), res.batch.visibs[0][:, keep].cpu().numpy()
    )


class TrainStep(NamedTuple):
    loss: float  # mean over the micro-batches
    result: StepResult | None  # of the last micro-batch
    rtime: float  # seconds reading data
    itime: float  # seconds in forward and backward
    skipped: bool  # a non-finite loss or gradient: no update was made


def train_step(
    net, params, optimizer, data, g, iters, grad_acc, grad_clip, device, vis_weight, zero_velocity=False
) -> TrainStep:
    """Forward/backward over grad_acc micro-batches, gradient clipping and one optimizer step; with
    zero_velocity the tracks start as at inference (run_model).

    Every rank agrees on skipping a step with a non-finite loss, so DDP never waits on a missing backward.
    """
    net.train()
    rtime = itime = total = 0.0
    res = None
    for _ in range(grad_acc):
        t_read = time.time()
        batch = next(data).to(device)
        t_iter = time.time()
        rtime += t_iter - t_read
        res = run_model(net, batch, iters, g, train=True, vis_weight=vis_weight, zero_velocity=zero_velocity)
        if dist.all_reduce_mean(torch.isfinite(res.loss).float()).item() < 1.0:
            optimizer.zero_grad(set_to_none=True)
            return TrainStep(float("nan"), res, rtime, itime, True)
        (res.loss / grad_acc).backward()
        total += res.loss.item() / grad_acc
        itime += time.time() - t_iter
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    skipped = not torch.isfinite(grad_norm).item()
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return TrainStep(total, res, rtime, itime, skipped)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """All randomness of a step comes from (seed, step, rank), so resuming needs no RNG state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)


def newest_run(ckpt_root: Path) -> str:
    runs = sorted(
        (p for p in ckpt_root.glob("*") if checkpoint.latest_checkpoint(p)), key=lambda p: p.stat().st_mtime
    )
    if not runs:
        raise FileNotFoundError(f"--resume: no run with checkpoints in {ckpt_root}")
    return runs[-1].name


def least_free_memory(info: dist.DistInfo) -> int | None:
    """Free bytes of this process's device (None off CUDA), the least on any process so all agree."""
    free = recipes.free_memory(info.device)
    if free is not None:
        free = int(dist.all_reduce_min(torch.tensor(float(free), device=info.device)).item())
    return free


def pick_recipe(
    name: str, given: dict, saved: dict, info: dist.DistInfo, recompute: bool | None = None
) -> tuple[recipes.Recipe, bool, str]:
    """(the recipe of this run, whether it recomputes activations, the line that tells both). Each knob is
    the flag's value if given, else on --resume the run's own, else the recipe's: `name`, else the run's,
    else the one fit for this device and its free memory (the least free on any process, so that all
    processes agree). `recompute` None: on CPU and MPS, and on CUDA where storing every activation of a
    step does not fit."""
    free = least_free_memory(info)
    if name and name != saved.get("recipe"):
        saved = {}  # another recipe than the run's: none of its knobs
    name = name or saved.get("recipe", "")
    if name:
        if name not in recipes.RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(recipes.RECIPES)}, got {name!r}")
        base, why = recipes.RECIPES[name], "the run's own" if saved else "as asked"
    else:
        base, why = recipes.choose(info.device, free)
    knobs = {k: given.get(k, saved.get(k)) for k in base.knobs()}
    if knobs["crop_size"] is not None:
        knobs["crop_size"] = tuple(knobs["crop_size"])  # a list in config.json
    plan = recipes.resolve(base, **knobs)
    if recompute is None:
        recompute = recipes.recompute_pays(plan, info.device, free)
    line = f"recipe {plan.name}: {plan.describe()} ({why}); "
    line += f"activations {'recomputed' if recompute else 'stored'} (--recompute)"
    if given:
        line += f"; set by flags: {', '.join(f'--{k}' for k in given)}"
    if plan.name != recipes.OFFICIAL.name:
        line += f". {recipes.official_hint()}"
    return plan, recompute, line


def skipped_data(data: Dataset | None) -> list[str]:
    """Sequences or clips of a reader left out as unreadable: at indexing, or found while reading by this
    process or its DataLoader workers."""
    if not isinstance(data, (ExportDataset, PointOdysseyDataset)):
        return []
    return data.skipped + [f"{name}: failed to read (see its warning)" for name in data.unreadable.found()]


@explain_flags
def main(
    *,
    dataset_location: str = "",  # '' = built-in synthetic clips; an export folder; or a PointOdyssey root
    recipe: str = "",  # '' = fit for this machine (the official one on a big GPU); official, official-b2, ...
    B: int | None = None,  # clips per batch and per process (default: the recipe's)
    S: int | None = None,  # frames per clip (default: the recipe's)
    N: int | None = None,  # tracked points per clip (default: the recipe's)
    crop_size: tuple[int, int] | None = None,  # H,W of the training clips (default: the recipe's)
    iters: int | None = None,  # refinement iterations, twice as many to validate (default: the recipe's)
    lr: float = 5e-4,  # peak learning rate of AdamW
    weight_decay: float = 1e-6,  # AdamW weight decay
    grad_clip: float = 5.0,  # gradient-norm clipping
    grad_acc: int | None = None,  # micro-batches accumulated per optimizer step (default: the recipe's)
    max_steps: int | None = None,  # optimizer steps (default: the recipe's)
    use_scheduler: bool = True,  # OneCycleLR: 10% warm-up, linear anneal
    use_augs: bool = True,  # augment (exported / PointOdyssey data; the transpose augmentation for all)
    val_freq: int | None = None,  # validate every this many steps, 0 = never (default: the recipe's)
    val_clips: int = 64,  # size of the held-out validation set
    log_freq: int | None = None,  # TensorBoard gifs every this many steps, scalars 4x as often (ditto)
    save_freq: int | None = None,  # checkpoint every this many steps (default: the recipe's)
    keep_latest: int = 5,  # checkpoints kept per run
    num_workers: int | None = None,  # DataLoader workers per process (default: the recipe's)
    seed: int = 0,  # seed of the model init, the data order and every augmentation
    run_name: str = "",  # '' = a new name from the config and the time
    resume: bool = False,  # continue run_name (or the newest run in ckpt_dir) from its latest checkpoint
    init_ckpt: str = "",  # start from these weights only (a file or a checkpoint directory)
    vis_head: bool = False,  # also train a visibility head (visibility and confidence, BCE on visibs)
    vis_weight: float = 1.0,  # weight of the visibility head's loss beside the tracking loss
    head_only: bool = False,  # train only the visibility head; the backbone (from --init_ckpt) is frozen
    log_dir: str = "./logs_train",  # TensorBoard logs and config.json, per run
    ckpt_dir: str = "./checkpoints",  # checkpoints, per run
    device: str = "",  # '' = cuda if available, else mps, else cpu
    fast: bool = True,  # the fast path on CUDA: bf16 autocast, channels_last, fused kernels (CPU: float32)
    recompute: bool | None = None,  # recompute activations in backward: less memory, more time (default: CPU)
    compile: bool = False,  # torch.compile the model
    max_bad_steps: int = 5,  # stop after this many non-finite losses in a row
) -> None:
    config = {k: v for k, v in locals().items()}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = dist.setup(device)
    torch.manual_seed(seed)
    ckpt_root = Path(ckpt_dir)
    if resume and not run_name:
        run_name = newest_run(ckpt_root)
    saved_path = Path(log_dir) / run_name / "config.json"
    saved = json.loads(saved_path.read_text()) if resume and run_name and saved_path.is_file() else {}
    given = {k: v for k, v in config.items() if k in recipes.OFFICIAL.knobs() and v is not None}
    plan, recompute, recipe_line = pick_recipe(recipe, given, saved, info, recompute)
    config.update({k: getattr(plan, k) for k in plan.knobs()}, recipe=plan.name)
    if info.is_main:
        print(recipe_line)
    if not dataset_location and info.is_main:
        print(
            "training on the built-in synthetic clips; for PointOdyssey pass --dataset_location "
            "<PointOdyssey root or export folder> (see README)"
        )
    B, S, N, crop, iters = plan.B, plan.S, plan.N, plan.crop_size, plan.iters
    train_data, val_data = open_data(dataset_location, S, N, crop, use_augs, seed, val_clips)

    run_name = run_name or f"{B}_{S}_{N}_i{iters}_{lr:.0e}_{time.strftime('%Y%m%d_%H%M%S')}"
    run_ckpt, run_log = ckpt_root / run_name, Path(log_dir) / run_name

    vis_head, head_only = vis_head or bool(saved.get("vis_head")), head_only or bool(saved.get("head_only"))
    config.update(vis_head=vis_head, head_only=head_only)  # a resumed run keeps its head
    if head_only and not (init_ckpt or resume):
        raise ValueError("--head_only trains the visibility head on a trained backbone: give it --init_ckpt")
    with_head = vis_head or head_only
    model = build_model(None if resume else init_ckpt or None, info.device, "train", fast, vis_head=with_head)
    model.set_recompute(recompute)
    dtype = model.fast_dtype if model.fast else None
    model.norm.requires_grad_(False)  # unused by the forward; kept only for checkpoint compatibility
    if head_only:
        model.requires_grad_(False)
        model.vis_head.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-8)
    scheduler = None
    if use_scheduler:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=plan.max_steps + 100,
            pct_start=0.1,
            cycle_momentum=False,
            anneal_strategy="linear",
        )
    start = 0
    if resume:
        start = checkpoint.load(run_ckpt, model, optimizer, scheduler)
    if info.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    net = torch.compile(model) if compile else model

    logger = Logger(run_log, enabled=info.is_main)
    if info.is_main:
        print(parameter_table(checkpoint.unwrap(model)))
        run_log.mkdir(parents=True, exist_ok=True)
        (run_log / "config.json").write_text(json.dumps(config, indent=2, default=str))
        print(
            f"run {run_name}: {'resuming at step ' + str(start) if resume else 'new'}; device {info.device}"
            f"{' (fast path, bf16)' if dtype is not None else ''}; {info.world_size} process(es)"
        )

    train_iter = batches(train_data, B, plan.num_workers, info, seed, start * plan.grad_acc)
    val_iter = batches(val_data, B, 0, info, seed + 1) if plan.val_freq and val_data is not None else None
    pools_t, pools_v = RunningMeans(1000), RunningMeans(1000)
    pace = Pace()
    bad_steps = 0
    step = start
    while step < plan.max_steps:
        step += 1
        t0 = time.time()
        g = step_generator(seed, step, info.rank)
        out = train_step(
            net, params, optimizer, train_iter, g, iters, plan.grad_acc, grad_clip, info.device, vis_weight,
            zero_velocity=head_only,  # the head learns on tracks as inference makes them
        )  # fmt: skip
        if out.skipped:
            bad_steps += 1
            log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)", step, bad_steps)
            if bad_steps >= max_bad_steps:
                raise RuntimeError(f"{bad_steps} non-finite steps in a row at step {step}; stopping")
        else:
            bad_steps = 0
            pools_t.update({**metrics_of(out.result), "loss": out.loss})
        if scheduler is not None:
            scheduler.step()
        if info.is_main:
            if step % max(plan.log_freq // 4, 1) == 0:
                logger.scalars(step, pools_t.means(), "train/")
                logger.scalars(step, pools_v.means(), "val/")
                logger.scalars(step, {"lr": optimizer.param_groups[0]["lr"]}, "_/")
            if step % plan.log_freq == 0 and not out.skipped:
                logger.gif("2_outputs/trajs_e_on_rgbs", tracks_gif(out.result), step, fps=min(S, 8))
            if step % plan.save_freq == 0 or step == plan.max_steps:
                config["step"] = step
                checkpoint.save(run_ckpt, model, optimizer, scheduler, step, keep_latest, config=config)
            pace.tick()
            print(
                f"{run_name}; step {step:06d}/{plan.max_steps}; rtime {out.rtime:.2f}; "
                f"itime {out.itime:.2f}; loss {out.loss:.3f}; loss_t {pools_t.mean('loss'):.2f}; "
                f"d_t {pools_t.mean('d_avg'):.1f}; d_v {pools_v.mean('d_avg'):.1f}; "
                f"time {time.time() - t0:.2f}; {pace.steps_per_s():.2f} steps/s; "
                f"eta {pace.eta(plan.max_steps - step)}",
                flush=True,  # also when piped to a log file
            )
        if val_iter is not None and (step % plan.val_freq == 0 or step == start + 1):
            val = validate(
                net, next(val_iter).to(info.device), iters * 2, logger, step, plan.log_freq, vis_weight
            )
            pools_v.update(val)
            if info.is_main:  # after the step's line, which it would delay; its own line, as d_v lags
                line = f"{run_name}; validation at step {step}: d_avg {val['d_avg']:.1f}"
                if "occlusion_accuracy" in val:
                    line += f"; occlusion_accuracy {val['occlusion_accuracy']:.1f}"
                    line += f" (always visible: {val['occlusion_accuracy_always_visible']:.1f})"
                print(f"{line}; loss {val['loss']:.2f}", flush=True)
    if info.is_main and dataset_location:
        for split, data in (("training", train_data), ("validation", val_data)):
            skipped = skipped_data(data)
            print(
                f"{split} data: {len(skipped)} unreadable sequence(s) or clip(s) skipped"
                + "".join(f"\n  {line}" for line in skipped)
            )
    logger.close()
    dist.teardown()


@torch.no_grad()
def validate(
    model, batch: ClipBatch, iters: int, logger: Logger, step: int, log_freq: int, vis_weight: float
):
    """Metrics of one held-out batch, tracked from zero velocity with 2x iterations."""
    model.eval()
    res = run_model(model, batch, iters, torch.Generator(), train=False, vis_weight=vis_weight)
    if step % log_freq == 0:
        logger.gif("val/trajs_e_on_rgbs", tracks_gif(res), step)
    return {**metrics_of(res), "loss": res.loss.item()}


if __name__ == "__main__":
    run(main)
