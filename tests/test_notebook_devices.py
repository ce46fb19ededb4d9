"""The GPU path, checked on a CPU: what only a GPU run used to reveal, found by reading the
solution notebooks and by training every live model on the course device.

Reading the code cells of every solution notebook (no kernel), it fails on

1. **work pinned to the CPU**: `device="cpu"`, `.to("cpu")` or `torch.device("cpu")` for a model
   or for the inputs of a computation. On a GPU machine such a model stays on the CPU while the
   rest of the notebook moves to the GPU (a device mismatch), or it trains on the host's slow
   single thread. `.cpu()` stays allowed (figures and printing take results back once);
2. **a live trainer called without `device=`** (`train_ar`, `train_diffusion`, `lambda_sweep`, …):
   the notebook's inputs then sit on one device and its model on another;
3. **thread settings that ignore the device**: `torch.set_num_threads(...)` and `one_thread()`
   pin a GPU machine's host to one thread; `env.set_compute_threads(device)` and
   `env.compute_threads(device)` do that only on the CPU;
4. **device-dependent checked output**: in a `# NBVAL_CHECK_OUTPUT` cell, a printed value that
   comes from a trained or shipped model (a `load_*` or `train_*` result, the cached encodings,
   and whatever is computed from them in the notebook) shown as a float (`{x:.3f}`), or read out
   with `.item()`, `.tolist()` or `float()`. A GPU computes such numbers differently in the last
   bits, so nbval would fail on CUDA; structure stays checkable (`.shape`, `.dtype`, `len()`,
   `bool()`, `torch.equal`, `torch.allclose`, token types and positions).

A deliberate exception carries a `# host: <reason>` comment on its line or the line above.

The last tests train every live model of the notebooks for a few steps on `mmcourse.device()`
and check that the model comes back there: on the CPU they are quick, on a GPU they exercise the
same code paths as the notebooks.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import mmcourse
from mmcourse import env

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))

TRAINERS = {
    "train_tokenizer", "train_video_tokenizer", "train_diffusion", "train_ar",
    "train_vit_digits", "train_clip", "train_captioner", "train_unified", "train_transfusion",
    "lambda_sweep", "ratio_sweep",
}  # fmt: skip
TRAINED = TRAINERS | {
    "load_judge", "load_generator",
    "load_unified", "load_transfusion", "load", "load_with_scale",
    "course_latents", "course_data", "shapes_sequences", "encode_images", "encode_latents",
    "held_out", "evaluate", "faithfulness",
}  # fmt: skip
STRUCTURE_CALLS = {"len", "bool", "isinstance", "equal", "allclose", "token_types", "positions"}
STRUCTURE_ATTRS = {"shape", "dtype", "ndim", "device", "numel", "dim", "size"}
READ_OUT = {"item", "tolist", "float"}
FLOAT_SPEC = re.compile(r"[eEfFgG%]$")
HOST = "# host:"


@dataclass(frozen=True)
class Finding:
    where: str  # "NN_x.ipynb cell k, line n"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _code_cells(path: Path) -> list[tuple[int, str]]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            # IPython magics and shell escapes are not Python: blank them, keep the line numbers
            source = "\n".join("" if s.lstrip()[:1] in "%!" and s.strip() else s
                               for s in source.split("\n"))  # fmt: skip
            cells.append((index, source))
    return cells


def _name(func: ast.expr) -> str:
    """`f`, `m.f` and `a.b.f` → "f"."""
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _is_cpu(node: ast.expr | None) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value == "cpu" or node.value.startswith("cpu:"))
    )


def _excused(lines: list[str], node: ast.AST) -> bool:
    """A `# host:` comment on one of the node's lines or on the line just above it."""
    first, last = node.lineno - 1, getattr(node, "end_lineno", node.lineno) - 1
    return any(HOST in line for line in lines[max(first - 1, 0) : last + 1])


def placement_findings(source: str, where: str) -> list[Finding]:
    """Rules 1–3 on one cell's code."""
    lines, found = source.split("\n"), []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or _excused(lines, node):
            continue
        name, at = _name(node.func), f"{where}, line {node.lineno}"
        if any(k.arg == "device" and _is_cpu(k.value) for k in node.keywords):
            found.append(Finding(at, f'{name}(device="cpu"): use the course device, `device`'))
        if name in ("to", "device") and node.args and _is_cpu(node.args[0]):
            found.append(Finding(at, f'{name}("cpu") pins work to the CPU; use `device` (or '
                                     ".cpu() for a figure)"))  # fmt: skip
        if name in TRAINERS and not any(k.arg == "device" for k in node.keywords):
            found.append(Finding(at, f"{name}(...) without device=: it trains where the "
                                     "notebook's tensors are not"))  # fmt: skip
        if name == "set_num_threads":
            found.append(Finding(at, "torch.set_num_threads(...) ignores the device: use "
                                     "env.set_compute_threads(device)"))  # fmt: skip
        if name == "one_thread":
            found.append(Finding(at, "one_thread() also pins a GPU machine's host to one "
                                     "thread: use env.compute_threads(device)"))  # fmt: skip
    return found


class _Taint:
    """Which names hold something computed from a trained or shipped model."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def tainted(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Attribute) and node.attr in STRUCTURE_ATTRS:
            return False
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in TRAINED:
                return True
            if name in STRUCTURE_CALLS or name in STRUCTURE_ATTRS:
                return False
        if isinstance(node, (ast.Lambda, ast.FunctionDef)):
            return False
        return any(self.tainted(child) for child in ast.iter_child_nodes(node))

    def learn(self, tree: ast.Module) -> None:
        """Names bound (outside function bodies) from tainted expressions become tainted."""
        for node in _statements(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value:
                if self.tainted(node.value):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    self.names |= {n.id for t in targets for n in ast.walk(t)
                                   if isinstance(n, ast.Name)}  # fmt: skip
            elif isinstance(node, ast.For) and self.tainted(node.iter):
                self.names |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}


def _statements(tree: ast.Module) -> list[ast.stmt]:
    """Every statement outside function and class bodies, in order."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop(0)
        out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody"):
                todo[:0] = getattr(node, field, [])
    return out


def checked_output_findings(source: str, taint: _Taint, where: str) -> list[Finding]:
    """Rule 4 on one `# NBVAL_CHECK_OUTPUT` cell, given what earlier cells tainted."""
    tree, found = ast.parse(source), []
    taint.learn(tree)
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and _name(call.func) == "print"):
            continue
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            for node in ast.walk(arg):
                at = f"{where}, line {node.lineno}" if hasattr(node, "lineno") else where
                if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
                    spec = "".join(v.value for v in node.format_spec.values
                                   if isinstance(v, ast.Constant))  # fmt: skip
                    if FLOAT_SPEC.search(spec) and taint.tainted(node.value):
                        found.append(Finding(at, f"a trained number printed as :{spec} in a "
                                                 "checked cell"))  # fmt: skip
                if isinstance(node, ast.Call) and _name(node.func) in READ_OUT:
                    method = isinstance(node.func, ast.Attribute)  # x.item() or float(x)
                    if any(map(taint.tainted, [node.func.value] if method else node.args)):
                        found.append(Finding(at, f"{_name(node.func)}() of a trained model's "
                                                 "output in a checked cell"))  # fmt: skip
    return found


def notebook_findings(path: Path) -> list[Finding]:
    taint, found = _Taint(), []
    for index, source in _code_cells(path):
        where = f"{path.name} cell {index}"
        found += placement_findings(source, where)
        if source.lstrip().startswith("# NBVAL_CHECK_OUTPUT"):
            found += checked_output_findings(source, taint, where)
        else:
            taint.learn(ast.parse(source))
    return found


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebooks_compute_on_the_course_device(path):
    findings = notebook_findings(path)
    assert not findings, "\n".join(map(str, findings))


# ----------------------------------------------------------- the rules catch what they should


def _findings(source: str, checked: bool = False, earlier: str = "") -> list[str]:
    taint = _Taint()
    taint.learn(ast.parse(earlier))
    found = placement_findings(source, "cell")
    if checked:
        found += checked_output_findings(source, taint, "cell")
    return [f.what for f in found]


@pytest.mark.parametrize(
    "source",
    [
        "live = ar_recipe.train_ar(seqs, steps=200, batch=32, seed=0)",  # the model stays on CPU
        'tok = recipes.load("tokenizer", device="cpu")',
        'demo = recipes.tokenizer.train_tokenizer(seed=0, device="cpu")',
        'model, scale = recipes.transfusion.load_with_scale(device="cpu")',
        "sweep = recipes.transfusion.lambda_sweep((0.5, 2.0), steps=1000, progress=True)",
        'x = images.to("cpu")',
        'g = torch.Generator(device="cpu")',
        'dev = torch.device("cpu")',
        "torch.set_num_threads(1)",
        "with env.one_thread():\n    run()",
    ],
)
def test_placement_rules_catch_the_gpu_bugs(source):
    assert _findings(source), source


@pytest.mark.parametrize(
    "source",
    [
        "live = ar_recipe.train_ar(seqs, steps=200, batch=batch, seed=0, device=device)",
        'tok = recipes.load("tokenizer", device=device)',
        "images = tokenizer.decode(codes).cpu()",  # results come back for a figure
        "with env.compute_threads(device):\n    run()",
        "env.set_compute_threads(device)",
        '# host: exactness is a CPU fact\nx = images.to("cpu")',
        'x = images.to("cpu")  # host: the kernel interpreter reads CPU tensors',
        "# NBVAL_CHECK_OUTPUT\nprint(1)",
    ],
)
def test_placement_rules_leave_the_right_code_alone(source):
    assert not _findings(source), source


def test_checked_output_rule_catches_trained_numbers_only():
    earlier = 'tokenizer = recipes.load("tokenizer", device=device)\nV = course_vocab(bpe)'
    bad = [
        'latents, scale = recipes.transfusion.course_latents()\nprint(f"scale {scale:.3f}")',
        "codes = ar.encode_images(tokenizer, images)\nprint(codes[0].tolist())",
        "z = tokenizer.encoder(x)\nprint(z.mean().item())",
    ]
    good = [
        "codes = ar.encode_images(tokenizer, images)\nprint(tuple(codes.shape), codes.dtype)",
        "codes = ar.encode_images(tokenizer, images)\nprint(bool((codes >= 0).all()))",
        'ids = encode(tokenizer, doc)\nprint(f"{len(ids)} ids", V.token_types(ids).tolist())',
        'print(f"{512 * 4 / 2**30:8.3f} GiB")',  # arithmetic, the same everywhere
        "print(V.table())",
    ]
    for source in bad:
        assert _findings("# NBVAL_CHECK_OUTPUT\n" + source, True, earlier), source
    for source in good:
        assert not _findings("# NBVAL_CHECK_OUTPUT\n" + source, True, earlier), source


# ------------------------------------------------------------------------ the env helpers


def test_compute_threads_is_one_thread_on_the_cpu_only():
    before = torch.get_num_threads()
    with env.compute_threads("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with env.compute_threads("cuda"):  # a device name: no GPU is needed to read its type
        assert torch.get_num_threads() == before
    assert env.set_compute_threads("cuda") == before
    try:
        assert env.set_compute_threads("cpu") == 1
    finally:
        torch.set_num_threads(before)


def test_to_device_and_synchronize_on_the_cpu():
    x = torch.arange(3)
    assert env.to_device(x, "cpu") is x
    env.synchronize("cpu")  # nothing to wait for


@pytest.mark.gpu
def test_to_device_sends_a_host_batch_to_the_gpu():
    x = torch.arange(1000)
    y = env.to_device(x, "cuda")
    assert env.same_device(y.device, "cuda") and torch.equal(y.cpu(), x)


# --------------------------------------------- every live trainer, on the course device


def _on(model: torch.nn.Module, dev: torch.device) -> bool:
    return all(env.same_device(p.device, dev) for p in model.parameters())


def _finite(values) -> bool:
    flat = [v for row in values for v in (row if isinstance(row, tuple) else (row,))]
    return bool(flat) and all(math.isfinite(v) for v in flat)


def test_image_and_video_tokenizers_train_on_the_course_device(device, one_thread):
    from mmcourse.recipes import tokenizer, video

    small = {"channels": 8, "groups": 4, "num_codes": 16, "code_dim": 4}
    r = tokenizer.train_tokenizer(seed=0, steps=6, batch=4, n_images=32, restart_every=2,
                                  log=None, device=device, **small)  # fmt: skip
    assert _on(r.model, device) and _finite(r.history["recon_loss"])
    r = video.train_video_tokenizer(seed=0, steps=3, batch=2, n_clips=8, restart_every=2,
                                    log=None, device=device, **small)  # fmt: skip
    assert _on(r.model, device) and _finite(r.history["recon_loss"])


def test_diffusion_and_ar_train_on_the_course_device(device, one_thread):
    from mmcourse import ar, diffusion
    from mmcourse.recipes import ar as ar_recipe
    from mmcourse.recipes import diffusion as diffusion_recipe

    x0, labels = diffusion_recipe.shapes_data(n=32, seed=3)
    r = diffusion_recipe.train_diffusion(x0, labels, config={"channels": (8, 16)}, steps=3, batch=4,
                                  progress=False, device=device)  # fmt: skip
    assert _on(r.model, device) and _finite(r.losses) and len(r.losses) == 3
    x = diffusion.ddim_sample(r.model, labels[:2], diffusion.linear_schedule(), steps=2,
                              guidance=2.0)  # fmt: skip
    assert env.same_device(x.device, device)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(ar.CODES, (16, 8, 8), generator=g)
    seqs = ar.make_sequences(ar.encode_captions(["a red circle in the top left"] * 16), codes)
    r = ar_recipe.train_ar(seqs, config=ar.default_config(n_layer=1, d_model=16, n_head=2),
                           steps=3, batch=4, progress=False, device=device)  # fmt: skip
    assert _on(r.model, device) and _finite(r.losses)


def test_vit_and_fusion_train_on_the_course_device(device, one_thread):
    from mmcourse import fusion, vit
    from mmcourse.data import DigitsDataset, ShapesDataset
    from mmcourse.recipes import fusion as fusion_recipe
    from mmcourse.recipes import vit as vit_recipe

    r = vit_recipe.train_vit_digits(seed=0, epochs=1, batch=256, dim=16, depth=1, heads=2,
                                    device=device)  # fmt: skip
    assert _on(r.model, device) and _finite(r.losses)
    test = DigitsDataset("test")  # on the CPU: accuracy takes it to the model's device
    assert 0 <= vit.accuracy(r.model, test.images[:8], test.labels[:8]) <= 1
    clip = fusion_recipe.train_clip(steps=2, n_images=200, dim=16, depth=1, heads=2,
                                    device=device)  # fmt: skip
    assert _on(clip.model, device) and _finite(clip.losses)
    cap = fusion_recipe.train_captioner(clip.model.image_encoder, steps=2, n_images=200,
                                        dim=16, depth=1, heads=2, device=device)  # fmt: skip
    assert _on(cap.model, device) and _finite(cap.losses)
    held = ShapesDataset(n=3, seed=1)  # on the CPU: the models take them to their device
    assert len(cap.model.generate(held.images)) == 3
    assert 0 <= fusion.retrieval_top1(clip.model, held.images, held.captions) <= 1


def test_unified_and_transfusion_train_on_the_course_device(device, one_thread):
    from mmcourse.recipes import transfusion as tf_recipe
    from mmcourse.recipes import unified as unified_recipe
    from mmcourse.transfusion import N_PATCHES, PATCH_DIM
    from mmcourse.vocab import MixingLoader, course_vocab

    g = torch.Generator().manual_seed(0)
    captions = ["a red circle in the top left", "a blue square in the center"] * 4
    data = unified_recipe.CourseData(torch.randint(512, (8, 8, 8), generator=g), captions,
                                     torch.randint(1024, (2, 2, 8, 8), generator=g),
                                     ["a red circle moving left"] * 2)  # fmt: skip
    vocab = course_vocab()
    loader = MixingLoader(unified_recipe.build_sources(data, vocab), unified_recipe.DEFAULT_RATIOS,
                          vocab, batch_size=4, seed=0)  # fmt: skip
    config = unified_recipe.default_config(vocab, n_layer=1, d_model=16, n_head=2)
    r = unified_recipe.train_unified(loader, config=config, steps=2, progress=False, device=device)
    assert _on(r.model, device) and _finite(r.losses)
    latents = torch.randn(8, N_PATCHES, PATCH_DIM, generator=g)
    config = tf_recipe.default_config(n_layer=1, n_head=2, d_model=16)
    r = tf_recipe.train_transfusion(latents, captions, config=config, steps=2, batch_size=4,
                                    progress=False, device=device)  # fmt: skip
    assert _on(r.model, device) and _finite(r.losses)


def test_the_course_device_is_what_the_fixture_gives(device):
    assert env.same_device(mmcourse.device(), device)


# ------------------------------------------------------------------- nbval on a loaded machine


def test_nbval_waits_a_minute_for_a_finished_cells_outputs(tmp_path):
    """conftest.py at the root lengthens nbval's 5 s wait for outputs on every notebook cell
    (checked on real nbval items, so an nbval release that renames the setting fails here)."""
    probe = tmp_path / "output_wait_probe.py"
    probe.write_text(
        "def pytest_collection_finish(session):\n"
        "    for item in session.items:\n"
        "        print('OUTPUT_WAIT', getattr(item, 'output_timeout', None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "output_wait_probe", "--nbval-lax", "solutions/00_welcome.ipynb"],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])},
    )  # fmt: skip
    waits = re.findall(r"^OUTPUT_WAIT (\S+)$", done.stdout, re.MULTILINE)
    assert waits and set(waits) == {"60"}, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would run the whole check")
def test_gpu_check_parses_and_says_it_needs_a_gpu(tmp_path):
    script = ROOT / ".ci" / "gpu-check"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(["bash", str(script), "--python", sys.executable, "--logs",
                           str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "needs one" in done.stdout, done.stdout + done.stderr


def test_gpu_check_rehearses_its_phases_on_the_cpu(tmp_path):
    """`--rehearse` runs the check's own machinery (environment report, a phase, the summary)
    without a GPU, so the script can be tried before GPU time is spent on it."""
    script = ROOT / ".ci" / "gpu-check"
    done = subprocess.run(
        ["bash", str(script), "--rehearse", "--python", sys.executable, "--logs", str(tmp_path),
         "--unit-only", "--workers", "1", "--pytest-args", "-k test_device_normalisation"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = (tmp_path / "summary.txt").read_text()
    assert done.returncode == 0, summary + (tmp_path / "unit.log").read_text()[-3000:]
    assert "rehearsal" in summary and "mmcourse device              cpu" in summary
    assert re.search(r"^unit tests +\d+ s +exit +0 +1 passed", summary, re.MULTILINE), summary


def test_gpu_check_names_what_its_wheels_cannot_provide(tmp_path):
    """A bare python whose wheels folder lacks what it needs stops at once with what is missing,
    not later inside pytest's collection."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")],
                   check=True)  # fmt: skip
    (tmp_path / "wheels").mkdir()
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "gpu-check"), "--rehearse", "--python",
         str(tmp_path / "bare" / "bin" / "python"), "--wheels", str(tmp_path / "wheels"),
         "--logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "installing what this python lacks (nbval" in done.stdout
    assert f"no wheel in {tmp_path / 'wheels'} provides what is missing" in done.stdout
