"""Profile single trials of ``select`` and ``lmbff`` on a 10-class task with the embedded Gemma.

``python benchmarks/trial_profile.py --task fortunes --max-examples 60`` — the space each method
builds from the task (as ``autoprompt-kit search METHOD --task fortunes`` with no ``--space``), the
first ``--trials`` grid points in the backbone's order, timed; ``--profile`` prints cProfile's top
functions. LM-BFF's one-off preparation (label-word search, template generation and ranking) is
timed apart from its trials. ``--compare`` runs every method twice in one process: *before*
(fp32, no score cache: the previous defaults) and *after* (``--precision auto``, ``select``'s score
cache on), so the machine's load moves both alike.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import time
from typing import Any

import optuna

from autoprompt_kit import Harness
from autoprompt_kit.cli import _task_space
from autoprompt_kit.data import load_task
from autoprompt_kit.search import SearchContext, get_searcher

from _report import emit  # noqa: E402  (benchmarks/, on the path when a script runs)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def trials(method: str, harness: Harness, task, profile: bool, n: int = 1, cache: bool = True) -> dict[str, Any]:
    """Seconds of ``prepare`` and of the first ``n`` grid points' trials (cProfile top 18 with ``profile``)."""
    cls = get_searcher(method)
    searcher = cls(_task_space(method, cls, task))
    if hasattr(searcher, "score_cache"):
        searcher.score_cache = cache
    ctx = SearchContext(task=task, harness=harness, seed=13)
    study = optuna.create_study(direction="maximize")
    harness.clear_cache()
    start = time.perf_counter()
    searcher.prepare(ctx, study)
    prepared = time.perf_counter() - start
    grid = searcher.grid()
    if not getattr(searcher, "ordered_grid", False):
        random.Random(13).shuffle(grid)
    seconds, accuracy = [], []
    for point in grid[:n]:
        study.enqueue_trial(point)
        trial = study.ask()
        prof = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if prof:
            prof.enable()
        outcome = searcher.run_trial(trial, ctx)
        if prof:
            prof.disable()
        seconds.append(time.perf_counter() - start)
        accuracy.append(outcome.dev.accuracy)
        study.tell(trial, outcome.dev.accuracy)
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(18)
            print(out.getvalue()[-6000:])
        print(f"{method} [{harness.precision}{', cache' if cache else ''}]: trial {seconds[-1]:.1f}s, dev accuracy "
              f"{outcome.dev.accuracy:.3f} ({trial.params})", flush=True)
    print(f"{method}: prepare {prepared:.1f}s", flush=True)
    return {"prepare": prepared, "trials": seconds, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="fortunes")
    parser.add_argument("--max-examples", type=int, default=60)
    parser.add_argument("--methods", nargs="+", default=["select", "lmbff"])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--trials", type=int, default=1, help="grid points per method")
    parser.add_argument("--compare", action="store_true", help="before (fp32, no cache) and after (auto, cache)")
    parser.add_argument("--out", default=None, help="append the comparison table to this file")
    args = parser.parse_args()
    task = load_task(args.task, max_examples=args.max_examples)
    print(task.summary())
    runs = [("before", "fp32", False), ("after", "auto", True)] if args.compare else [("run", args.precision, True)]
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for label, precision, cache in runs:
        harness = Harness(precision=precision, progress=True)
        for method in args.methods:
            table[(method, label)] = {**trials(method, harness, task, args.profile, args.trials, cache),
                                      "precision": harness.precision}
        del harness
    if args.compare:
        lines = [f"{task.summary()}; {args.trials} trial(s) per method", "",
                 "| method | before: prepare (s) | before: trials (s) | after: prepare (s) | after: trials (s) | "
                 "speed-up (prepare + trials) |", "|---|---:|---:|---:|---:|---:|"]
        for method in args.methods:
            b, a = table[(method, "before")], table[(method, "after")]
            tb, ta = b["prepare"] + sum(b["trials"]), a["prepare"] + sum(a["trials"])
            lines.append(f"| {method} | {b['prepare']:.1f} | {' + '.join(f'{x:.1f}' for x in b['trials'])} | "
                         f"{a['prepare']:.1f} | {' + '.join(f'{x:.1f}' for x in a['trials'])} | **{tb / ta:.2f}x** |")
        lines.append(f"\nbefore: fp32, no score cache; after: `auto` -> {table[(args.methods[0], 'after')]['precision']}"
                     ", score cache on")
        text = "\n".join(lines)
        emit(text, args.out)


if __name__ == "__main__":
    main()
