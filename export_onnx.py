"""Write one PIPs++ window as an ONNX graph for onnxruntime (the graph: tracking/onnx_export.py).

python export_onnx.py                                         # reference model, the CPU setting
python export_onnx.py --image_size 512,896 --iters 16 --S 64  # the full setting
python export_onnx.py --random_weights --out random.onnx      # smoke run without the checkpoint
python demo.py --filename video.mp4 --onnx pips2.onnx         # track with it

The graph is opset 18. The frame size and the iterations are fixed in it (the tracker resizes every frame
to one size, and fixed sides let onnxruntime fold the encoder's resize and plan its memory); S and the number
of points are dynamic (a pass shorter than S runs shorter windows; any number of queries). The export's
settings are stored in the model's metadata, and the tracker takes its window length, iterations and image
size from there and refuses other frames or iterations with one line naming the file. Exporting takes a
minute or more on a small CPU and needs torch 2.6 or later and the onnx and onnxscript packages (pip install
onnx onnxscript); running the graph needs only onnxruntime.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tracking.frames import require_size
from tracking.onnx_export import OPSET, export_window
from tracking.predictor import build_model
from tracking.settings import CPU_SETTING
from utils.checkpoint import REFERENCE_DIR
from utils.config import knob, require, run


@dataclass(frozen=True)
class ExportConfig:
    out: str = knob("pips2.onnx", "the ONNX file to write")
    image_size: tuple[int, int] = knob(CPU_SETTING.image_size, "H,W of the frames the graph takes")
    iters: int = knob(CPU_SETTING.iters, "refinement iterations (unrolled in the graph)")
    S: int = knob(CPU_SETTING.S, "the window length the tracker will use (the graph runs any)")
    init_ckpt: str = knob(REFERENCE_DIR, "checkpoint file, or folder of model-*.pth", aliases=("init_dir",))
    random_weights: bool = knob(False, "untrained model (seed 0), no checkpoint needed (smoke runs)")
    vis_head: bool | None = knob(None, "with the visibility head; none = as the checkpoint has it")
    opset: int = knob(OPSET, "ONNX opset")

    def __post_init__(self) -> None:
        require(self.iters >= 1, "iters", "at least 1", self.iters)
        require(self.S >= 3, "S", "at least 3", self.S)
        require(self.opset >= 16, "opset", "16 or more (GridSample)", self.opset)
        require_size(self.image_size, multiple=8)


def main(cfg: ExportConfig) -> None:
    if cfg.random_weights:
        torch.manual_seed(0)
    checkpoint = None if cfg.random_weights else cfg.init_ckpt
    model = build_model(checkpoint, "cpu", fast=False, vis_head=cfg.vis_head, log=print)
    began = time.perf_counter()
    spec = export_window(model, cfg.out, cfg.S, cfg.image_size, cfg.iters, cfg.opset)
    seconds = time.perf_counter() - began
    size = Path(cfg.out).stat().st_size / 2**20
    print(f"wrote {cfg.out} ({size:.0f} MiB, opset {spec.opset}, checked) in {seconds:.0f} s")
    print(f"window: {spec.height}x{spec.width} frames, {spec.iters} iterations, S={spec.S}, any N")


if __name__ == "__main__":
    run(main, ExportConfig)
