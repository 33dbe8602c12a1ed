"""Evaluate PIPs++ on whole PointOdyssey sequences with the official protocol: queries are the ground
truth at frame 0, frames are read window by window and resized to image_size, and d_avg, survival_16
and median_l2 are measured at that resolution on the valid points (occluded ones included)."""

import torch

from datasets.pointodyssey import FullSequence, PointOdysseyFullSeq
from utils.cli import explain_flags, run
from utils.evaluation import (
    EvalVideo,
    ImageFiles,
    check_image_size,
    evaluate_and_report,
    load_model,
    scale_tracks,
)


def to_eval_video(seq: FullSequence, size: tuple[int, int], device: torch.device) -> EvalVideo:
    return EvalVideo(
        name=seq.seq,
        frames=ImageFiles(seq.rgb_paths, size, device),
        image_hw=size,
        trajs_g=scale_tracks(seq.trajs, seq.image_hw, size),
        valids=seq.valids,
    )


@explain_flags
def main(
    *,
    dataset_location: str = "data/pointodyssey",  # PointOdyssey root holding <dset>/<sequence>/
    dset: str = "test",  # split to evaluate
    S: int = 128,  # frames per window
    N: int = 256,  # points per sequence (at most)
    iters: int = 16,  # refinement iterations per window
    image_size: tuple[int, int] = (512, 896),  # H,W the frames are resized to (multiples of 32)
    max_videos: int | None = None,  # evaluate only the first sequences (None = all)
    init_dir: str = "./reference_model",  # checkpoint file, or directory of model-*.pth (latest is used)
    device: str = "",  # e.g. cuda, cuda:1, cpu; empty = cuda if available
    log_dir: str = "./logs_test_on_pod",  # TensorBoard logs and results.json
    fast: bool = True,  # the fast path (float16, fused kernels) on CUDA; CPU always runs exact float32
    log_gifs: bool = False,  # also log tracks on frames to TensorBoard
    random_weights: bool = False,  # skip the checkpoint (smoke runs)
) -> None:
    config = dict(locals())
    size = check_image_size(image_size)
    model, dev = load_model(init_dir, device, random_weights, fast)
    dataset = PointOdysseyFullSeq(dataset_location, dset=dset, N=N)
    num_videos = len(dataset) if max_videos is None else min(max_videos, len(dataset))
    videos = (to_eval_video(dataset[i], size, dev) for i in range(num_videos))
    evaluate_and_report(
        model, videos, num_videos, S=S, iters=iters, log_dir=log_dir, log_gifs=log_gifs, config=config
    )


if __name__ == "__main__":
    run(main)
