"""How long ``mlic --help`` and ``mlic --version`` take: the command line's start-up cost.

    python benchmarks/cli_startup.py [--source DIR ...] [--repeats 5]

Each ``--source`` is a folder holding an ``mlic`` package (default: this checkout), so a release
can be compared with another (``git archive HEAD | tar -x -C /tmp/before``). Every command runs in
a fresh interpreter, ``repeats`` times, interleaved between sources so that a change in machine
load hits all of them alike; the median is reported. Writes benchmarks/results/cli_startup.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COMMANDS = (["--help"], ["--version"], ["predict", "--help"])


def seconds(source: Path, args: list[str]) -> float | None:
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlic", *args], env=env, capture_output=True)
    return time.perf_counter() - start if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", help="folder with an mlic package")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sources = [Path(s).resolve() for s in args.source or [Path(__file__).parent.parent]]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for source in sources:
            for command in COMMANDS:
                value = seconds(source, command)
                if value is not None:
                    times.setdefault((str(source), " ".join(command)), []).append(value)
    lines = ["# `mlic` start-up time", "",
             f"`python benchmarks/cli_startup.py {' '.join(f'--source {s}' for s in sources)} "
             f"--repeats {args.repeats}`: median seconds of a fresh `python -m mlic ...` "
             f"(exit status 0 only; a missing row failed).", "",
             "| source | command | median s | runs |", "|---|---|---:|---:|"]
    for (source, command), values in times.items():
        lines.append(f"| {source} | mlic {command} | {statistics.median(values):.2f} | "
                     f"{len(values)} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_startup.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
