"""One window of Pips as an ONNX graph, for the onnxruntime backend (tracking/onnx_backend.py).

The graph takes

    rgbs           1,S,3,H,W  float32 RGB 0..255 at the model's resolution
    trajs_e0       1,S,N,2    float32 initial tracks, x,y pixels of rgbs; frame 0 holds the queries
    feat_init      3,1,S,N,C  float32 the templates (feats1, feats2, feats4) of the previous window
    has_feat_init  bool       False for the first window of a pass: then feat_init is ignored and the
                              templates are sampled at frame 0

and gives `tracks` 1,S,N,2 and `feats` 3,1,S,N,C (the next window's feat_init), and with the visibility
head also `vis` and `conf` 1,S,N (logits), as Pips.forward does on the exact float32 path.

Shapes: N is dynamic (the points of a call). S is dynamic too, because the tracker's windows are shorter
than its window length wherever a pass (a short video, or the backward pass of a query at frame t) holds
fewer frames; the graph is traced at S >= 3, and a 2-frame window runs the same graph (checked against a
graph traced at S = 2). H and W are fixed at export: the tracker resizes every frame to one image size,
and fixed sides let the runtime fold the encoder's resize and pyramid sizes and plan its memory. The
iterations are unrolled, so their count is fixed too. All of these, the opset and the window length the
export was made for are stored in the model's metadata (key METADATA_KEY, JSON) for the runtime to check.
"""

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from nets.corr import CorrBlock, build_pyramid
from nets.pips2 import Pips

OPSET = 18  # GridSample (4-D) since 16; 18 is what onnxruntime 1.14 and later run on every provider
METADATA_KEY = "pips2_window"
INPUTS = ("rgbs", "trajs_e0", "feat_init", "has_feat_init")
MAX_SIDE = 1 << 16  # the largest S and N the graph is traced for (the tracker's windows are far shorter)


@dataclass(frozen=True)
class WindowSpec:
    """What an exported window was made for: stored in the ONNX metadata and checked by the runtime."""

    S: int  # the tracker's window length (the graph runs any S from 2 up)
    height: int  # frame size the graph takes
    width: int
    iters: int  # refinement iterations, unrolled in the graph
    latent_dim: int  # C of the template features
    vis_head: bool  # whether the graph also gives vis and conf
    opset: int = OPSET

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class WindowGraph(nn.Module):
    """Pips.forward for one window with tensors only, as the graph above: the first window's templates
    are chosen by a flag instead of feat_init=None, and the frames are encoded in one call."""

    def __init__(self, model: Pips, iters: int) -> None:
        super().__init__()
        self.model = model
        self.iters = iters

    def forward(
        self, rgbs: torch.Tensor, trajs_e0: torch.Tensor, feat_init: torch.Tensor, has_feat_init: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        B, S, _, H, W = rgbs.shape
        model = self.model
        fmaps = model._encode_frames(rgbs.reshape(B * S, 3, H, W))  # BS,C,H8,W8
        fmaps = fmaps.reshape(B, S, *fmaps.shape[1:])  # B,S,C,H8,W8
        corr = CorrBlock(build_pyramid(fmaps, model.corr_levels), model.corr_radius, False)
        coords = trajs_e0 / float(model.stride)  # B,S,N,2 feature pixels
        frame0 = torch.zeros(S, dtype=torch.long, device=rgbs.device)
        first = model.sample_templates(fmaps, coords, frame0)  # B,S,N,C
        feats = tuple(torch.where(has_feat_init, feat_init, first[None]).unbind(0))  # 3 x B,S,N,C
        _, coords, feats = model.refine(fmaps, corr, coords, feats, self.iters)
        result = (coords * model.stride, torch.stack(feats))
        if model.vis_head is None:
            return result
        return (*result, *model.visibility(corr, feats, coords, fmaps.shape[-2:]))


def export_window(
    model: Pips, path: str | Path, S: int, image_size: tuple[int, int], iters: int, opset: int = OPSET
) -> WindowSpec:
    """Write one window of `model` (exact float32 path, on the CPU) to the ONNX file `path`, check it with
    onnx.checker and store its WindowSpec in the metadata. Needs torch 2.6 or later and the onnx and
    onnxscript packages."""
    import onnx

    if S < 3:
        raise ValueError(f"the window length S must be at least 3 to export, got {S}")
    H, W = image_size
    C = model.latent_dim
    spec = WindowSpec(S, H, W, iters, C, model.vis_head is not None, opset)
    model = model.cpu().eval().set_fast(False)
    g = torch.Generator().manual_seed(0)
    N = 4  # traced with 4 points; any N runs
    example = (
        torch.rand(1, S, 3, H, W, generator=g) * 255,
        torch.rand(1, 1, N, 2, generator=g).mul(torch.tensor([W - 1.0, H - 1.0])).repeat(1, S, 1, 1),
        torch.zeros(3, 1, S, N, C),
        torch.tensor(False),
    )
    frames = torch.export.Dim("S", min=3, max=MAX_SIDE)
    points = torch.export.Dim("N", min=1, max=MAX_SIDE)
    dims = ({1: frames}, {1: frames, 2: points}, {2: frames, 3: points}, None)
    outputs = ["tracks", "feats"] + ["vis", "conf"] * spec.vis_head
    with torch.no_grad(), _quiet_exporter():
        onnx_program = torch.onnx.export(
            WindowGraph(model, iters).eval(),
            example,
            input_names=list(INPUTS),
            output_names=outputs,
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dims,
            optimize=False,
            verbose=False,
        )
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: spec.to_json()})
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    onnx.save_model(proto, partial)
    partial.replace(path)
    return spec


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter warns and logs about its own internals (renamed axes, optional torchvision ops):
    nothing a user acts on."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(torch|onnxscript|copyreg)(\.|$)")
            yield
    finally:
        exporter_log.setLevel(level)


CACHE_ENV = "PIPS_CACHE"  # where exports made on demand are kept (default ~/.cache/pips2)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pips2")


def weights_key(model: Pips) -> str:
    """A digest of the model's weights: equal weights give the same key."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_export(
    model: Pips, S: int, image_size: tuple[int, int], iters: int, log: Callable[[str], None] | None = None
) -> Path:
    """The export of `model` at these settings from the cache (cache_dir()), exported there first when
    missing (a minute or more on a small CPU); `log` is told which."""
    spec = WindowSpec(S, *image_size, iters, model.latent_dim, model.vis_head is not None)
    key = hashlib.sha256(f"{weights_key(model)} {spec.to_json()} {torch.__version__}".encode()).hexdigest()
    path = cache_dir() / "onnx" / f"window-{key[:16]}.onnx"
    if path.is_file():
        if log is not None:
            log(f"onnx: {path} (exported before)")
        return path
    if log is not None:
        log(f"onnx: exporting the model once to {path} (a minute or more on a small CPU)")
    export_window(model, path, S, image_size, iters)
    return path
