"""How long each solution notebook takes a grader: nbval over it, alone, kernel start included.

    python benchmarks/run.py notebooks                      # every solution notebook, in turn
    python benchmarks/notebooks.py --update-readme          # ... and write the README's column
    python benchmarks/notebooks.py 04 08 --update-readme    # only these chapters

The README's course map has a CPU-time column; this is the code that fills it, and its sentence
under the map names the machine and the date. Run it on a quiet machine: every notebook runs in
a fresh process of its own, one after another, on the course device (`mmcourse.device()`; the
README's column is written only from a CPU run), and a busy machine (load average above 0.5 at
the start) is reported. Budget
(COURSE_GUIDE §6 and issue 23): each notebook within BUDGET_S on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
README = ROOT / "README.md"
BUDGET_S = 120
# The README sentence this script owns, up to the blank line after it.
SENTENCE = re.compile(r"^CPU time: .*?(?=\n\n)", re.MULTILINE | re.DOTALL)


def notebooks(chapters: list[str] | None = None) -> list[Path]:
    """The solution notebooks, or those whose number is in `chapters` ("04", "8")."""
    found = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
    if not chapters:
        return found
    wanted = {f"{int(c):02d}" for c in chapters}
    picked = [p for p in found if p.name[:2] in wanted]
    missing = wanted - {p.name[:2] for p in picked}
    if missing:
        raise SystemExit(f"no solution notebook for chapter(s) {sorted(missing)}")
    return picked


def time_notebook(path: Path) -> float:
    """Seconds for `pytest --nbval-lax` over one notebook (what `make test` and a grader run),
    from the process start: the kernel's start and torch's import are part of a learner's wait."""
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
        "--nbval-current-env", "--nbval-cell-timeout=600", str(path),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{path.name} failed under nbval:\n{done.stdout[-3000:]}")
    return seconds


def measure(paths: list[Path]) -> dict[str, float]:
    """{"00_welcome": seconds, ...}, each notebook alone, in turn."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: load average {load:.1f} at the start: the times will be inflated")
    times = {}
    for path in paths:
        times[path.stem] = time_notebook(path)
        print(f"{path.stem:28s} {times[path.stem]:6.0f} s", flush=True)
    return times


def run() -> dict[str, float | int | str]:
    """The benchmark: seconds per notebook, the slowest and how many exceed the budget."""
    times = measure(notebooks())
    results: dict[str, float | int | str] = {
        f"seconds_{name[:2]}": round(t, 1) for name, t in times.items()
    }
    results["slowest_seconds"] = round(max(times.values()), 1)
    results["over_budget"] = sum(t > BUDGET_S for t in times.values())
    results["budget_seconds"] = BUDGET_S
    return results


def update_readme(times: dict[str, float], machine: str, text: str) -> str:
    """`text` (the README) with the CPU-time cells of the measured chapters and the sentence
    that says where and when they were measured."""
    for name, seconds in times.items():
        row = re.compile(rf"^(\| {name[:2]} \|[^|\n]*\|[^|\n]*\| )[^|\n]*( \|)", re.MULTILINE)
        text, found = row.subn(rf"\g<1>{seconds:.0f} s\g<2>", text)
        if found != 1:
            raise SystemExit(f"README.md has {found} course-map rows for chapter {name[:2]}")
    old = SENTENCE.search(text)
    if not old:
        raise SystemExit("README.md has no paragraph starting 'CPU time: ' to update")
    dates = _dates(old.group(0))
    measured = {name[:2] for name in times}
    if f"on {machine}, " not in old.group(0):  # times of two machines never share the column
        missing = set().union(*dates.values()) - measured
        if missing:
            raise SystemExit(
                f"the README's column was measured on another machine; measure every chapter "
                f"here (missing: {', '.join(sorted(missing))})"
            )
        dates = {}
    today = datetime.date.today().isoformat()
    for chapters in dates.values():
        chapters.difference_update(measured)  # measured again today
    dates.setdefault(today, set()).update(measured)
    when = " and ".join(
        f"{day} (chapters {', '.join(sorted(chapters))})"
        for day, chapters in sorted(dates.items())
        if chapters
    )
    sentence = (
        "CPU time: the whole notebook under nbval, alone, kernel start included (what `make "
        "test` and a grader run; `python benchmarks/notebooks.py --update-readme` measures it), "
        f"on {machine}, {when}; the budget is {BUDGET_S} s a notebook."
    )
    return SENTENCE.sub(lambda _: sentence, text, count=1)


def _dates(sentence: str) -> dict[str, set[str]]:
    """{date: the chapters measured that day} read from the README's sentence."""
    found = re.findall(r"(\d{4}-\d\d-\d\d) \(chapters ([\d, ]+)\)", sentence)
    return {day: set(chapters.split(", ")) for day, chapters in found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    parser.add_argument("--update-readme", action="store_true", help="write the README column")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from run import machine, measured_on  # the benchmarks' own machine line

    info = machine()
    if args.update_readme and info["device"] != "cpu":
        raise SystemExit(f"the README's column is CPU time; this run is on {info['device']}")
    times = measure(notebooks(args.chapters))
    over = [name for name, t in times.items() if t > BUDGET_S]
    print(f"slowest {max(times.values()):.0f} s; over the {BUDGET_S} s budget: {over or 'none'}")
    if args.update_readme:
        README.write_text(update_readme(times, measured_on(info), README.read_text()))
        print(f"updated {README.relative_to(ROOT)}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
