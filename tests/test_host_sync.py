"""An inference window waits on the host nowhere: no value read back (.item(), a tensor in an `if`), no
tensor built from Python numbers (a host-to-device copy on CUDA), no shape that depends on the data. On a GPU
each of these drains the queue; on the CPU the same ops are caught by a dispatch mode."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nets.pips2 import Pips

# ops that read a device value back to the host, copy host data to the device, or size a result by its data
SYNCING = {"_local_scalar_dense", "lift_fresh", "nonzero", "masked_select", "_unique2", "unique_consecutive"}


class SyncOps(TorchDispatchMode):
    """Records the name of every syncing op dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_the_mode_sees_a_sync() -> None:
    x = torch.ones(3)
    with SyncOps() as ops:
        if x.sum() > 0:
            x = x * torch.tensor([1.0, 2.0, 3.0])
    assert ops.seen == ["_local_scalar_dense", "lift_fresh"]


@pytest.mark.parametrize("vis_head", [False, True])
def test_an_inference_window_does_not_sync(vis_head: bool) -> None:
    torch.manual_seed(0)
    model = Pips(vis_head=vis_head).eval()
    rgbs = torch.rand(1, 8, 3, 64, 96) * 255
    trajs = torch.rand(1, 8, 16, 2) * 60
    with torch.no_grad():
        first = model(trajs, rgbs, iters=2)
        with SyncOps() as ops:
            model(first.tracks, rgbs, iters=2, feat_init=first.feats)  # a chained window
    assert ops.seen == []
