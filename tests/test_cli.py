import subprocess
import sys
from pathlib import Path

from utils.cli import explain_flags

REPO = Path(__file__).parent.parent


def test_flags_documented_from_comments() -> None:
    @explain_flags
    def main(
        *,
        lr: float = 5e-4,  # peak learning rate
        crop_size: tuple[int, int] = (256, 384),  # H,W of the clips
        quiet: bool = False,
    ) -> None:
        """Train."""

    assert main.__doc__ == "Train.\n\nArgs:\n    lr: peak learning rate\n    crop_size: H,W of the clips\n"


def test_train_help_explains_flags() -> None:
    out = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    text = out.stdout + out.stderr
    assert "peak learning rate of AdamW" in text and "--resume" in text
