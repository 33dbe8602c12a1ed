"""The fused correlation's backward kernel as Triton compiles it for an H100 (sm_90), without a GPU: its
adds into the feature-map gradient are plain relaxed reductions with no memory fence around them, and the
kernel spills no registers."""

import os
import re
import subprocess
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from nets import corr_triton  # noqa: E402

POINTERS = ("fmap_ptr", "targets_ptr", "coords_ptr", "grad_out_ptr", "grad_fmap_ptr", "grad_targets_ptr")
SCALARS = {"N": "i32", "H": "i32", "W": "i32", "C": "i32", "BSN": "i32", "scale": "fp32"}
SCALARS |= {"inv_sqrt_c": "fp32", "out_col": "i32"}
# the model's launch: radius 3, three templates, four levels of 7x7 windows, 128 channels
CONSTANTS = {"R": 3, "T": 3, "OUT_T": 4 * 49, "BLOCK_Q": 64, "BLOCK_P": 64, "BLOCK_C": 128}


@pytest.fixture(scope="module")
def ptx() -> str:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = dict.fromkeys(POINTERS, "*fp32") | SCALARS | dict.fromkeys(CONSTANTS, "constexpr")
    names = list(signature)
    constexprs = {(names.index(k),): v for k, v in CONSTANTS.items()}
    source = ASTSource(corr_triton._corr_bwd_kernel, signature=signature, constexprs=constexprs)
    try:
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    except Exception as err:  # a Triton without the CUDA backend's compiler
        pytest.skip(f"Triton cannot compile for sm_90 here: {err}")
    return kernel.asm["ptx"]


def test_the_gradient_adds_are_relaxed_reductions_without_fences(ptx: str) -> None:
    adds = [line.strip() for line in ptx.splitlines() if re.search(r"\b(red|atom)\.global", line)]
    assert adds and all(".relaxed." in line and line.split()[1].startswith("red.") for line in adds)
    assert not re.search(r"\bfence\.|\bmembar\.|acq_rel", ptx)


def test_the_kernel_spills_no_registers(ptx: str, tmp_path: Path) -> None:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
    if not os.access(ptxas, os.X_OK):
        pytest.skip(f"no {ptxas.name} beside Triton to assemble sm_90a")
    (tmp_path / "k.ptx").write_text(ptx)
    cmd = [str(ptxas), "-arch=sm_90a", "-v", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")]
    report = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "0 bytes spill stores, 0 bytes spill loads" in report.stderr
