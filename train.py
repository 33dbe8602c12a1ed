"""Train PIPs++.

python train.py                                       # synthetic clips, with a recipe fit for this machine
python train.py --recipe official                     # the official recipe: B=4, S=36, N=128, 256x384
python train.py --config my.yaml                      # settings from a file (copy one of configs/)
python train.py --dataset_location ./pod_export/ae_36_128_256x384  # clips written by export_mp4_dataset.py
python train.py --dataset_location /data/point_odyssey  # PointOdyssey itself, augmented on the fly
torchrun --nproc_per_node=8 train.py ...              # one process per GPU (DDP); B is per process
python train.py --resume --run_name <run>             # continue a run from its latest checkpoint

Each setting is, by precedence: the flag; else a --config file's; else, on --resume, the run's own (read from
its checkpoint); else the export folder's S, N and crop; else the recipe's (--recipe, or the one fit for this
machine); else the default below. --print_config shows the result and stops.
"""

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.exportdataset import EXPORT_CONFIG, ExportDataset, export_settings
from datasets.pointodyssey import PointOdysseyDataset
from datasets.sample import ClipBatch, collate_clips
from datasets.synthetic import SyntheticClips
from nets.losses import sequence_loss, visibility_loss
from nets.pips2 import frames_to_rgbs
from tracking.frames import MIN_SIDE
from tracking.predictor import build_model
from utils import checkpoint, dist, recipes
from utils.config import Flags, UsageError, check_values, knob, read_file, require, resolve, run, to_yaml
from utils.interrupt import StopRequest, ignore_stop_signals
from utils.logger import Logger, Pace, RunningMeans, parameter_table
from utils.metrics import compute_ate, compute_pips_metrics, occlusion_accuracy
from utils.vis import draw_tracks

log = logging.getLogger("train")


@dataclass(frozen=True)
class TrainConfig:
    dataset_location: str = knob(
        "", "'' = the built-in synthetic clips; an export folder; or a PointOdyssey root"
    )
    recipe: str = knob(
        "", f"one of {', '.join(recipes.RECIPES)} (configs/); '' = the one fit for this machine"
    )
    B: int | None = knob(None, "clips per micro-batch and per process (default: the recipe's)")
    S: int | None = knob(None, "frames per clip (default: the export's, else the recipe's)")
    N: int | None = knob(None, "tracked points per clip (default: the export's, else the recipe's)")
    crop_size: tuple[int, int] | None = knob(
        None, "H,W of the training clips (default: the export's, else the recipe's)"
    )
    iters: int | None = knob(None, "refinement iterations, twice as many to validate (default: the recipe's)")
    grad_acc: int | None = knob(None, "micro-batches accumulated per optimizer step (default: the recipe's)")
    max_steps: int | None = knob(None, "optimizer steps (default: the recipe's)")
    val_freq: int | None = knob(None, "validate every this many steps, 0 = never (default: the recipe's)")
    log_freq: int | None = knob(None, "TensorBoard gifs every this many steps, scalars 4x as often (ditto)")
    save_freq: int | None = knob(None, "checkpoint every this many steps (default: the recipe's)")
    save_minutes: float = knob(
        10.0, "also checkpoint when this many minutes passed since the last one, 0 = never"
    )
    num_workers: int | None = knob(None, "DataLoader workers per process (default: the recipe's)")
    lr: float = knob(5e-4, "peak learning rate of AdamW")
    weight_decay: float = knob(1e-6, "AdamW weight decay")
    grad_clip: float = knob(5.0, "gradient-norm clipping")
    use_scheduler: bool = knob(True, "OneCycleLR: 10% warm-up, linear anneal")
    use_augs: bool = knob(True, "augment (exported / PointOdyssey data; the transpose augmentation for all)")
    val_clips: int = knob(64, "size of the held-out validation set")
    keep_latest: int = knob(5, "checkpoints kept per run")
    seed: int = knob(0, "seed of the model init, the data order and every augmentation")
    run_name: str = knob("", "'' = a new name from the config and the time")
    resume: bool = knob(False, "continue run_name (or the newest run in ckpt_dir) from its latest checkpoint")
    init_ckpt: str = knob("", "start from these weights only (a file or a checkpoint directory)")
    vis_head: bool = knob(False, "also train a visibility head (visibility and confidence, BCE on visibs)")
    vis_weight: float = knob(1.0, "weight of the visibility head's loss beside the tracking loss")
    head_only: bool = knob(False, "train only the visibility head; the backbone (from --init_ckpt) is frozen")
    log_dir: str = knob("./logs_train", "TensorBoard logs and config.yaml, per run")
    ckpt_dir: str = knob("./checkpoints", "checkpoints, per run")
    device: str = knob("", "'' = cuda if available, else mps, else cpu")
    fast: bool = knob(
        True, "the fast path on CUDA: bf16 autocast, channels_last, fused kernels (CPU: float32)"
    )
    recompute: bool | None = knob(
        None, "recompute activations in backward: less memory, more time (default: CPU)"
    )
    compile: bool = knob(False, "torch.compile the model")
    max_bad_steps: int = knob(5, "stop after this many non-finite losses in a row")

    def __post_init__(self) -> None:
        for name in ("B", "N", "iters", "grad_acc", "max_steps", "log_freq", "save_freq"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, "at least 1", value)
        require(self.S is None or self.S >= 2, "S", "at least 2 (frames per clip)", self.S)
        for name in ("val_freq", "num_workers"):
            value = getattr(self, name)
            require(value is None or value >= 0, name, "0 or more", value)
        if self.crop_size is not None:
            enough = min(self.crop_size) >= MIN_SIDE
            require(enough, "crop_size", f"at least {MIN_SIDE} pixels a side", self.crop_size)
        for name in ("val_clips", "keep_latest", "max_bad_steps"):
            require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        require(self.lr > 0, "lr", "positive", self.lr)
        require(self.grad_clip > 0, "grad_clip", "positive", self.grad_clip)
        require(self.weight_decay >= 0, "weight_decay", "0 or more", self.weight_decay)
        require(self.save_minutes >= 0, "save_minutes", "0 or more", self.save_minutes)
        require(self.vis_weight >= 0, "vis_weight", "0 or more", self.vis_weight)
        recipe_names = ", ".join(recipes.RECIPES)
        require(self.recipe in ("", *recipes.RECIPES), "recipe", f"one of {recipe_names}", self.recipe)
        if self.head_only and not (self.init_ckpt or self.resume):
            raise UsageError(
                "--head_only trains the visibility head on a trained backbone: give it --init_ckpt"
            )

    def recipe_knobs(self) -> recipes.Recipe:
        """This config's recipe knobs (all set once the config is resolved)."""
        return recipes.Recipe(self.recipe, **{k: getattr(self, k) for k in recipes.OFFICIAL.knobs()})


RECIPE_KNOBS = recipes.OFFICIAL.knobs()
STOP_NOTICE = "stopping: finishing this step to save a checkpoint (press Ctrl-C again to quit without one)"
EXPORT_KNOBS = ("S", "N", "crop_size")  # what an export folder fixes for every clip in it


def newest_run(ckpt_root: Path) -> str:
    runs = sorted(
        (p for p in ckpt_root.glob("*") if checkpoint.latest_checkpoint(p)), key=lambda p: p.stat().st_mtime
    )
    if not runs:
        raise FileNotFoundError(f"--resume: no run with checkpoints in {ckpt_root}")
    return runs[-1].name


def run_config(run_dir: Path) -> dict[str, Any]:
    """The config a run's newest checkpoint holds (the settings of this config that it names)."""
    path, state = checkpoint.read_newest(run_dir)
    saved = state.get("config") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return check_values({k: v for k, v in saved.items() if k in known}, TrainConfig, f"the config of {path}")


def export_layer(location: str, above: Sequence[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """(where, S, N and crop_size) of an export folder's export_config.json, or ('', {}) for other data. A
    setting of `above` (the layers over it) that the clips cannot give is a UsageError naming both values."""
    settings = export_settings(Path(location)) if location else None
    if settings is None:
        return "", {}
    where = str(Path(location) / EXPORT_CONFIG)
    layer = check_values({k: settings[k] for k in EXPORT_KNOBS}, TrainConfig, where)
    for source, values in above:
        for k in EXPORT_KNOBS:
            asked = values.get(k)
            fits = asked is None or asked == layer[k] or (k == "N" and asked <= layer[k])
            if not fits:
                raise UsageError(
                    f"--{k} {asked} ({source}) does not fit the export folder's {k}={layer[k]} ({where}); "
                    f"export again with --{k} {asked}, or drop the flag"
                )
    return where, layer


def least_free_memory(info: dist.DistInfo) -> int | None:
    """Free bytes of this process's device (None off CUDA), the least on any process so all agree."""
    free = recipes.free_memory(info.device)
    if free is not None:
        free = int(dist.all_reduce_min(torch.tensor(float(free), device=info.device)).item())
    return free


def resolve_config(cls: type[TrainConfig], flags: Flags) -> tuple[TrainConfig, list[str]]:
    """The run's config by the precedence of the module docstring, and the line that tells it."""
    files = [(f"--config {path}", read_file(path, cls)) for path in flags.files]
    users = [*files, ("flags", flags.given)]
    asked = resolve(cls, *(values for _, values in users))
    info = dist.setup(asked.device)
    run_name, resumed = asked.run_name, {}
    if asked.resume:
        run_name = run_name or newest_run(Path(asked.ckpt_dir))
        resumed = run_config(Path(asked.ckpt_dir) / run_name)
        if asked.recipe and resumed.get("recipe", asked.recipe) != asked.recipe:
            raise UsageError(
                f"--recipe {asked.recipe}: run {run_name} trains recipe {resumed['recipe']}, which a resumed "
                "run keeps; give the settings to change as flags"
            )
    free = least_free_memory(info)
    name = asked.recipe or resumed.get("recipe", "")
    base, why = (recipes.RECIPES[name], "as asked") if name else recipes.choose(info.device, free)
    export_where, export = export_layer(asked.dataset_location, users)
    layers = [
        (f"recipe {base.name}", {k: getattr(base, k) for k in RECIPE_KNOBS}),
        (export_where, export),
        (f"run {run_name}", resumed),
        *users,
    ]
    config = resolve(cls, *(values for _, values in layers), {"recipe": base.name})
    if config.recompute is None:
        config = dataclasses.replace(
            config, recompute=recipes.recompute_pays(config.recipe_knobs(), info.device, free)
        )
    if not run_name:
        stamp = time.strftime("%Y%m%d_%H%M%S")
        run_name = f"{config.B}_{config.S}_{config.N}_i{config.iters}_{config.lr:.0e}_{stamp}"
    config = dataclasses.replace(config, run_name=run_name)
    return config, [recipe_line(config, why, layers)] if info.is_main else []


def recipe_line(config: TrainConfig, why: str, layers: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The recipe of the run and where each of its knobs that is not the recipe's came from."""
    line = f"recipe {config.recipe}: {config.recipe_knobs().describe()} ({why}); "
    line += f"activations {'recomputed' if config.recompute else 'stored'} (--recompute)"
    for source, values in layers[1:]:
        if named := [f"--{k}" if source == "flags" else k for k in values if k in RECIPE_KNOBS]:
            line += f"; from {source}: {', '.join(named)}"
    if config.recipe != recipes.OFFICIAL.name:
        line += f". {recipes.official_hint()}"
    return line


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
            worker_init_fn=ignore_stop_signals,
            pin_memory=info.device.type == "cuda",
            persistent_workers=False,
        )
        yield from loader
        epoch, offset = epoch + 1, 0


def validation_due(step: int, val_freq: int) -> bool:
    """Validation runs after step 1 and every val_freq steps, the same steps in a resumed run."""
    return val_freq > 0 and (step == 1 or step % val_freq == 0)


def open_data(cfg: TrainConfig, processes: int = 1) -> tuple[Dataset, Dataset | None]:
    """(train, val) datasets: synthetic clips when there is no dataset_location, an export folder (clip
    folders with rgb.mp4 + track.npz; its last clips are held out), or a PointOdyssey root (train/ and, if
    present, val/; without one val is None). Each split holds a batch for every process, or ValueError
    says what each side needs."""
    S, N, crop, augs, seed = cfg.S, cfg.N, cfg.crop_size, cfg.use_augs, cfg.seed
    need, validating = cfg.B * processes, cfg.val_freq > 0
    if not cfg.dataset_location:
        val_clips = max(cfg.val_clips, need)
        return (
            SyntheticClips(S, N, crop, length=100_000, seed=seed, use_augs=augs),
            SyntheticClips(S, N, crop, length=val_clips, seed=seed + 1_000_003) if validating else None,
        )
    root = Path(cfg.dataset_location)
    if not root.is_dir():
        raise FileNotFoundError(f"--dataset_location {root} is not a directory")
    if any(root.glob("*/track.npz")):
        train = ExportDataset(str(root.parent), root.name, S, N, crop, use_augs=augs, seed=seed)
        enough(len(train.clips), need, f"export {root}", validating)
        if not validating:
            return train, None
        val = ExportDataset(str(root.parent), root.name, S, N, crop, use_augs=False, seed=seed + 1)
        held_out = max(need, min(cfg.val_clips, len(train.clips) // 10))  # the last clips are held out
        train.select(slice(None, -held_out))
        val.select(slice(-held_out, None))
        return train, val
    if (root / "train").is_dir():
        train = PointOdysseyDataset(str(root), "train", S, N, crop_size=crop, use_augs=augs, seed=seed)
        enough(len(train), need, f"{root / 'train'}", validating=False)
        if not validating:
            return train, None
        if not (root / "val").is_dir():
            log.warning("%s has no val/ split: validation is off", root)
            return train, None
        val = PointOdysseyDataset(str(root), "val", S, N, crop_size=crop, use_augs=False, seed=seed + 1)
        enough(len(val), need, f"{root / 'val'}", validating=False)
        return train, val
    raise FileNotFoundError(
        f"{root} is neither an export folder (<id>/rgb.mp4 + track.npz) nor a PointOdyssey root (train/)"
    )


def enough(count: int, need: int, what: str, validating: bool) -> None:
    """ValueError unless `count` clips give a batch of `need` to training (and, held out, to validation)."""
    both = 2 * need if validating else need
    if count >= both:
        return
    per = f"B x processes = {need} clips"
    if validating:
        raise ValueError(
            f"{what} has {count} clips: too few for training and a held-out validation split, which each "
            f"need {per}; pass --val_freq 0 to train on all of them, or a smaller --B"
        )
    raise ValueError(f"{what} has {count} clips: too few for one batch ({per}); pass a smaller --B")


def initial_trajs(trajs_g: torch.Tensor, g: torch.Generator, H: int, W: int) -> torch.Tensor:
    """The official training init: random tracks blended with the truth, half of them replaced by
    zero-velocity tracks, frame 0 exact. Each clip's draws are taken in turn, so a clip starts alike whether
    it is trained in one batch or in micro-batches."""
    B, S, N, _ = trajs_g.shape
    dev = trajs_g.device
    starts = []
    for clip in trajs_g:  # S,N,2
        rand = torch.rand(S, N, 2, generator=g).to(dev) * torch.tensor([W - 1.0, H - 1.0], device=dev)
        coeff = torch.rand(1, N, 1, generator=g).to(dev)
        keep = (torch.rand(1, N, 1, generator=g) > 0.5).to(dev, clip.dtype)
        blend = rand * coeff + clip * (1 - coeff)  # S,N,2
        start = blend * keep + clip[:1].expand(S, N, 2) * (1 - keep)
        start[0] = clip[0]
        starts.append(start)
    return torch.stack(starts)  # B,S,N,2


@dataclass
class StepResult:
    loss: torch.Tensor
    trajs_e: torch.Tensor  # B,S,N,2 detached final prediction
    batch: ClipBatch  # as fed to the model (after the transpose augmentation)
    vis_e: torch.Tensor | None = None  # B,S,N detached visibility logits, with a visibility head


def run_model(
    model: nn.Module,
    batch: ClipBatch,
    iters: int,
    g: torch.Generator,
    train: bool,
    vis_weight: float = 1.0,
    zero_velocity: bool = False,
    transpose: bool = False,
) -> StepResult:
    """One forward + loss. In training, tracks start from the official random init, and with `transpose`
    the clips are seen transposed (H<->W); validation, and training with zero_velocity, start from zero
    velocity as inference does. With a visibility head the loss adds vis_weight times its visibility_loss."""
    frames, trajs_g, visibs, valids = batch  # frames B,S,H,W,3 uint8
    if train and transpose:
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


@dataclass
class TrainState:
    """What a training step updates, and how."""

    net: nn.Module  # the model as trained (wrapped by DistributedDataParallel or compiled where it is)
    params: list[nn.Parameter]  # the trained parameters
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig


class TrainStep(NamedTuple):
    loss: float  # the loss of the step's clips, as one batch
    result: StepResult | None  # of the last micro-batch
    itime: float  # seconds in forward and backward
    skipped: bool  # a non-finite loss or gradient: no update was made


def train_step(state: TrainState, micro_batches: Sequence[ClipBatch], g: torch.Generator) -> TrainStep:
    """Forward and backward over the micro-batches of one optimizer step, gradient clipping and the update.

    Args:
        state: the model, its trained parameters, the optimizer and the config.
        micro_batches: the clips of one step. Each counts by its share of the step's valid annotations
            (the losses are means over them), so the gradients are those of one batch of these clips.
        g: draws one transposition for the whole step, then each clip's initial tracks in turn
            (initial_trajs).

    Returns:
        The step's TrainStep; a non-finite loss or gradient skips the update (skipped=True).
    """
    cfg, began = state.cfg, time.time()
    state.net.train()
    transpose = bool(torch.rand((), generator=g) < 0.5)
    valid = torch.stack([batch.valids.sum() for batch in micro_batches])  # K
    shares = valid / valid.sum().clamp(min=1.0)  # K
    total, res = 0.0, None
    for batch, share in zip(micro_batches, shares):
        # in head-only training the head learns on tracks as inference makes them
        res = run_model(
            state.net,
            batch,
            cfg.iters,
            g,
            train=True,
            vis_weight=cfg.vis_weight,
            zero_velocity=cfg.head_only,
            transpose=transpose,
        )
        if dist.all_reduce_mean(torch.isfinite(res.loss).float()).item() < 1.0:
            # no backward through non-finite tracks (their sampling's backward reads out of bounds); every
            # rank sees the same mean and skips, so DDP never waits on a missing backward
            state.optimizer.zero_grad(set_to_none=True)
            return TrainStep(float("nan"), res, time.time() - began, True)
        (res.loss * share).backward()
        total += float(res.loss.detach() * share)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, cfg.grad_clip)
    skipped = not torch.isfinite(grad_norm).item()
    if not skipped:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return TrainStep(total, res, time.time() - began, skipped)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """All randomness of a step comes from (seed, step, rank), so resuming needs no RNG state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)


def build_training(cfg: TrainConfig, info: dist.DistInfo) -> tuple[TrainState, nn.Module, Any, int]:
    """(the state a step updates, the bare model, the scheduler, the step to start after)."""
    weights = None if cfg.resume else cfg.init_ckpt or None
    model = build_model(weights, info.device, "train", cfg.fast, vis_head=cfg.vis_head or cfg.head_only)
    model.set_recompute(cfg.recompute)
    model.norm.requires_grad_(False)  # unused by the forward; kept only for checkpoint compatibility
    if cfg.head_only:
        model.requires_grad_(False)
        model.vis_head.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8)
    scheduler = None
    if cfg.use_scheduler:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=cfg.max_steps + 100,
            pct_start=0.1,
            cycle_momentum=False,
            anneal_strategy="linear",
        )
    start = (
        checkpoint.load(Path(cfg.ckpt_dir) / cfg.run_name, model, optimizer, scheduler) if cfg.resume else 0
    )
    net = model
    if info.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    net = torch.compile(net) if cfg.compile else net
    return TrainState(net, params, optimizer, cfg), model, scheduler, start


def streams(train_data: Dataset, val_data: Dataset | None, cfg: TrainConfig, info: dist.DistInfo, start: int):
    """The training and validation batch streams of a run at `start`, where an uninterrupted run would be."""
    train_iter = batches(train_data, cfg.B, cfg.num_workers, info, cfg.seed, start * cfg.grad_acc)
    if not cfg.val_freq or val_data is None:
        return train_iter, None
    done = sum(validation_due(k, cfg.val_freq) for k in range(1, start + 1))
    return train_iter, batches(val_data, cfg.B, 0, info, cfg.seed + 1, done)


def skipped_report(train_data: Dataset, val_data: Dataset | None) -> str:
    """How many unreadable sequences or clips each split skipped, and which."""
    lines = []
    for split, data in (("training", train_data), ("validation", val_data)):
        skipped = skipped_data(data)
        lines.append(f"{split} data: {len(skipped)} unreadable sequence(s) or clip(s) skipped")
        lines += [f"  {line}" for line in skipped]
    return "\n".join(lines)


def skipped_data(data: Dataset | None) -> list[str]:
    """Sequences or clips of a reader left out as unreadable: at indexing, or found while reading by this
    process or its DataLoader workers."""
    if not isinstance(data, (ExportDataset, PointOdysseyDataset)):
        return []
    return data.skipped + [f"{name}: failed to read (see its warning)" for name in data.unreadable.found()]


class Saver:
    """The main process's checkpoints: every save_freq steps, whenever save_minutes have passed since the
    last one, and at the final (or interrupted) step; each with the run's config."""

    def __init__(
        self,
        run_ckpt: Path,
        model: nn.Module,
        optimizer,
        scheduler,
        cfg: TrainConfig,
        enabled: bool,
        start: int,
    ) -> None:
        self.run_ckpt, self.model, self.optimizer, self.scheduler = run_ckpt, model, optimizer, scheduler
        self.cfg, self.enabled = cfg, enabled
        self.last_step, self.last_time, self.path = start, time.monotonic(), None

    def after(self, step: int, final: bool) -> None:
        cfg = self.cfg
        overdue = cfg.save_minutes > 0 and time.monotonic() - self.last_time >= 60 * cfg.save_minutes
        if not self.enabled or step == self.last_step or not (final or overdue or step % cfg.save_freq == 0):
            return
        self.path = checkpoint.save(
            self.run_ckpt,
            self.model,
            self.optimizer,
            self.scheduler,
            step,
            cfg.keep_latest,
            config=dataclasses.asdict(cfg),
        )
        self.last_step, self.last_time = step, time.monotonic()


def resume_command(cfg: TrainConfig) -> str:
    ckpt_dir = "" if cfg.ckpt_dir == TrainConfig.ckpt_dir else f" --ckpt_dir {cfg.ckpt_dir}"
    return f"python train.py --resume --run_name {cfg.run_name}{ckpt_dir}"


def main(cfg: TrainConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = dist.setup(cfg.device)
    torch.manual_seed(cfg.seed)
    if not cfg.dataset_location and info.is_main:
        print(
            "training on the built-in synthetic clips; for PointOdyssey pass --dataset_location "
            "<PointOdyssey root or export folder> (see README)"
        )
    train_data, val_data = open_data(cfg, info.world_size)
    state, model, scheduler, start = build_training(cfg, info)
    run_ckpt, run_log = Path(cfg.ckpt_dir) / cfg.run_name, Path(cfg.log_dir) / cfg.run_name
    logger = Logger(run_log, enabled=info.is_main)
    if info.is_main:
        print(parameter_table(model))
        run_log.mkdir(parents=True, exist_ok=True)
        (run_log / "config.yaml").write_text(to_yaml(cfg))
        precision = " (fast path, bf16)" if model.precision.dtype != torch.float32 else ""
        print(
            f"run {cfg.run_name}: {'resuming at step ' + str(start) if cfg.resume else 'new'}; "
            f"device {info.device}{precision}; {info.world_size} process(es)"
        )
    train_iter, val_iter = streams(train_data, val_data, cfg, info, start)
    pools_t, pools_v, pace, bad_steps = RunningMeans(1000), RunningMeans(1000), Pace(), 0
    saver = Saver(run_ckpt, model, state.optimizer, scheduler, cfg, info.is_main, start)
    with StopRequest(STOP_NOTICE if info.is_main else None) as stop:
        for step in range(start + 1, cfg.max_steps + 1):
            began = time.time()
            micro_batches = [next(train_iter).to(info.device) for _ in range(cfg.grad_acc)]
            rtime = time.time() - began
            out = train_step(state, micro_batches, step_generator(cfg.seed, step, info.rank))
            bad_steps = bad_steps + 1 if out.skipped else 0
            if out.skipped:
                log.warning(
                    "step %d: non-finite loss or gradient; step skipped (%d in a row)", step, bad_steps
                )
                if bad_steps >= cfg.max_bad_steps:
                    raise RuntimeError(f"{bad_steps} non-finite steps in a row at step {step}; stopping")
            else:
                pools_t.update({**metrics_of(out.result), "loss": out.loss})
            if scheduler is not None:
                scheduler.step()
            if info.is_main:
                lr = state.optimizer.param_groups[0]["lr"]
                log_step(logger, step, out, {"train": pools_t, "val": pools_v}, lr, cfg)
                pace.tick()
                print(
                    step_line(cfg, step, out, rtime, time.time() - began, pools_t, pools_v, pace), flush=True
                )
            if val_iter is not None and validation_due(step, cfg.val_freq):
                pools_v.update(
                    validate(state.net, next(val_iter).to(info.device), cfg, logger, step, info.is_main)
                )
            stopping = stop.agreed(info.device)
            saver.after(step, final=stopping or step == cfg.max_steps)
            if stopping:
                logger.close()
                if info.is_main:
                    print(
                        f"interrupted at step {step}; saved {saver.path}; go on with: {resume_command(cfg)}"
                    )
                dist.teardown()
                raise SystemExit(stop.status)
    if info.is_main and cfg.dataset_location:
        print(skipped_report(train_data, val_data))
    logger.close()
    dist.teardown()


def step_line(
    cfg: TrainConfig,
    step: int,
    out: TrainStep,
    rtime: float,
    seconds: float,
    pools_t: RunningMeans,
    pools_v: RunningMeans,
    pace: Pace,
) -> str:
    """The step's line: data and model time, loss, running means, the pace and the time left."""
    return (
        f"{cfg.run_name}; step {step:06d}/{cfg.max_steps}; rtime {rtime:.2f}; itime {out.itime:.2f}; "
        f"loss {out.loss:.3f}; loss_t {pools_t.mean('loss'):.2f}; d_t {pools_t.mean('d_avg'):.1f}; "
        f"d_v {pools_v.mean('d_avg'):.1f}; time {seconds:.2f}; "
        f"{pace.steps_per_s():.2f} steps/s; eta {pace.eta(cfg.max_steps - step)}"
    )


def log_step(
    logger: Logger, step: int, out: TrainStep, means: dict[str, RunningMeans], lr: float, cfg: TrainConfig
) -> None:
    """TensorBoard: the running means every log_freq / 4 steps, the tracks as a gif every log_freq."""
    if step % max(cfg.log_freq // 4, 1) == 0:
        for split, pool in means.items():
            logger.scalars(step, pool.means(), f"{split}/")
        logger.scalars(step, {"lr": lr}, "_/")
    if step % cfg.log_freq == 0 and not out.skipped:
        logger.gif("2_outputs/trajs_e_on_rgbs", tracks_gif(out.result), step, fps=min(cfg.S, 8))


@torch.no_grad()
def validate(
    net: nn.Module, batch: ClipBatch, cfg: TrainConfig, logger: Logger, step: int, report: bool
) -> dict[str, float]:
    """Metrics of one held-out batch, tracked from zero velocity with twice the iterations; the main
    process prints them on a line of their own (d_v on the step lines lags)."""
    net.eval()
    res = run_model(net, batch, 2 * cfg.iters, torch.Generator(), train=False, vis_weight=cfg.vis_weight)
    if step % cfg.log_freq == 0:
        logger.gif("val/trajs_e_on_rgbs", tracks_gif(res), step)
    val = {**metrics_of(res), "loss": res.loss.item()}
    if report:
        line = f"{cfg.run_name}; validation at step {step}: d_avg {val['d_avg']:.1f}"
        if "occlusion_accuracy" in val:
            line += f"; occlusion_accuracy {val['occlusion_accuracy']:.1f}"
            line += f" (always visible: {val['occlusion_accuracy_always_visible']:.1f})"
        print(f"{line}; loss {val['loss']:.2f}", flush=True)
    return val


if __name__ == "__main__":
    run(main, TrainConfig, resolve_config)
