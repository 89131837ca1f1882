"""How long ``mlic --help`` and ``mlic --version`` take: the command line's start-up cost.

    python benchmarks/cli_startup.py [--source DIR ...] [--repeats 5]

Each ``--source`` is a folder holding an ``mlic`` package (default: this checkout), so a release
can be compared with another (``git archive <commit> | tar -x -C /tmp/before``); the commands run
in it, so that its package is the one imported. Every command runs in
a fresh interpreter, ``repeats`` times, interleaved between sources so that a change in machine
load hits all of them alike; the median is reported. Writes benchmarks/results/cli_startup.md.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COMMANDS = (["--help"], ["--version"], ["predict", "--help"])


def seconds(source: Path, args: list[str]) -> tuple[float, float] | None:
    """(wall, CPU) seconds of one run, from ``source`` (it comes first on the path: ``-m`` puts
    the working directory there, before an installed mlic)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlic", *args], cwd=source, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (wall, cpu) if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", help="folder with an mlic package")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sources = [Path(s).resolve() for s in args.source or [Path(__file__).parent.parent]]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for source in sources:
            for command in COMMANDS:
                value = seconds(source, command)
                if value is not None:
                    times.setdefault((str(source), " ".join(command)), []).append(value)
    lines = ["# `mlic` start-up time", "",
             f"`python benchmarks/cli_startup.py {' '.join(f'--source {s}' for s in sources)} "
             f"--repeats {args.repeats}`: median seconds of a fresh `python -m mlic ...`, wall "
             f"clock and CPU (user + system: less sensitive to other jobs on the machine); exit "
             f"status 0 only, a missing row failed.", "",
             "| source | command | wall s | CPU s | runs |", "|---|---|---:|---:|---:|"]
    for (source, command), values in times.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        lines.append(f"| {source} | mlic {command} | {wall:.2f} | {cpu:.2f} | {len(values)} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_startup.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
