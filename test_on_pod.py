"""Evaluate PIPs++ on whole PointOdyssey sequences with the official protocol: queries are the ground
truth at frame 0, frames are read window by window and resized to image_size, and d_avg, survival_16
and median_l2 are measured at that resolution on the valid points (occluded ones included)."""

from datasets.pointodyssey import PointOdysseyFullSeq
from tracking.evaluate import EvalProtocol, check_image_size, evaluate_and_report
from utils.cli import explain_flags, run


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
    protocol = EvalProtocol(check_image_size(image_size), resize="cv2", S=S, iters=iters)
    evaluate_and_report(PointOdysseyFullSeq(dataset_location, dset=dset, N=N), protocol, config)


if __name__ == "__main__":
    run(main)
