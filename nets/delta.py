"""DeltaBlock: a 1-D temporal ResNet mapping correlations and flows to coordinate updates (delta_block.*)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nets.norm import InstanceNorm


def posemb_sincos_2d_xy(xy: torch.Tensor, C: int, temperature: float = 10000.0) -> torch.Tensor:
    """B,S,2 -> B,S,C+2: [sin(x w), cos(x w), sin(y w), cos(y w), x, y], w_k = temperature^(-k/(C/4-1))."""
    k = torch.arange(C // 4, device=xy.device, dtype=xy.dtype) / (C // 4 - 1)
    omega = 1.0 / temperature**k  # C/4
    x = xy[..., 0:1] * omega  # B,S,C/4
    y = xy[..., 1:2] * omega  # B,S,C/4
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos(), xy], dim=-1)  # B,S,C+2


class Conv1dPad(nn.Module):
    """Conv1d with 'same' zero padding (kernel k, stride 1: (k-1)//2 before, the rest after)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        before = (kernel_size - 1) // 2
        # the conv pads `before` on both sides (no padded copy made or kept for backward); even kernels
        # need one more zero after
        self.extra = kernel_size - 1 - 2 * before
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, self.extra)) if self.extra else x)


class ResidualBlock1d(nn.Module):
    """Pre-activation block: [IN, ReLU] (not in the first block), conv, IN, ReLU, conv; identity zero-padded
    in channels when the block widens."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, is_first_block: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.is_first_block = is_first_block
        self.norm1 = InstanceNorm()
        self.conv1 = Conv1dPad(in_channels, out_channels, kernel_size)
        self.norm2 = InstanceNorm()
        self.conv2 = Conv1dPad(out_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.is_first_block else F.relu(self.norm1(x))
        out = self.conv2(F.relu(self.norm2(self.conv1(out))))
        if self.out_channels != self.in_channels:
            extra = self.out_channels - self.in_channels
            x = F.pad(x, (0, 0, extra // 2, extra - extra // 2))  # pad channels of B,C,S
        return out + x


class DeltaBlock(nn.Module):
    """Per-trajectory 1-D ResNet over time: 8 blocks widening 128 -> 1024 every second block."""

    def __init__(
        self,
        latent_dim: int = 128,
        corr_levels: int = 4,
        corr_radius: int = 3,
        num_templates: int = 3,
        base_filters: int = 128,
        num_blocks: int = 8,
        kernel_size: int = 3,
        extra_dim: int = 0,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        in_dim = num_templates * corr_levels * (2 * corr_radius + 1) ** 2 + extra_dim + latent_dim + 2
        self.first_block_conv = Conv1dPad(in_dim, base_filters, kernel_size)
        blocks = []
        for i in range(num_blocks):
            in_ch = base_filters * 2 ** ((i - 1) // 2) if i > 0 else base_filters
            out_ch = in_ch * 2 if i > 0 and i % 2 == 0 else in_ch
            blocks.append(ResidualBlock1d(in_ch, out_ch, kernel_size, is_first_block=i == 0))
        self.basicblock_list = nn.ModuleList(blocks)
        self.dense = nn.Linear(out_ch, 2)

    def forward(self, fcorrs: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """fcorrs BN,S,L*(2R+1)^2*3 (+ extra_dim more features) and flows BN,S,2 (feature pixels) -> BN,S,2
        coordinate updates."""
        x = torch.cat([fcorrs, posemb_sincos_2d_xy(flows, self.latent_dim)], dim=2)  # BN,S,718
        # raw flows and correlations in, coordinate updates out: these two layers stay float32 under
        # autocast (bf16 rounding there moves the tracks most, for about 2% of the block's FLOPs)
        with torch.autocast(x.device.type, enabled=False):
            x = F.relu(self.first_block_conv(x.float().transpose(1, 2)))  # BN,128,S
        for block in self.basicblock_list:
            x = block(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.dense(F.relu(x.float()).transpose(1, 2))  # BN,S,2
