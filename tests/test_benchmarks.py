"""benchmarks/run.py's contract on a tiny fake benchmark: a JSON last line, the README table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def _load_runner():
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _run(*args: str) -> subprocess.CompletedProcess:
    """The CLI as `make bench` and users call it, in a fresh process."""
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=120
    )


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
