"""Group pytest's `--durations=0` output by test file: a Markdown table for benchmarks/results/test_times.md.

    python -m pytest --durations=0 -vv ... > durations.txt   # -vv: also the phases under 5 ms
    python scripts/durations_by_file.py durations.txt [--top 10]

Each row: the file, how many tests it ran (the `call` lines), and the seconds of its setup, call and teardown
phases summed (a module- or session-scoped fixture is charged to the first test that needs it). The totals row
adds the files; pytest's own summary line and a `wall=` line (as `make test` prints it) are repeated below it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*(?P<s>[0-9.]+)s\s+(?P<phase>setup|call|teardown)\s+(?P<id>\S+)")


def parse(text: str) -> tuple[dict[str, dict[str, float]], list[tuple[float, str, str]], list[str]]:
    """file -> {phase: seconds, 'tests': count}, every (seconds, phase, test id), and the summary lines."""
    files: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    entries, summary = [], []
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            seconds, phase, test = float(match["s"]), match["phase"], match["id"]
            name = test.split("::", 1)[0]
            files[name][phase] += seconds
            files[name]["tests"] += phase == "call"
            entries.append((seconds, phase, test))
        elif re.search(r"\b(passed|failed)\b.* in [0-9.]+s", line) or line.startswith(("wall", "rc=", "make test:")):
            summary.append(line.strip("= "))
    return files, entries, summary


def table(files: dict[str, dict[str, float]]) -> str:
    total = sum(sum(v for k, v in phases.items() if k != "tests") for phases in files.values()) or 1.0
    rows = ["| file | tests | seconds | share |", "|---|---:|---:|---:|"]
    ordered = sorted(files.items(), key=lambda kv: -sum(v for k, v in kv[1].items() if k != "tests"))
    for name, phases in ordered:
        seconds = sum(v for k, v in phases.items() if k != "tests")
        rows.append(f"| {name} | {int(phases['tests'])} | {seconds:.1f} | {100 * seconds / total:.1f} % |")
    count = sum(int(p["tests"]) for p in files.values())
    rows.append(f"| **all** | {count} | {total:.1f} | 100 % |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("durations", type=Path, help="a file holding pytest's --durations=0 output")
    parser.add_argument("--top", type=int, default=10, help="also list this many slowest phases (default 10)")
    args = parser.parse_args(argv)
    files, entries, summary = parse(args.durations.read_text(encoding="utf-8", errors="replace"))
    if not files:
        print(f"{args.durations}: no `--durations` lines found", file=sys.stderr)
        return 2
    print(table(files))
    for line in summary:
        print(f"\n{line}")
    if args.top:
        print(f"\nslowest {args.top}:\n")
        for seconds, phase, test in sorted(entries, reverse=True)[:args.top]:
            print(f"- {seconds:.1f} s {phase} `{test}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
