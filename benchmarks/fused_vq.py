"""Fused nearest-code search (chapter 09): the Triton kernel against distance matrix + argmin.

Everywhere: `interp_exact`, whether the kernel run in Triton's interpreter gives exactly the
tokens of the PyTorch reference (float32 distance matrix + argmin) on every case of `_CASES`
(random data and data full of exact ties; float32, float16, bfloat16; odd sizes and small blocks);
`interp_s` its wall time. And the memory argument at N = 65536, K = 8192, D = 256: `flops`
(2·N·K·D), `matrix_mib` (the float32 N×K matrix), `index_kib` (the int64 tokens), `min_mib`
(read z and codebook in float32, write tokens), `intensity_flop_per_byte` (flops / min bytes),
and a roofline model of an H100 from round datasheet numbers (3 TB/s, 400 TFLOP/s TF32,
800 TFLOP/s bf16): `h100_floor_tf32_ms`, `h100_floor_bf16_ms`, and `h100_matrix_traffic_ms` (the
least time to write and re-read the matrix). Models, not measurements.

On a CUDA GPU, measured with triton.testing.do_bench (median ms) for each dtype (bf16, fp16, and
fp32 on TF32 tensor cores with the exact re-check of near-ties, the default): `{dtype}_fused_ms`,
`{dtype}_config` (the blocks, warps and stages the autotuner picked), `{dtype}_matrix_ms`
(mmcourse.vq.squared_distances + argmin in that dtype), `{dtype}_cdist_ms` (torch.cdist +
argmin), `{dtype}_speedup_vs_matrix`, `{dtype}_speedup_vs_cdist`; peak extra memory of one call,
`{dtype}_*_extra_mib` (torch.cuda.max_memory_allocated minus what was allocated before);
`{dtype}_agreement` (fraction of rows with the reference's token) and
`{dtype}_mismatch_beyond_ties` (rows whose code is farther than rounding explains: 0 is exact up
to ties); `{dtype}_tflops` and `{dtype}_roofline_fraction` = achieved TFLOP/s / the measured
matmul ceiling (`{dtype}_matmul_tflops`, an 8192³ matmul; fp32's on TF32 like the kernel).
`speedup_vs_matrix` and `roofline_fraction` repeat bf16's: the bar of the course guide (≥ 5×,
≥ 70 % of the ceiling, no N×K buffer) is checked on it; `no_nk_buffer`: bf16 fused extra memory
< 1/8 of its N×K matrix. `fp32_rechecked_rows`: rows whose two nearest codes were within TF32's
error bound, recomputed exactly; `fp32_tf32_fused_ms`: TF32 without that re-check
(`exact=False`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from mmcourse import vq
from mmcourse.kernels import INTERPRETED, fused_vq

N, K, D = 65536, 8192, 256
# (N, K, D, dtype, data, blocks): what the interpreter check runs; blocks {} = the defaults
_SMALL = {"block_n": 16, "block_k": 32, "block_d": 16}
_CASES = [
    (200, 300, 48, "float32", "random", {}),
    (50, 70, 37, "float32", "random", _SMALL),
    (50, 70, 37, "float16", "random", _SMALL),
    (50, 70, 37, "bfloat16", "random", _SMALL),
    (45, 77, 5, "float32", "ties", _SMALL),
    (45, 77, 5, "float16", "ties", {}),
    (45, 77, 5, "bfloat16", "ties", {}),
]


def _inputs(n, k, d, dtype, data, seed, device):
    g = torch.Generator().manual_seed(seed)
    if data == "ties":  # values in {−1, −½, 0, ½, 1}: exact arithmetic, many exact ties
        z = torch.randint(-2, 3, (n, d), generator=g) / 2
        codebook = torch.randint(-2, 3, (k, d), generator=g) / 2
        codebook[k - 1] = codebook[3] = z[1]
    else:
        z = torch.randn(n, d, generator=g) + 0.25
        codebook = torch.randn(k, d, generator=g) - 0.25
    dtype = getattr(torch, dtype)
    return z.to(dtype).to(device), codebook.to(dtype).to(device)


def interpreter_check() -> dict[str, bool | float]:
    """Run `_CASES` with the kernel in this process (which must be interpreted)."""
    start = time.perf_counter()
    exact = True
    for seed, (n, k, d, dtype, data, blocks) in enumerate(_CASES):
        z, codebook = _inputs(n, k, d, dtype, data, seed, "cpu")
        tokens = fused_vq.nearest_code(z, codebook, **blocks)
        exact &= bool(torch.equal(tokens, fused_vq.reference_nearest_code(z, codebook)))
    return {"interp_exact": exact, "interp_s": time.perf_counter() - start}


def _interpreter_check_in_a_subprocess() -> dict[str, bool | float]:
    """On a GPU machine this process compiles kernels; the interpreter runs in a fresh one."""
    env = os.environ | {"TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--interpreter-check"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_argument() -> dict[str, float]:
    c = fused_vq.cost(N, K, D, bytes_per_value=4)
    c16 = fused_vq.cost(N, K, D, bytes_per_value=2)
    h100 = fused_vq.H100
    return {
        "flops": c.flops,
        "matrix_mib": c.matrix_bytes / 2**20,
        "index_kib": c.index_bytes / 2**10,
        "min_mib": c.min_bytes / 2**20,
        "intensity_flop_per_byte": c.flops / c.min_bytes,
        "h100_floor_tf32_ms": 1e3 * c.floor_seconds(h100["tf32"], h100["bandwidth"]),
        "h100_floor_bf16_ms": 1e3 * c16.floor_seconds(h100["bf16"], h100["bandwidth"]),
        "h100_matrix_traffic_ms": 1e3 * c.matrix_traffic_seconds(h100["bandwidth"]),
    }


# ------------------------------------------------------------------------------- on a GPU


def _peak_extra_mib(fn) -> float:
    """Peak memory one call allocates beyond what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    del out
    return extra / 2**20


def _mismatch_beyond_ties(tokens, expected, z, codebook) -> int:
    differ = (tokens != expected).nonzero().flatten()
    if differ.numel() == 0:
        return 0
    zd, ed = z[differ].double(), codebook.double()
    got = (zd - ed[tokens[differ]]).pow(2).sum(1)
    ref = (zd - ed[expected[differ]]).pow(2).sum(1)
    scale = zd.pow(2).sum(1) + ed[expected[differ]].pow(2).sum(1)
    return int(((got - ref).abs() > 1e-5 * scale).sum())


def _gpu(name: str, dtype: torch.dtype) -> dict[str, float | int | str]:
    from triton.testing import do_bench

    def bench(fn) -> float:
        return do_bench(fn, warmup=25, rep=100, return_mode="median")

    z, codebook = _inputs(N, K, D, str(dtype).split(".")[1], "random", 0, "cuda")
    fused = lambda: fused_vq.nearest_code(z, codebook)  # noqa: E731
    matrix = lambda: vq.squared_distances(z, codebook).argmin(dim=1)  # noqa: E731
    cdist = lambda: torch.cdist(z, codebook).argmin(dim=1)  # noqa: E731
    search = fused_vq.search(z, codebook)  # the first call autotunes
    tokens = search.tokens
    expected = fused_vq.reference_nearest_code(z, codebook)
    r: dict[str, float | int | str] = {
        f"{name}_agreement": (tokens == expected).float().mean().item(),
        f"{name}_mismatch_beyond_ties": _mismatch_beyond_ties(tokens, expected, z, codebook),
        f"{name}_config": search.config,
    }
    if dtype == torch.float32:
        r["fp32_rechecked_rows"] = search.rechecked
    del expected
    r[f"{name}_fused_ms"] = bench(fused)
    r[f"{name}_matrix_ms"] = bench(matrix)
    r[f"{name}_fused_extra_mib"] = _peak_extra_mib(fused)
    r[f"{name}_matrix_extra_mib"] = _peak_extra_mib(matrix)
    try:
        r[f"{name}_cdist_ms"] = bench(cdist)
        r[f"{name}_cdist_extra_mib"] = _peak_extra_mib(cdist)
        r[f"{name}_speedup_vs_cdist"] = r[f"{name}_cdist_ms"] / r[f"{name}_fused_ms"]
    except RuntimeError as error:  # cdist does not support every dtype everywhere
        r[f"{name}_cdist_ms"] = f"n/a ({str(error).splitlines()[0][:60]})"
    r[f"{name}_speedup_vs_matrix"] = r[f"{name}_matrix_ms"] / r[f"{name}_fused_ms"]
    a = torch.randn(8192, 8192, device="cuda").to(dtype)
    b = torch.randn(8192, 8192, device="cuda").to(dtype)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # float32 matmuls on TF32, as the kernel's
    ceiling = 2 * 8192**3 / (bench(lambda: a @ b) * 1e-3) / 1e12
    torch.set_float32_matmul_precision(precision)
    achieved = fused_vq.cost(N, K, D).flops / (r[f"{name}_fused_ms"] * 1e-3) / 1e12
    r[f"{name}_matmul_tflops"] = ceiling
    r[f"{name}_tflops"] = achieved
    r[f"{name}_roofline_fraction"] = achieved / ceiling
    if dtype == torch.float32:
        r["fp32_tf32_fused_ms"] = bench(lambda: fused_vq.nearest_code(z, codebook, exact=False))
    return r


def run() -> dict[str, float | int | str | bool]:
    on_gpu = torch.cuda.is_available() and not INTERPRETED
    results: dict = _interpreter_check_in_a_subprocess() if on_gpu else interpreter_check()
    results |= memory_argument()
    if not on_gpu:
        results["gpu"] = "none: GPU timings need a CUDA GPU (see benchmarks/README.md)"
        return results
    results["gpu"] = torch.cuda.get_device_name()
    for name, dtype in [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)]:
        results |= _gpu(name, dtype)
    results["speedup_vs_matrix"] = results["bf16_speedup_vs_matrix"]
    results["roofline_fraction"] = results["bf16_roofline_fraction"]
    # the bf16 N×K matrix is 1 GiB; the kernel's extras (tokens, ‖e‖²) are a few MiB
    results["no_nk_buffer"] = results["bf16_fused_extra_mib"] < N * K * 2 / 2**20 / 8
    return results


if __name__ == "__main__" and sys.argv[1:] == ["--interpreter-check"]:
    print(json.dumps(interpreter_check()))
