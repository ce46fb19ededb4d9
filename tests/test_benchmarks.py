"""benchmarks/run.py's contract on a tiny fake benchmark: a JSON last line, the README tables (one
for the CPU, one for a GPU), a run saved to JSON and written back; and the benchmarks' GPU path
checked on the CPU: timers that wait for the device, no tensor left on the host."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmcourse.checks._placement import PlacementAudit

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
FAKE = """\
def run():
    print("fake benchmark chatter")
    return {"items_per_s": 12345.678, "accuracy": 0.98765, "steps": 3, "mode": "interpreted"}
"""
README = """\
# Benchmarks

Some prose the refresh must keep.

<!-- BEGIN BENCHMARK TABLE (written by `make bench`) -->
Not measured yet.
<!-- END BENCHMARK TABLE -->

Text after the table.
"""
GPU_INFO = {
    "cpu": "Some Xeon",
    "cores": "16",
    "torch": "2.11.0+cu130",
    "device": "cuda:0",
    "gpu": "NVIDIA H200",
    "gpu_memory_gib": "140",
    "cuda": "13.0",
}
CPU_INFO = {"cpu": "AMD EPYC", "cores": "2", "torch": "2.13.0+cpu", "device": "cpu"}


def _load(name: str):
    """benchmarks/NAME.py as a module, without running it."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load("run")


def _run(*args: str) -> subprocess.CompletedProcess:
    """The CLI as `make bench` and users call it, in a fresh process, on the CPU (which table a
    run writes depends on its device; the GPU's is tested with a saved run)."""
    env = os.environ | {"MMCOURSE_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def on_cpu(monkeypatch):
    """runner.main in this process, measuring on the CPU."""
    monkeypatch.setenv("MMCOURSE_DEVICE", "cpu")


@pytest.fixture
def bench_dir(tmp_path) -> Path:
    (tmp_path / "fake.py").write_text(FAKE, encoding="utf-8")
    (tmp_path / "other.py").write_text("def run():\n    return {'x': 1}\n", encoding="utf-8")
    (tmp_path / "_helper.py").write_text("raise RuntimeError('not a benchmark')\n", "utf-8")
    (tmp_path / "README.md").write_text(README, encoding="utf-8")
    return tmp_path


def test_json_is_the_last_line(bench_dir):
    result = _run("fake", "--json", "--dir", str(bench_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    measured = json.loads(lines[-1])
    assert measured == {
        "items_per_s": 12345.678,
        "accuracy": 0.98765,
        "steps": 3,
        "mode": "interpreted",
    }
    assert "fake benchmark chatter" in result.stdout
    assert any("items_per_s" in line and "12,346" in line for line in lines[:-1]), "no table"


def test_all_refreshes_the_readme_table(bench_dir):
    for _ in range(2):  # a second refresh replaces the first, it does not add a table
        result = _run("--all", "--update-readme", "--json", "--dir", str(bench_dir))
        assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout.strip().splitlines()[-1])) == {"fake", "other"}
    text = (bench_dir / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nSome prose the refresh must keep.")
    assert text.rstrip().endswith("Text after the table.")
    assert text.count("BEGIN BENCHMARK TABLE") == 1 and "Not measured yet" not in text
    assert "| fake | items_per_s | 12,346 |" in text
    assert "| fake | accuracy | 0.9877 |" in text
    assert "| other | x | 1 |" in text
    assert "_helper" not in text
    assert f"torch {torch.__version__}" in text
    assert "cores" in text and "device" in text and "Measured 20" in text


def test_unknown_benchmark_names_the_available_ones(bench_dir):
    with pytest.raises(SystemExit, match="available: \\['fake', 'other'\\]"):
        runner.main(["nope", "--dir", str(bench_dir)])


def test_a_benchmark_must_return_named_measurements(bench_dir):
    (bench_dir / "bad.py").write_text("def run():\n    return [1, 2]\n", encoding="utf-8")
    with pytest.raises(TypeError, match=r"bad\.py: run\(\) must return a non-empty dict"):
        runner.main(["bad", "--json", "--dir", str(bench_dir)])
    (bench_dir / "bad.py").write_text("def run():\n    return {'x': None}\n", encoding="utf-8")
    with pytest.raises(TypeError, match="'x': None"):
        runner.main(["bad", "--dir", str(bench_dir)])


@pytest.mark.parametrize("args", [["fake", "--update-readme"], [], ["fake", "--all"]])
def test_bad_arguments_are_refused(bench_dir, args):
    with pytest.raises(SystemExit) as exit_info:
        runner.main([*args, "--dir", str(bench_dir)])
    assert exit_info.value.code == 2


def test_the_course_readme_has_one_table_section():
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert text.count(runner.BEGIN) == 1
    assert text.count(runner.END) == 1


def test_the_course_readme_has_one_gpu_table_section():
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert text.count(runner.GPU_BEGIN) == 1 and text.count(runner.GPU_END) == 1
    assert text.index(runner.END) < text.index(runner.GPU_BEGIN)


# --- two tables: a GPU run never overwrites the CPU's, nor the other way round --------------


def _block(text: str, begin: str, end: str) -> str:
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_a_gpu_run_writes_its_own_table(bench_dir):
    readme = bench_dir / "README.md"
    runner.update_readme(readme, {"fake": {"x": 1}}, CPU_INFO, "2026-12-04")
    cpu_table = _block(readme.read_text(encoding="utf-8"), runner.BEGIN, runner.END)
    runner.update_readme(readme, {"fake": {"x": 2.5}}, GPU_INFO, "2026-12-05")
    text = readme.read_text(encoding="utf-8")
    assert _block(text, runner.BEGIN, runner.END) == cpu_table  # untouched
    assert text.rstrip().endswith(runner.GPU_END) and "## Latest results on a GPU" in text
    gpu_table = _block(text, runner.GPU_BEGIN, runner.GPU_END)
    assert "Measured 2026-12-05 on NVIDIA H200 (140 GiB, CUDA 13.0), host Some Xeon (16 cores)" in (
        gpu_table
    )
    assert "| fake | x | 2.5 |" in gpu_table and "| fake | x | 1 |" not in gpu_table
    runner.update_readme(readme, {"fake": {"x": 3}}, CPU_INFO, "2026-12-06")  # and back
    text = readme.read_text(encoding="utf-8")
    assert _block(text, runner.GPU_BEGIN, runner.GPU_END) == gpu_table
    assert "| fake | x | 3 |" in _block(text, runner.BEGIN, runner.END)
    assert text.count(runner.BEGIN) == text.count(runner.GPU_BEGIN) == 1
    assert "Measured 2026-12-06 on AMD EPYC (2 cores), torch 2.13.0+cpu, device cpu." in text


def test_the_machine_line_of_a_cpu_run_is_as_before():
    assert runner.measured_on(CPU_INFO) == "AMD EPYC (2 cores), torch 2.13.0+cpu, device cpu"


@pytest.mark.gpu
def test_a_gpu_machine_names_its_gpu(monkeypatch):
    monkeypatch.setenv("MMCOURSE_DEVICE", "cuda")
    info = runner.machine()
    assert info["gpu"] == torch.cuda.get_device_name() and info["device"].startswith("cuda")
    assert info["gpu"] in runner.measured_on(info)


# --- a run saved with --json-out, its table written with --from-json -----------------------


def test_a_saved_run_writes_the_same_table(bench_dir, on_cpu, capsys):
    saved = bench_dir / "run.json"
    assert (
        runner.main(["--all", "--update-readme", "--json-out", str(saved), "--dir", str(bench_dir)])
        == 0
    )
    direct = (bench_dir / "README.md").read_text(encoding="utf-8")
    run = json.loads(saved.read_text(encoding="utf-8"))
    assert run["complete"] is True and run["date"] == datetime.date.today().isoformat()
    assert run["machine"] == runner.machine() and "gpu" not in run["machine"]
    assert run["results"] == {
        "fake": {"items_per_s": 12345.678, "accuracy": 0.98765, "steps": 3, "mode": "interpreted"},
        "other": {"x": 1},
    }
    assert set(run["seconds"]) == {"fake", "other"}
    assert not list(bench_dir.glob("*.partial"))

    (bench_dir / "README.md").write_text(README, encoding="utf-8")
    capsys.readouterr()
    assert (
        runner.main(
            ["--from-json", str(saved), "--update-readme", "--json", "--dir", str(bench_dir)]
        )
        == 0
    )
    assert (bench_dir / "README.md").read_text(encoding="utf-8") == direct
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == run["results"]
    assert re.search(r"items_per_s\s+12,346", out), "no table printed"


def test_a_saved_gpu_run_fills_the_gpu_table(bench_dir, on_cpu):
    saved = bench_dir / "gpu.json"
    results = {"fake": {"speedup": 41.5, "note": "skipped on a GPU: why"}}
    run = {"date": "2026-12-05", "machine": GPU_INFO, "complete": True, "results": results}
    saved.write_text(json.dumps(run), encoding="utf-8")
    runner.main(["--from-json", str(saved), "--update-readme", "--dir", str(bench_dir)])
    text = (bench_dir / "README.md").read_text(encoding="utf-8")
    assert "Not measured yet" in _block(text, runner.BEGIN, runner.END)  # the CPU's: untouched
    gpu_table = _block(text, runner.GPU_BEGIN, runner.GPU_END)
    assert "Measured 2026-12-05 on NVIDIA H200" in gpu_table
    assert "| fake | speedup | 41.5 |" in gpu_table
    assert "| fake | note | skipped on a GPU: why |" in gpu_table


def test_a_run_cut_short_keeps_what_it_measured(bench_dir, on_cpu):
    (bench_dir / "zz_crash.py").write_text("def run():\n    raise RuntimeError('out of time')\n")
    saved = bench_dir / "run.json"
    with pytest.raises(RuntimeError, match="out of time"):
        runner.main(["--all", "--json-out", str(saved), "--dir", str(bench_dir)])
    run = json.loads(saved.read_text(encoding="utf-8"))
    assert run["complete"] is False and set(run["results"]) == {"fake", "other"}
    with pytest.raises(SystemExit, match="partial run \\(fake, other\\).*--all"):
        runner.main(["--from-json", str(saved), "--update-readme", "--dir", str(bench_dir)])
    runner.main(["--from-json", str(saved), "--dir", str(bench_dir)])  # showing it is fine


def test_named_benchmarks_save_a_partial_run(bench_dir, on_cpu):
    saved = bench_dir / "logs" / "run.json"  # a folder that does not exist yet
    runner.main(["fake", "other", "--json-out", str(saved), "--dir", str(bench_dir)])
    assert json.loads(saved.read_text(encoding="utf-8"))["complete"] is False


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "cannot read a saved run"),
        ("[1, 2]", "not a run saved by --json-out: list"),
        ('{"date": "2026-12-05", "machine": {}, "complete": true}', r"wrong: \['results'\]"),
        (
            json.dumps({"date": "d", "machine": {"cpu": "x"}, "complete": True, "results": {}}),
            r"wrong: \['machine\.cores', 'machine\.torch', 'machine\.device'\]",
        ),
        (
            json.dumps(
                {"date": "d", "machine": CPU_INFO, "complete": True, "results": {"a": {"x": None}}}
            ),
            "'x': None",
        ),
    ],
)
def test_a_bad_saved_run_is_refused_plainly(bench_dir, content, message):
    saved = bench_dir / "bad.json"
    saved.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit, match=message):
        runner.main(["--from-json", str(saved), "--update-readme", "--dir", str(bench_dir)])
    assert "Not measured yet" in (bench_dir / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "args", [["--from-json", "x.json", "--all"], ["--from-json", "x.json", "fake"],
             ["--from-json", "x.json", "--json-out", "y.json"]],
)  # fmt: skip
def test_from_json_runs_nothing_else(bench_dir, args):
    with pytest.raises(SystemExit) as exit_info:
        runner.main([*args, "--dir", str(bench_dir)])
    assert exit_info.value.code == 2


# --- the benchmarks' GPU path, checked on the CPU -------------------------------------------

BENCHMARKS = ROOT / "benchmarks"
OWNED_ELSEWHERE = {"fused_vq"}  # its own GPU path: measured with triton.testing.do_bench


def _benchmark(name: str):
    """benchmarks/NAME.py as a module (with its `_timing` import resolved, as run.py does)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_benchmark_pins_itself_to_the_cpu():
    for name in sorted(set(runner.available()) - OWNED_ELSEWHERE):
        source = (BENCHMARKS / f"{name}.py").read_text(encoding="utf-8")
        for pinned in ('device="cpu"', "device='cpu'", "one_thread"):
            assert pinned not in source, f"benchmarks/{name}.py: {pinned}"


@pytest.fixture
def synchronizations(monkeypatch) -> list[str]:
    """torch.cuda.synchronize replaced by a recorder, so the GPU timers run on a CPU."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: calls.append("sync"))
    return calls


def test_timers_wait_for_a_gpu_before_reading_the_clock(synchronizations):
    timing = _benchmark("_timing")
    out, seconds = timing.timed(lambda: synchronizations.append("work") or 7, "cuda")
    assert out == 7 and seconds >= 0
    assert synchronizations == ["sync", "work", "sync"]
    synchronizations.clear()
    timing.best_seconds(lambda: synchronizations.append("work"), 2, dev="cuda")
    assert synchronizations == ["work"] + ["sync", "work", "sync"] * 2  # warmed up first
    synchronizations.clear()
    timing.warm_up(lambda: synchronizations.append("work"), "cuda")
    assert synchronizations == ["work", "sync"]


def test_timers_on_the_cpu_time_as_before(synchronizations):
    timing = _benchmark("_timing")
    timing.timed(lambda: synchronizations.append("work"), "cpu")
    timing.best_seconds(lambda: synchronizations.append("work"), 2, dev="cpu")
    timing.warm_up(lambda: synchronizations.append("warm-up"), "cpu")
    assert synchronizations == ["work"] * 3  # no wait, no extra call
    timing.best_seconds(lambda: synchronizations.append("work"), 2, warmup=True, dev="cpu")
    assert synchronizations == ["work"] * 6


def test_ar_timings_keep_every_tensor_on_the_device(device, monkeypatch):
    ar_bench = _benchmark("ar")
    from mmcourse import ar, recipes
    from mmcourse.data import all_captions
    from mmcourse.recipes import diffusion as diffusion_recipe

    model = recipes.load("ar", device=device)
    gen = diffusion_recipe.load_generator(device=device)
    prompts = ar_bench._prompts(all_captions()[:2], device)
    monkeypatch.setattr(ar, "IMAGE_LEN", 4)  # separate guidance over 4 tokens, not 64
    with PlacementAudit():
        assert ar_bench._ar_ms_per_step(model, 2) > 0
        assert ar_bench._ddim_ms_per_step(gen, 1) > 0
        assert ar_bench._count_forwards(model, lambda: ar_bench._separate_cfg(model, prompts)) == 8


def test_diffusion_and_vit_timings_keep_every_tensor_on_the_device(device, monkeypatch):
    from mmcourse.recipes import diffusion as diffusion_recipe

    gen = diffusion_recipe.load_generator(device=device)
    vit_bench = _benchmark("vit")
    monkeypatch.setattr(vit_bench, "SIZE", 32)  # the same code on a small image
    with PlacementAudit():
        assert _benchmark("diffusion")._ms_per_step(gen, 1, (3, 32, 32)) > 0
        measured = vit_bench._patch_embedding(device, batch=2)
    assert measured["patch_embed_max_error"] < 1e-12
    assert measured["patch_embed_max_error_fp32"] < 1e-5


def _readme_measured_on(notebook_times, machine: str) -> str:
    """The README as if every chapter had been measured on `machine` (10 s each)."""
    everything = {p.stem: 10.0 for p in notebook_times.notebooks()}
    return notebook_times.update_readme(everything, machine, (ROOT / "README.md").read_text())


def test_notebook_times_fill_the_readme_column_and_sentence():
    notebook_times = _load("notebooks")
    text = _readme_measured_on(notebook_times, "a test machine")
    new = notebook_times.update_readme(
        {"04_diffusion": 97.4, "08_transfusion": 111.6}, "a test machine", text
    )
    assert "| 04 | diffusion (`04_diffusion.ipynb`) |" in new
    row = next(line for line in new.splitlines() if line.startswith("| 04 |"))
    assert row.split(" | ")[3] == "97 s", row
    row = next(line for line in new.splitlines() if line.startswith("| 08 |"))
    assert row.split(" | ")[3] == "112 s", row
    assert "on a test machine, " in new and "04, 05, 06, 07, 08" in new
    assert new.count("CPU time: ") == text.count("CPU time: ") == 1
    assert "The numbers come from the shipped models" in new  # the next paragraph stays
    with pytest.raises(SystemExit, match="rows for chapter 42"):
        notebook_times.update_readme({"42_x": 1.0}, "a test machine", text)


def test_notebook_times_of_some_chapters_keep_the_others_dates():
    notebook_times = _load("notebooks")
    text = _readme_measured_on(notebook_times, "a test machine")
    text = text.replace(datetime.date.today().isoformat(), "2026-01-02")  # an earlier run
    new = notebook_times.update_readme({"04_diffusion": 70.0}, "a test machine", text)
    today = datetime.date.today().isoformat()
    assert "2026-01-02 (chapters 00, 01, 02, 03, 05, " in new
    assert f"and {today} (chapters 04);" in new
    with pytest.raises(SystemExit, match="another machine.*missing: 00, 01"):
        notebook_times.update_readme({"04_diffusion": 70.0}, "another machine", text)
    everything = {p.stem: 9.0 for p in notebook_times.notebooks()}
    whole = notebook_times.update_readme(everything, "another machine", text)
    sentence = notebook_times.SENTENCE.search(whole).group(0)
    assert f"on another machine, {today} (chapters 00, 01," in sentence
    assert "2026-01-02" not in sentence


def test_notebook_times_name_a_missing_chapter():
    notebook_times = _load("notebooks")
    assert [p.name[:2] for p in notebook_times.notebooks(["4", "08"])] == ["04", "08"]
    with pytest.raises(SystemExit, match=r"\['13'\]"):
        notebook_times.notebooks(["13"])


def test_evaluation_reports_the_pitfalls_and_every_generator(monkeypatch):
    # the recipe's measures faked (the real ones take a minute): the benchmark's keys and sums
    from mmcourse.recipes import evaluation as evaluation_recipe

    names = evaluation_recipe.GENERATORS

    def row(i: int, name: str) -> evaluation_recipe.Row:
        fid, judge = (10.0 + i, 9.0, 11.0 + i), (0.9 - i / 10, 0.8, 1.0)
        return evaluation_recipe.Row(name, fid, *[(0.0, 0.0, 0.0)] * 4, judge, 1.0, 10)

    fakes = {
        "floors": lambda: {"n": 450, "real_fid": (3.0, 2.0, 4.0), "real_kid": (0.01, 0.0, 0.02),
                           "noise_fid": (200.0, 190.0, 210.0), "noise_kid": (10.0, 9.0, 11.0)},
        "small_n_bias": lambda ns: {
            ns[0]: evaluation_recipe.SmallN((7.5, 7.0, 8.0), (-0.06, -0.1, 0.0), 10),
            ns[1]: evaluation_recipe.SmallN((0.5, 0.4, 0.6), (0.001, 0.0, 0.002), 2),
        },
        "mode_dropped": lambda: {"fid": (11.0, 10.0, 12.0), "kid": (0.1, 0.05, 0.15),
                                 "precision": (0.97, 0.95, 0.99), "recall": (0.5, 0.45, 0.55)},
        "load_samples": lambda: "samples",
        "leaderboard": lambda samples, rounds: [row(i, name) for i, name in enumerate(names)],
        # the rater prefers the generators in their order: the arena agrees with both columns
        "preference_quality": lambda samples, rater: -torch.arange(
            float(len(names)))[:, None, None].expand(-1, 2, 3),
    }  # fmt: skip
    for name, fake in fakes.items():
        monkeypatch.setattr(evaluation_recipe, name, fake)
    results = _benchmark("evaluation").run()
    runner._check_results(results, "benchmarks/evaluation.py")
    per_generator = {f"{m}_{name}" for name in names for m in ("fid", "judge")}
    assert set(results) == {
        "fid_real_halves", "fid_noise", "fid_small_n_bias", "kid_real_halves", "kid_small_n_bias",
        "recall_mode_dropped", "precision_mode_dropped", "fid_mode_dropped", "leaderboard_rows",
        "fid_judge_tau", "leaderboard_s", "arena_judge_tau", "arena_fid_tau", *per_generator,
    }  # fmt: skip
    assert results["fid_small_n_bias"] == 7.0 and results["leaderboard_rows"] == len(names)
    assert results["fid_judge_tau"] == 1.0  # FID rises as the judge falls: the same order
    assert results["arena_judge_tau"] == results["arena_fid_tau"] == 1.0
    assert results[f"fid_{names[1]}"] == 11.0 and results[f"judge_{names[1]}"] == 0.8


def test_retrieval_reports_the_issue_keys(monkeypatch):
    # the recipe's measures faked (the real ones sample 1,200 images): the keys and the timing
    from mmcourse import recipes
    from mmcourse.recipes import retrieval as retrieval_recipe

    calls = []

    def measure(rag, baseline, mem, per_caption, seed=0, device="cpu"):
        calls.append((per_caption, seed))
        return {"recall_at_1": 1.0, "recall_at_4": 1.0, "heldout_judge_no_retrieval": 0.4,
                "heldout_judge_retrieval": 0.6 + seed / 100, "heldout_judge_random_context": 0.3,
                "rag_gain_points": 20.0 + seed, "heldout_judge_rag_no_context": 0.4,
                "eval_seconds": 9.0}  # fmt: skip

    def measure_captions(rag, baseline, mem, per_caption, seed=0, device="cpu"):
        calls.append((rag, baseline, per_caption, seed))
        return {"image_recall_at_1": 1.0, "heldout_caption_no_retrieval": 0.1,
                "heldout_caption_retrieval": 0.8 - seed / 100, "caption_gain_points": 70.0 - seed,
                "eval_seconds": 3.0}  # fmt: skip

    monkeypatch.setattr(retrieval_recipe, "memory", lambda: "memory")
    monkeypatch.setattr(recipes, "load", lambda name, device: name)
    monkeypatch.setattr(retrieval_recipe, "measure", measure)
    monkeypatch.setattr(retrieval_recipe, "measure_captions", measure_captions)
    results = _benchmark("retrieval").run()
    runner._check_results(results, "benchmarks/retrieval.py")
    assert set(results) == {
        "recall_at_1", "recall_at_4", "heldout_judge_no_retrieval", "heldout_judge_retrieval",
        "heldout_judge_random_context", "rag_gain_points", "heldout_judge_rag_no_context", "eval_s",
        "samples_per_row", "image_recall_at_1", "heldout_caption_no_retrieval",
        "heldout_caption_retrieval", "caption_gain_points",
    }  # fmt: skip
    caption_calls = [c for c in calls if len(c) == 4]
    calls = [c for c in calls if len(c) == 2]
    assert calls[-4:] == [(30, 0), (30, 1), (30, 2), (30, 3)]  # after the warm-up call
    assert caption_calls[-4:] == [  # the captioning pair, not the caption → image one
        ("retrieval_rag_captions", "retrieval_baseline_captions", 30, s) for s in range(4)
    ]
    assert results["caption_gain_points"] == 68.5
    assert results["samples_per_row"] == 3600  # 4 seeds × 30 × 30 held-out captions
    assert results["rag_gain_points"] == 21.5  # pooled: the mean over the seeds
    assert results["heldout_judge_retrieval"] == pytest.approx(0.615)


def test_scaling_reports_the_issue_keys(monkeypatch):
    # the two-process gaps faked (tests/test_distributed.py measures them); the law fitted for
    # real on rows made from a known law
    from mmcourse import distributed
    from mmcourse.recipes import scaling as scaling_recipe
    from mmcourse.scaling import Law

    law = Law(E=1.5, A=30.0, alpha=0.5, B=200.0, beta=0.4)
    rows = [{"d_model": d, "n_layer": n, "params": 10 * n * d * d, "steps": b,
             "tokens": 1200 * b, "mix": "caption_image+image_caption",
             "loss": law(10 * n * d * d, 1200 * b)}
            for d, n in (*scaling_recipe.SIZES, scaling_recipe.HELD_OUT)
            for b in scaling_recipe.BUDGETS]  # fmt: skip
    fsdp_calls = []

    def gap(build, loss, batch, fsdp=False):
        fsdp_calls.append(fsdp)
        return {"grad": 2e-8 if fsdp else 1e-8, "weight": 3e-9, "world_size": 2}

    monkeypatch.setattr(distributed, "gradient_gap", gap)
    monkeypatch.setattr(scaling_recipe, "measurements", lambda: {"rows": rows})
    results = _benchmark("scaling").run()
    runner._check_results(results, "benchmarks/scaling.py")
    for key in ("ddp_grad_max_abs_diff", "fsdp_grad_max_abs_diff", "ddp_world_size",
                "law_alpha", "law_beta", "law_heldout_rel_error"):  # fmt: skip
        assert key in results, key
    assert fsdp_calls == [False, True] and results["fsdp_grad_max_abs_diff"] == 2e-8
    assert results["law_alpha"] == pytest.approx(0.5, rel=0.02)
    assert results["law_heldout_rel_error"] < 1e-3 and results["law_points"] == 20
