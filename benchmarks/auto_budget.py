"""``auto`` under a time budget: its cross-validated estimate next to the test score it then gets.

For every task × seed × budget, one ``auto`` search (16 shots per class, the space read off the
task, 4-fold cross-validation over train + dev) with the given budget in minutes, then the found
prompt on the test split (built-in tasks: the results table's seeded subsample of ``--test-examples``;
a folder or file of your own: its whole test split). Prints one line per cell and writes a
Markdown table (and JSON lines, so a rerun skips finished cells).

    # the anytime curve on two tasks
    OMP_NUM_THREADS=1 python benchmarks/auto_budget.py --tasks fortunes mr --budgets 2 5 10 20
    # tasks of your own, 10 minutes per cell, three seeds
    OMP_NUM_THREADS=1 python benchmarks/auto_budget.py --tasks benchmarks/tasks/support_intent \\
        benchmarks/tasks/qa_match --budgets 10 --seeds 13 21 42 --out benchmarks/auto_own_tasks
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
SHOTS = 16


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def test_split(task_name: str, examples: int) -> Any:
    from autoprompt_kit import list_builtin_tasks, load_task

    if task_name in list_builtin_tasks() and examples:
        return load_task(task_name, max_examples=examples).test  # the results table's subsample
    return load_task(task_name).test


def run_cell(harness: Any, task_name: str, seed: int, minutes: float, storage: str, test_examples: int) -> dict[str, Any]:
    from autoprompt_kit import find_prompt, load_task

    task = load_task(task_name, shots=SHOTS, seed=seed)
    name = f"auto-{Path(task_name).name}-s{seed}-b{minutes:g}m"
    start = time.perf_counter()
    result = find_prompt("auto", task, harness=harness, storage=storage, study=name, seed=seed,
                         budget=minutes * 60, test_split=None, progress=True)
    search = time.perf_counter() - start
    test = result.prompt.evaluate(test_split(task_name, test_examples), harness)
    cv = result.document["metrics"]["cv"]
    return {"task": Path(task_name).name, "seed": seed, "budget_min": minutes, "cv_accuracy": cv["accuracy"],
            "cv_macro_f1": cv["macro_f1"], "cv_se": cv["se"], "cv_metric": cv.get("metric"), "cv_n": cv["n"],
            "test_accuracy": test.accuracy, "test_macro_f1": test.macro_f1, "test_n": test.n,
            "search_seconds": round(search, 1), "prompt": result.prompt.describe(),
            "stages": {k: v["value"] for k, v in result.document.get("stages", {}).items()}}


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"Machine: {cpu_name()}, one thread per process. 16 shots per class; test n as given.", "",
             "| task | budget | seeds | CV accuracy (± SE) | test accuracy | test − CV | search wall | best prompt (first seed) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["budget_min"]), []).append(r)
    for (task, budget), rs in sorted(groups.items()):
        cv = statistics.mean(r["cv_accuracy"] for r in rs)
        se = statistics.mean(r["cv_se"] for r in rs)
        test = [r["test_accuracy"] for r in rs]
        sd = f" ± {statistics.stdev(test):.4f}" if len(test) > 1 else ""
        wall = statistics.mean(r["search_seconds"] for r in rs)
        lines.append(f"| {task} | {budget:g} min | {len(rs)} | {cv:.4f} (± {se:.4f}) | {statistics.mean(test):.4f}{sd} "
                     f"| {statistics.mean(test) - cv:+.4f} | {wall / 60:.1f} min | {rs[0]['prompt'][:90]} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["fortunes", "mr"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[2, 5, 10, 20], help="minutes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[13])
    parser.add_argument("--test-examples", type=int, default=200, help="built-in tasks: test subsample (0 = all)")
    parser.add_argument("--storage", default="sqlite:///runs/auto_budget.db")
    parser.add_argument("--out", default="benchmarks/auto_budget", help="writes OUT.md and OUT.jsonl")
    parser.add_argument("--report", action="store_true", help="only write the table from OUT.jsonl")
    args = parser.parse_args(argv)
    out = Path(args.out)
    log = out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    if not args.report:
        from autoprompt_kit import Harness

        harness = Harness(progress=False)
        Path("runs").mkdir(exist_ok=True)
        for task in args.tasks:
            for seed in args.seeds:
                for minutes in args.budgets:
                    if any(r["task"] == Path(task).name and r["seed"] == seed and r["budget_min"] == minutes
                           for r in rows):
                        continue
                    row = run_cell(harness, task, seed, minutes, args.storage, args.test_examples)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    with log.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
