"""BasicEncoder: the multi-scale CNN that maps each frame to a stride-8 feature map (prefix fnet.*)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets.norm import InstanceNorm


def relu_after_norm(x: torch.Tensor) -> torch.Tensor:
    """ReLU of an instance norm's output: in place without autograd, out of place under autograd. There the
    exact norm returns a view, and an in-place update of a view makes backward copy every gradient through
    it (about a tenth of the encoder's training time), while out of place the norm's output is freed all the
    same: the norm's backward needs its input, not its output."""
    return F.relu(x, inplace=not torch.is_grad_enabled())


class ResidualBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = InstanceNorm()
        self.norm2 = InstanceNorm()
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), InstanceNorm()
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = relu_after_norm(self.norm1(self.conv1(x)))
        y = relu_after_norm(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return (x + y).relu_()


class BasicEncoder(nn.Module):
    """Four residual stages at strides 2, 2, 4, 8, 16; all four resized to stride `stride` and fused."""

    def __init__(self, input_dim: int = 3, output_dim: int = 128, stride: int = 8) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(input_dim, 64, kernel_size=7, stride=2, padding=3)
        self.norm1 = InstanceNorm()
        self.layer1 = self._make_layer(64, 64, stride=1)
        self.layer2 = self._make_layer(64, 96, stride=2)
        self.layer3 = self._make_layer(96, 128, stride=2)
        self.layer4 = self._make_layer(128, 128, stride=2)
        self.conv2 = nn.Conv2d(64 + 96 + 128 + 128, output_dim * 2, kernel_size=3, padding=1)
        self.norm2 = InstanceNorm()
        self.conv3 = nn.Conv2d(output_dim * 2, output_dim, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _make_layer(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(ResidualBlock(in_planes, planes, stride), ResidualBlock(planes, planes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B,3,H,W in [-1, 1] -> B,C,H//stride,W//stride."""
        _, _, H, W = x.shape
        size = (H // self.stride, W // self.stride)
        x = relu_after_norm(self.norm1(self.conv1(x)))
        a = self.layer1(x)  # B,64,H/2,W/2
        b = self.layer2(a)  # B,96,H/4,W/4
        c = self.layer3(b)  # B,128,H/8,W/8
        d = self.layer4(c)  # B,128,H/16,W/16
        feats = [F.interpolate(t, size, mode="bilinear", align_corners=True) for t in (a, b, c, d)]
        x = relu_after_norm(self.norm2(self.conv2(torch.cat(feats, dim=1))))  # B,256,H8,W8
        return self.conv3(x)  # B,C,H8,W8
