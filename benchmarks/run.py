"""Run benchmarks: each `benchmarks/NAME.py` defines `run() -> dict[str, float | int | str]`.

    python benchmarks/run.py data                 # a readable table
    python benchmarks/run.py data --json          # ... and, as the last line, one JSON object
    python benchmarks/run.py --all --update-readme   # every benchmark; refresh benchmarks/README.md
    python benchmarks/run.py --all --json-out run.json       # ... or keep the run in a file
    python benchmarks/run.py --from-json run.json --update-readme   # its table, on any machine

Benchmarks run on the course device (`mmcourse.device()`). The README keeps two tables, each
between its own BEGIN/END markers below with the date and the machine: a run on the CPU writes
the first, a run on a CUDA GPU the second, so neither overwrites the other.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

import mmcourse
from mmcourse import env

HERE = Path(__file__).resolve().parent
BEGIN = "<!-- BEGIN BENCHMARK TABLE (written by `make bench`) -->"
END = "<!-- END BENCHMARK TABLE -->"
GPU_BEGIN = "<!-- BEGIN GPU BENCHMARK TABLE (written by `make bench` on a GPU, or --from-json) -->"
GPU_END = "<!-- END GPU BENCHMARK TABLE -->"

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
    _check_results(results, str(path))
    return results


def _check_results(results: object, where: str) -> None:
    """Raise TypeError unless `results` is a non-empty dict of str keys and number/str values."""
    if not isinstance(results, dict) or not results:
        raise TypeError(
            f"{where}: run() must return a non-empty dict, got {type(results).__name__}"
        )
    for key, value in results.items():
        if not isinstance(key, str) or not isinstance(value, float | int | str):
            raise TypeError(
                f"{where}: run() gave {key!r}: {value!r}; want str keys, number/str values"
            )


def machine() -> dict[str, str]:
    """What the numbers were measured on; on a GPU also `gpu` (its name), `gpu_memory_gib` and
    `cuda` (the version torch was built for)."""
    dev = mmcourse.device()
    info = {
        "cpu": env.cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "device": str(dev),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = f"{props.total_memory / 2**30:.0f}"
        info["cuda"] = str(torch.version.cuda)
    return info


def measured_on(info: dict[str, str]) -> str:
    """The README's machine line for `info` (see `machine`): the GPU first when there is one."""
    host = f"{info['cpu']} ({info['cores']} cores)"
    if "gpu" not in info:
        return f"{host}, torch {info['torch']}, device {info['device']}"
    return (
        f"{info['gpu']} ({info['gpu_memory_gib']} GiB, CUDA {info['cuda']}), host {host}, "
        f"torch {info['torch']}, device {info['device']}"
    )


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


def update_readme(
    readme: Path, all_results: dict[str, Results], info: dict[str, str], date: str | None = None
) -> None:
    """Replace the text between the markers in `readme` (appending a section if it has none):
    the CPU table's markers for a run on the CPU, the GPU table's for a run on a GPU (`info`
    has a "gpu"). `date`: when the run was measured (default: today)."""
    gpu = "gpu" in info
    begin, end = (GPU_BEGIN, GPU_END) if gpu else (BEGIN, END)
    block = "\n".join(
        [
            begin,
            f"Measured {date or datetime.date.today().isoformat()} on {measured_on(info)}.",
            "",
            *table(all_results),
            end,
        ]
    )
    text = readme.read_text(encoding="utf-8") if readme.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        title = "## Latest results on a GPU" if gpu else "## Latest results"
        text = text.rstrip("\n") + f"\n\n{title}\n\n" + block + "\n"
    readme.write_text(text, encoding="utf-8")


def save_run(path: Path, run: dict) -> None:
    """Write a run (see `load_run`) as JSON, whole or not at all (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def load_run(path: Path) -> dict:
    """A run saved by `--json-out`: {"date", "machine", "complete" (every benchmark of an --all
    run finished), "seconds" per benchmark, "results" per benchmark}."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read a saved run from {path}: {error}") from None
    wanted = {"date": str, "machine": dict, "complete": bool, "results": dict}
    if not isinstance(run, dict):
        raise SystemExit(f"{path} is not a run saved by --json-out: {type(run).__name__}")
    wrong = [k for k, kind in wanted.items() if not isinstance(run.get(k), kind)]
    machine_keys = ["cpu", "cores", "torch", "device"]
    if not wrong and "gpu" in run["machine"]:
        machine_keys += ["gpu_memory_gib", "cuda"]
    wrong += [f"machine.{k}" for k in machine_keys if not wrong and k not in run["machine"]]
    if wrong:
        raise SystemExit(f"{path} is not a run saved by --json-out (missing or wrong: {wrong})")
    for name, results in run["results"].items():
        try:
            _check_results(results, f"{path}, {name}")
        except TypeError as error:
            raise SystemExit(str(error)) from None
    return run


def _print_results(name: str, results: Results, seconds: float | None) -> None:
    print(f"\n{name}" + ("" if seconds is None else f" ({seconds:.1f} s)"))
    width = max(map(len, results))
    for key, value in results.items():
        print(f"  {key:<{width}}  {_format(value)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run")
    parser.add_argument("--all", action="store_true", help="run every benchmark")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="with --all or --from-json: rewrite README.md's table for this run's device",
    )
    parser.add_argument(
        "--json-out",
        type=Path,
        metavar="FILE",
        help="save the run (machine, date, every benchmark's results) as JSON, after each one",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="show (and with --update-readme, write) a run saved by --json-out; runs nothing",
    )
    parser.add_argument("--dir", type=Path, default=HERE, help="benchmarks directory")
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    if args.from_json is not None:
        if args.all or args.names or args.json_out is not None:
            parser.error("--from-json replays a saved run: no NAME, --all or --json-out with it")
        return _replay(args.from_json, directory, args.update_readme, args.json)
    if args.all == bool(args.names):
        parser.error("name benchmarks or pass --all, not both")
    if args.update_readme and not args.all:
        parser.error("--update-readme needs --all (the table comes from one complete run)")

    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    run = {
        "date": datetime.date.today().isoformat(),
        "machine": info,
        "complete": False,
        "seconds": {},
        "results": {},
    }
    all_results = run["results"]
    for name in available(directory) if args.all else args.names:
        start = time.perf_counter()
        all_results[name] = results = run_benchmark(name, directory)
        run["seconds"][name] = seconds = round(time.perf_counter() - start, 1)
        _print_results(name, results, seconds)
        if args.json_out is not None:
            save_run(args.json_out, run)
    run["complete"] = args.all
    if args.json_out is not None:
        save_run(args.json_out, run)
        print(f"\nsaved the run to {args.json_out}")

    if args.update_readme:
        update_readme(directory / "README.md", all_results, info, run["date"])
        print(f"\nupdated {directory / 'README.md'}")
    if args.json:
        single = len(all_results) == 1 and not args.all
        print(json.dumps(next(iter(all_results.values())) if single else all_results))
    return 0


def _replay(path: Path, directory: Path, update: bool, as_json: bool) -> int:
    """`--from-json`: print a saved run as a live one prints, and write its README table."""
    run = load_run(path)
    if update and not run["complete"]:
        raise SystemExit(
            f"{path} holds a partial run ({', '.join(run['results']) or 'no benchmark'}): "
            "--update-readme needs every benchmark (a run with --all that finished)"
        )
    info = run["machine"]
    print(f"saved run of {run['date']}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for name, results in run["results"].items():
        _print_results(name, results, run.get("seconds", {}).get(name))
    if update:
        update_readme(directory / "README.md", run["results"], info, run["date"])
        print(f"\nupdated {directory / 'README.md'}")
    if as_json:
        print(json.dumps(run["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
