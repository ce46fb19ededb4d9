"""Chapter 09 (mmcourse.kernels.fused_vq): the fused nearest-code kernel agrees exactly with the
PyTorch distance matrix + argmin, on odd sizes, every dtype and deliberate ties; it validates its
inputs; its autograd Function drops into chapter 02's VQ layer.

On CPU the kernel runs in Triton's interpreter at small sizes; tests marked `gpu` compile it and
check it at full size (N = 65536, K = 8192, D = 256)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import vq

fused_vq = pytest.importorskip(
    "mmcourse.kernels.fused_vq", reason="chapter 09 needs triton (Linux x86-64 only)"
)

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_DEVICE = "cuda" if not fused_vq.INTERPRETED else "cpu"


def _data(n: int, k: int, d: int, seed: int, dtype=torch.float32, device=KERNEL_DEVICE):
    """Random z (N, D) and codebook (K, D): fresh per seed, never zeros."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g) + 0.25
    codebook = torch.randn(k, d, generator=g) - 0.25
    return z.to(dtype).to(device), codebook.to(dtype).to(device)


def _grid_data(n: int, k: int, d: int, seed: int, dtype=torch.float32):
    """Values in {−1, −½, 0, ½, 1} (not all zero): every product and sum is exact in any dtype
    and order, and many distances tie exactly, so the tie rule is tested, not rounding."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(-2, 3, (n, d), generator=g) / 2
    codebook = torch.randint(-2, 3, (k, d), generator=g) / 2
    z[0] = 0.5  # a row that is not zero ...
    codebook[3] = codebook[k - 1] = codebook[k // 2] = z[1]  # ... exact copies of z[1] in 3 tiles
    return z.to(dtype).to(KERNEL_DEVICE), codebook.to(dtype).to(KERNEL_DEVICE)


SMALL_BLOCKS = {"block_n": 16, "block_k": 32, "block_d": 16}


# ------------------------------------------------------------------------------ exact agreement


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "k", "d", "blocks"),
    [
        (200, 300, 48, {}),  # the interpreter's large default blocks
        (50, 70, 37, SMALL_BLOCKS),  # no size a multiple of its block: every mask matters
        (64, 96, 32, SMALL_BLOCKS),  # exact multiples
        (1, 1, 1, {}),  # one vector, one code, D = 1
        (60, 50, 100, {}),  # D > the default BLOCK_D: a loop over slices of D
    ],
)
def test_tokens_equal_the_reference_on_random_data(dtype, n, k, d, blocks):
    z, codebook = _data(n, k, d, seed=n + k + d, dtype=dtype)
    tokens = fused_vq.nearest_code(z, codebook, **blocks)
    assert tokens.dtype == torch.long and tokens.shape == (n,)
    assert torch.equal(tokens, fused_vq.reference_nearest_code(z, codebook))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_go_to_the_lowest_index_like_argmin(dtype):
    z, codebook = _grid_data(45, 77, 5, seed=9, dtype=dtype)
    expected = fused_vq.reference_nearest_code(z, codebook)
    distances = vq.squared_distances(z.double(), codebook.double())
    n_tied = int((distances == distances.min(dim=1, keepdim=True).values).sum(dim=1).gt(1).sum())
    assert n_tied >= 10, "the data must hold many exact ties"
    assert int(expected[1]) == 3, "z[1] has three exact copies; argmin takes the first"
    assert torch.equal(expected, distances.argmin(dim=1))
    for blocks in ({}, SMALL_BLOCKS):
        assert torch.equal(fused_vq.nearest_code(z, codebook, **blocks), expected)


def test_reference_is_chapter_01s_nearest_code():
    z, codebook = _data(120, 33, 10, seed=1)
    assert torch.equal(fused_vq.reference_nearest_code(z, codebook), vq.nearest_code(z, codebook))


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_outputs(dtype):
    z, codebook = _data(50, 70, 37, seed=3, dtype=dtype)
    out = fused_vq.quantize(z, codebook, **SMALL_BLOCKS)
    tokens = fused_vq.reference_nearest_code(z, codebook)
    assert torch.equal(out.tokens, tokens)
    assert out.z_q.dtype == dtype and torch.equal(out.z_q, codebook[tokens])
    exact = (z.double() - codebook[tokens].double()).pow(2).sum(dim=1)
    assert out.sq_dist.dtype == torch.float32
    torch.testing.assert_close(out.sq_dist.double(), exact, atol=1e-3, rtol=1e-5)


def test_no_rows_gives_no_tokens():
    z, codebook = _data(0, 5, 3, seed=0)
    assert fused_vq.nearest_code(z, codebook).shape == (0,)


def test_block_sizes_are_chosen_for_the_interpreter():
    assert fused_vq.choose_blocks(1, 1, 1) == (16, 16, 16)
    assert fused_vq.choose_blocks(50, 70, 37) == (64, 128, 64)
    assert fused_vq.choose_blocks(10**6, 10**6, 10**3) == (128, 256, 64)


# ----------------------------------------------------------------------------------- autograd


def test_straight_through_and_commitment_gradients():
    z, codebook = _data(40, 20, 12, seed=4)
    z = z.requires_grad_()
    codebook = codebook.requires_grad_()
    out = fused_vq.quantize(z, codebook)
    upstream = torch.randn(out.z_q.shape, generator=torch.Generator().manual_seed(5)).to(z.device)
    (grad_z,) = torch.autograd.grad((out.z_q * upstream).sum(), z)
    assert torch.equal(grad_z, upstream), "z_q passes its gradient straight to z"
    out = fused_vq.quantize(z, codebook)
    (grad_z,) = torch.autograd.grad(out.sq_dist.sum(), z)
    torch.testing.assert_close(grad_z, 2 * (z - codebook[out.tokens]).detach())
    assert not out.tokens.requires_grad
    assert out.z_q.grad_fn is not None and codebook.grad is None


def _train(steps: int, search: str) -> list[tuple]:
    """A few steps of chapter 02's recipe on rows: encoder → VectorQuantizer → decoder, Adam.

    search="pytorch": the layer as it is; "kernel": the same layer built with
    `search=fused_vq.nearest_code`, the fused kernel in place of its nearest-code search;
    "function": a loop that mirrors the layer's forward around `fused_vq.quantize`."""
    torch.manual_seed(0)
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(1)).to(KERNEL_DEVICE)
    encoder, decoder = torch.nn.Linear(6, 8), torch.nn.Linear(8, 6)
    kernel = fused_vq.nearest_code if search == "kernel" else None
    layer = vq.VectorQuantizer(24, 8, beta=0.25, search=kernel)
    for module in (encoder, decoder, layer):
        module.to(KERNEL_DEVICE)
    params = [*encoder.parameters(), *decoder.parameters(), *layer.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    history = []
    for _ in range(steps):
        z_e = encoder(x)  # (N, D)
        if search == "function":
            out = fused_vq.quantize(z_e, layer.codebook)
            codes = F.embedding(out.tokens, layer.codebook)  # (N, D)
            codebook_loss = F.mse_loss(codes, z_e.detach())
            commitment_loss = layer.beta * out.sq_dist.sum() / z_e.numel()
            z_q, tokens, vq_loss = out.z_q, out.tokens, codebook_loss + commitment_loss
        else:
            q = layer(z_e)
            z_q, tokens, vq_loss = q.z_q, q.tokens, q.loss
        loss = F.mse_loss(decoder(z_q), x) + vq_loss
        opt.zero_grad()
        loss.backward()
        history.append((tokens.clone(), loss.detach(), [p.grad.clone() for p in params]))
        opt.step()
    return history


@pytest.mark.parametrize("search", ["kernel", "function"])
def test_drop_in_training_matches_the_pytorch_path(search):
    expected = _train(6, "pytorch")
    got = _train(6, search)
    for step, ((tok, loss, grads), (tok_ref, loss_ref, grads_ref)) in enumerate(zip(got, expected)):
        assert torch.equal(tok, tok_ref), f"step {step}: tokens differ"
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- input validation


def test_clear_errors_for_bad_inputs():
    z, codebook = _data(10, 6, 4, seed=0)
    cases = [
        ((z[0], codebook), ValueError, r"^z must have 2 dimensions \(N, D\)"),
        (
            (z, codebook[:, :3].contiguous()),
            ValueError,
            r"^z must have D = 3 columns like codebook",
        ),
        ((z.double(), codebook.double()), TypeError, r"^codebook must be float32, float16 or "),
        ((z.long(), codebook), TypeError, r"^z must be float32, float16 or bfloat16, got "),
        ((z.half(), codebook), TypeError, r"^z must have codebook's dtype torch\.float32"),
        ((z.T.contiguous().T, codebook), ValueError, r"^z must be contiguous"),
        ((z, codebook[::2]), ValueError, r"^codebook must be contiguous"),
        ((z.to("meta"), codebook), ValueError, r"^z must be on codebook's device"),
        ((z, codebook[:0]), ValueError, r"^codebook must hold at least one code"),
        (([1.0], codebook), TypeError, r"^z must be a torch\.Tensor, got list"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            fused_vq.nearest_code(*args)
        with pytest.raises(error, match=message):
            fused_vq.quantize(*args)
    for value, error in [(8, ValueError), (24, ValueError), (0, ValueError), (16.0, TypeError)]:
        with pytest.raises(error, match="^block_k must"):
            fused_vq.nearest_code(z, codebook, block_k=value)
    with pytest.raises(TypeError, match="^exact must be a bool"):
        fused_vq.nearest_code(z, codebook, exact=1)


def test_compiled_mode_asks_for_cuda_tensors(monkeypatch):
    monkeypatch.setattr(fused_vq, "INTERPRETED", False)
    z, codebook = _data(10, 6, 4, seed=0, device="cpu")
    with pytest.raises(ValueError, match="must be CUDA tensors when Triton compiles kernels"):
        fused_vq.nearest_code(z, codebook)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 4), max_size=4).map(tuple))
def test_wrong_z_shapes_are_named(shape):
    codebook = torch.ones(3, 4)
    if len(shape) == 2 and shape[1] == 4:
        return
    with pytest.raises(ValueError, match=r"^z must have"):
        fused_vq.nearest_code(torch.ones(shape), codebook)


# ------------------------------------------------------------------------ where kernels run


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120
    )


def test_importing_mmcourse_does_not_import_triton():
    result = _python("import sys, mmcourse, mmcourse.vq; print('triton' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default")
def test_without_a_gpu_kernels_are_interpreted_unless_told_otherwise():
    code = "import os, mmcourse.kernels as k; print(os.environ['TRITON_INTERPRET'], k.INTERPRETED)"
    assert _python(code).stdout.split() == ["1", "True"]
    assert _python(code, TRITON_INTERPRET="0").stdout.split() == ["0", "False"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter")
def test_triton_imported_before_mmcourse_kernels_still_interprets():
    code = (
        "import torch, triton\n"  # triton.language decorated its library in compiled mode
        "from mmcourse.kernels import fused_vq\n"
        "z, e = torch.randn(70, 20), torch.randn(40, 20)\n"
        "print(torch.equal(fused_vq.nearest_code(z, e), fused_vq.reference_nearest_code(z, e)))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_without_triton_the_package_imports_and_chapter_09_explains():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import mmcourse.kernels as k; print(k.TRITON_AVAILABLE)\n"
        "for name in ('mmcourse.kernels.fused_vq', 'mmcourse.checks.ch09'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError as e:\n"
        "        print(e)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "False"
    assert len(lines) == 3 and all("Linux x86-64 only" in line for line in lines[1:])


# --------------------------------------------------------------------------- on a GPU, full size


def _mismatches_beyond_ties(tokens, expected, z, codebook) -> int:
    """Rows where the kernel's code is farther (in float64) than the reference's by more than
    float32 rounding of the expansion could explain."""
    differ = (tokens != expected).nonzero().flatten()
    if differ.numel() == 0:
        return 0
    zd, ed = z[differ].double(), codebook.double()
    got = (zd - ed[tokens[differ]]).pow(2).sum(1)
    ref = (zd - ed[expected[differ]]).pow(2).sum(1)
    scale = zd.pow(2).sum(1) + ed[expected[differ]].pow(2).sum(1)
    return int(((got - ref).abs() > 1e-5 * scale).sum())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_full_size_on_the_gpu(dtype):
    n, k, d = 65536, 8192, 256
    z, codebook = _data(n, k, d, seed=0, dtype=dtype, device="cuda")
    tokens = fused_vq.nearest_code(z, codebook)  # autotunes on the first call
    expected = fused_vq.reference_nearest_code(z, codebook)
    agreement = (tokens == expected).float().mean().item()
    assert agreement > 0.999, f"only {agreement:.5f} of the rows agree"
    assert _mismatches_beyond_ties(tokens, expected, z, codebook) == 0
    matrix_bytes = n * k * z.element_size()  # what distance matrix + argmin would hold
    for fn, what in [(fused_vq.nearest_code, "tokens"), (fused_vq.quantize, "tokens and z_q")]:
        fn(z, codebook)  # autotuning (its benchmarking allocates) happens on a first call
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(z, codebook)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        # tokens and distances (12 bytes a row), ‖e‖² in float32 with its temporaries, z_q
        budget = n * 12 + 3 * k * d * 4 + (n * d * z.element_size() if what != "tokens" else 0)
        budget += 2**20
        assert extra <= budget < matrix_bytes / 8, f"{what}: {extra / 2**20:.0f} MiB extra"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_sizes_and_ties_on_the_gpu(dtype):
    z, codebook = _grid_data(1000, 777, 129, seed=2, dtype=dtype)
    z, codebook = z.cuda(), codebook.cuda()
    expected = fused_vq.reference_nearest_code(z, codebook)
    assert torch.equal(fused_vq.nearest_code(z, codebook), expected)
    assert torch.equal(fused_vq.nearest_code(z, codebook, **SMALL_BLOCKS), expected)
