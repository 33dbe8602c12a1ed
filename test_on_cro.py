"""Evaluate PIPs++ on CroHD (HT21 head tracks) with the official protocol: clips of up to 1000 frames,
head-box centres visible at frames 0 and 1 as queries, frames read window by window and resized to
image_size, and d_avg, survival_16 and median_l2 at that resolution on the valid frames."""

from datasets.crohd import CroHD
from tracking.evaluate import EvalProtocol, check_image_size, evaluate_and_report
from utils.cli import explain_flags, run


@explain_flags
def main(
    *,
    dataset_location: str = "data/crohd",  # folder holding HT21/train/HT21-0x/
    clip_len: int = 1000,  # frames per clip; clips start every clip_len // 2 frames
    min_clip_len: int = 128,  # shorter clips (at the end of a sequence) are skipped
    S: int = 128,  # frames per window
    iters: int = 16,  # refinement iterations per window
    image_size: tuple[int, int] = (512, 896),  # H,W the frames are resized to (multiples of 32)
    max_videos: int | None = None,  # evaluate only the first clips (None = all)
    init_dir: str = "./reference_model",  # checkpoint file, or directory of model-*.pth (latest is used)
    device: str = "",  # e.g. cuda, cuda:1, cpu; empty = cuda if available
    log_dir: str = "./logs_test_on_cro",  # TensorBoard logs and results.json
    fast: bool = True,  # the fast path (float16, fused kernels) on CUDA; CPU always runs exact float32
    log_gifs: bool = False,  # also log tracks on frames to TensorBoard
    random_weights: bool = False,  # skip the checkpoint (smoke runs)
) -> None:
    config = dict(locals())
    protocol = EvalProtocol(check_image_size(image_size), resize="cv2", S=S, iters=iters)
    evaluate_and_report(CroHD(dataset_location, S=clip_len, S_min=min_clip_len), protocol, config)


if __name__ == "__main__":
    run(main)
