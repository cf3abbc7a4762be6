"""Run the fault suite (tests/faults/) several times in a row and keep every run's figures.

Each run is ``pytest -m faults tests/faults``; the scenarios record what they
measured (``DRATELIMIT_FAULTS_RESULTS``), and this script collects the runs,
their outcomes and durations into one file. The figures in
docs/failure-modes.md come from it.

    python bench/bench_faults.py                        # 3 runs, about 10 minutes
    python bench/bench_faults.py --runs 1 --json /tmp/faults.json
    python bench/bench_faults.py -k partition           # some scenarios only

Needs redis-server and redis-sentinel (Debian: ``apt-get install redis-server
redis-sentinel``). Exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "faults.json"


def outcomes(junit: Path) -> dict[str, str]:
    """Test id -> passed, failed, error, skipped or xfailed, from pytest's JUnit XML."""
    found: dict[str, str] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfailed" if "xfail" in kind else "skipped"
        found[name] = outcome
    return found


def one_run(number: int, select: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dratelimit-faults-") as tmp:
        figures, junit = Path(tmp) / "figures.json", Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "faults",
            "tests/faults",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *select,
        ]
        started = time.monotonic()
        completed = subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, "DRATELIMIT_FAULTS_RESULTS": str(figures)},
            check=False,
        )
        seconds = time.monotonic() - started
        tests = outcomes(junit) if junit.exists() else {}
        return {
            "run": number,
            "exit_code": completed.returncode,
            "seconds": round(seconds, 1),
            "tests": tests,
            "figures": json.loads(figures.read_text()) if figures.exists() else {},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("-k", dest="keyword", help="pytest -k: some scenarios only")
    args = parser.parse_args()
    select = ["-k", args.keyword] if args.keyword else []
    load = load_average()
    runs = []
    for number in range(1, args.runs + 1):
        print(f"== run {number} of {args.runs}", flush=True)
        runs.append(one_run(number, select))
        print(f"   exit {runs[-1]['exit_code']} in {runs[-1]['seconds']} s", flush=True)
    report = {
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average_before": load,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    failed = [r["run"] for r in runs if r["exit_code"] != 0]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs passed; figures in {args.json}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
