"""Run benchmarks: each `benchmarks/NAME.py` defines `run() -> dict[str, float | int | str]`.

    python benchmarks/run.py data                 # a readable table
    python benchmarks/run.py data --json          # ... and, as the last line, one JSON object
    python benchmarks/run.py --all --update-readme   # every benchmark; refresh benchmarks/README.md

The README's table sits between the BEGIN/END markers below, with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import mmcourse

HERE = Path(__file__).resolve().parent
BEGIN = "<!-- BEGIN BENCHMARK TABLE (written by `make bench`) -->"
END = "<!-- END BENCHMARK TABLE -->"

Results = dict[str, float | int | str]


def available(directory: Path = HERE) -> list[str]:
    """The benchmark names in a directory: every NAME.py but run.py and _private.py."""
    return sorted(
        p.stem for p in directory.glob("*.py") if p.stem != "run" and not p.stem.startswith("_")
    )


def run_benchmark(name: str, directory: Path = HERE) -> Results:
    """Import `directory/NAME.py` and return what its `run()` measured."""
    path = directory / f"{name}.py"
    if name not in available(directory):
        raise SystemExit(f"no benchmark {name!r} in {directory}; available: {available(directory)}")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))  # so a benchmark can import helpers beside it
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.run()
    if not isinstance(results, dict) or not results:
        raise TypeError(f"{path}: run() must return a non-empty dict, got {type(results).__name__}")
    for key, value in results.items():
        if not isinstance(key, str) or not isinstance(value, float | int | str):
            raise TypeError(
                f"{path}: run() gave {key!r}: {value!r}; want str keys, number/str values"
            )
    return results


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    dev = mmcourse.device()
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _format(value: float | int | str) -> str:
    if isinstance(value, bool):  # before int: True is an int too
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return value


def table(all_results: dict[str, Results]) -> list[str]:
    """Markdown rows: benchmark | measurement | value."""
    rows = ["| benchmark | measurement | value |", "| --- | --- | ---: |"]
    for name, results in all_results.items():
        rows += [f"| {name} | {key} | {_format(value)} |" for key, value in results.items()]
    return rows


def update_readme(readme: Path, all_results: dict[str, Results], info: dict[str, str]) -> None:
    """Replace the text between the markers in `readme` (appending a section if it has none)."""
    today = datetime.date.today().isoformat()
    block = "\n".join(
        [
            BEGIN,
            f"Measured {today} on {info['cpu']} ({info['cores']} cores), torch {info['torch']}, "
            f"device {info['device']}.",
            "",
            *table(all_results),
            END,
        ]
    )
    text = readme.read_text(encoding="utf-8") if readme.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Latest results\n\n" + block + "\n"
    readme.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run")
    parser.add_argument("--all", action="store_true", help="run every benchmark")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument(
        "--update-readme", action="store_true", help="with --all: rewrite README.md's table"
    )
    parser.add_argument("--dir", type=Path, default=HERE, help="benchmarks directory")
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    if args.all == bool(args.names):
        parser.error("name benchmarks or pass --all, not both")
    if args.update_readme and not args.all:
        parser.error("--update-readme needs --all (the table comes from one complete run)")

    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    all_results = {}
    for name in available(directory) if args.all else args.names:
        start = time.perf_counter()
        all_results[name] = results = run_benchmark(name, directory)
        print(f"\n{name} ({time.perf_counter() - start:.1f} s)")
        width = max(map(len, results))
        for key, value in results.items():
            print(f"  {key:<{width}}  {_format(value)}")

    if args.update_readme:
        update_readme(directory / "README.md", all_results, info)
        print(f"\nupdated {directory / 'README.md'}")
    if args.json:
        single = len(all_results) == 1 and not args.all
        print(json.dumps(next(iter(all_results.values())) if single else all_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
