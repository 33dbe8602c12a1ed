"""The onnxruntime backend: a window exported by export_onnx.py (tracking/onnx_export.py) run behind the
window protocol of nets/tracker.py, so PipsTracker's frame sources, window chaining, queries at any frame
and outputs are those of the PyTorch model.

    tracker = PipsTracker.from_onnx("pips2.onnx")      # S, iters and image size are the export's
    tracks = tracker("video.mp4", grid_size=16)

Sessions use onnxruntime's CUDA execution provider where the installed onnxruntime has it, else the CPU's.
Frames, tracks and templates stay torch tensors between windows; only the network runs in onnxruntime.
"""

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn as nn

from nets.pips2 import Feats, PipsOutput
from tracking.onnx_export import INPUTS, METADATA_KEY, WindowSpec

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def onnxruntime() -> ModuleType:
    """The onnxruntime module, or an OSError saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OSError("the ONNX backend needs onnxruntime: pip install onnxruntime") from None
    return ort


EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # what exporting on demand and running need
EXPORT_TORCH = (2, 6)


def can_export_and_run() -> bool:
    """Whether the packages to export a window and run it are installed (and torch's exporter takes
    dynamic shapes: torch 2.6 or later)."""
    recent = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= EXPORT_TORCH
    return recent and all(importlib.util.find_spec(name) is not None for name in EXPORT_PACKAGES)


def use_onnxruntime(runtime: str, device: torch.device, log: Callable[[str], None]) -> bool:
    """Whether the network runs in onnxruntime for `runtime` ('auto', 'torch' or 'onnxruntime'): as asked,
    and with auto on a CPU where it is installed (`log` says how to get it where it is not)."""
    ready = can_export_and_run()
    install = f"pip install {' '.join(EXPORT_PACKAGES)}"
    if runtime == "onnxruntime" and not ready:
        raise OSError(f"--runtime onnxruntime needs {', '.join(EXPORT_PACKAGES)}: {install}")
    if runtime == "auto" and device.type == "cpu" and not ready:
        log(f"runtime: PyTorch; {install} for onnxruntime, faster on a CPU")
    return runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu" and ready)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def open_session(
    path: str | Path, providers: Sequence[str] | None = None, threads: int = 0, optimize: bool = True
) -> tuple:
    """(onnxruntime.InferenceSession, WindowSpec) of an export, or one-line errors naming the file: missing,
    not an ONNX model onnxruntime can load, or an ONNX model without this project's window metadata.
    optimize=False skips onnxruntime's graph optimisations (a session only read, never run)."""
    ort = onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ONNX model: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: constant folding reports ops it leaves alone
    # idle threads sleep instead of spinning: on a machine shared with other work, spinning threads take
    # the cores the working ones need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    available = ort.get_available_providers()
    chosen = [p for p in (providers or PREFERRED_PROVIDERS) if p in available]
    try:
        session = ort.InferenceSession(str(path), options, providers=chosen or None)
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
        raise ValueError(f"{path} is not an ONNX model onnxruntime can load: {_first_line(err)}") from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    names = tuple(i.name for i in session.get_inputs())
    if text is None or names != INPUTS:
        raise ValueError(
            f"{path} is not a PIPs++ window exported by export_onnx.py (no {METADATA_KEY} metadata)"
        )
    try:
        spec = WindowSpec(**json.loads(text))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: unreadable {METADATA_KEY} metadata ({_first_line(err)})") from None
    return session, spec


def read_spec(path: str | Path) -> WindowSpec:
    """The WindowSpec an export was made with (errors as open_session's)."""
    return open_session(path, ("CPUExecutionProvider",), optimize=False)[1]


class OnnxWindow(nn.Module):
    """An exported window as a module that PipsTracker runs like Pips: (trajs_e0, rgbs, iters, feat_init) ->
    PipsOutput with tracks, feats and, with the visibility head, vis and conf. The graph gives only the
    result, so preds and coords_anim are empty. It holds no parameters and runs where its session does.

    Args:
        path: the .onnx file of export_onnx.py.
        providers: onnxruntime execution providers in order of preference (default PREFERRED_PROVIDERS,
            those installed).
        threads: onnxruntime's intra-op threads (0 = its default, one per core).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.session, self.spec = open_session(self.path, providers, threads)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def check(self, image_size: Sequence[int], iters: int) -> None:
        """ValueError naming the file when it was exported for other frames or another iteration count."""
        spec = self.spec
        H, W = image_size
        if (H, W) != (spec.height, spec.width):
            raise ValueError(
                f"{self.path} was exported for {spec.height}x{spec.width} frames, not {H}x{W}: "
                f"export again with --image_size {H},{W}, or track at {spec.height},{spec.width}"
            )
        if iters != spec.iters:
            raise ValueError(
                f"{self.path} was exported with {spec.iters} iterations, not {iters}: "
                f"export again with --iters {iters}, or track with {spec.iters}"
            )

    def forward(
        self,
        trajs_e0: torch.Tensor,
        rgbs: torch.Tensor,
        iters: int = 3,
        feat_init: Feats | None = None,
        beautify: bool = False,
    ) -> PipsOutput:
        """As Pips.forward (without beautify); each of the B videos is one run of the graph."""
        if beautify:
            raise ValueError(f"{self.path} was exported without beautify")
        self.check(rgbs.shape[-2:], iters)
        B, S, N, _ = trajs_e0.shape
        if S < 2:
            raise ValueError(f"a window needs at least 2 frames, got {S}")
        C = self.spec.latent_dim
        stacked = (
            np.zeros((3, B, S, N, C), np.float32) if feat_init is None else _numpy(torch.stack(feat_init))
        )
        outs = []
        for b in range(B):
            feed = {
                "rgbs": _numpy(rgbs[b : b + 1]),
                "trajs_e0": _numpy(trajs_e0[b : b + 1]),
                "feat_init": np.ascontiguousarray(stacked[:, b : b + 1, :S]),
                "has_feat_init": np.array(feat_init is not None),
            }
            outs.append(self.session.run(None, feed))
        device = trajs_e0.device
        joined = [
            np.concatenate(parts, axis=1 if name == "feats" else 0)
            for name, parts in zip(self.outputs, zip(*outs))
        ]
        tensors = dict(zip(self.outputs, (torch.from_numpy(x).to(device) for x in joined)))
        tracks, feats = tensors["tracks"], tuple(tensors["feats"].unbind(0))
        vis, conf = tensors.get("vis"), tensors.get("conf")
        return PipsOutput(tracks, [], feats, vis, conf)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy())
