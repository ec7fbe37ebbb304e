"""Template / verbalizer selection on MR with the embedded Gemma 3 270M, through the Python API.

    python examples/select_mr.py [--trials 20]

Same as: autoprompt-kit search select --task mr --space search_spaces/select_sentiment.yaml --out best.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoprompt_kit import Harness, load_task
from autoprompt_kit.search import (SearchContext, SearchJob, best_candidate, build_best_json, get_searcher,
                                   run_search, write_best_json)

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "select_sentiment.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", default="best.json")
    args = parser.parse_args()
    start = time.perf_counter()
    task = load_task("mr", shots=16, seed=args.seed)
    harness = Harness(progress=False)
    searcher_cls = get_searcher("select")
    searcher = searcher_cls(searcher_cls.config_class.from_yaml(SPACE))
    job = SearchJob(searcher, f"select-mr-example-s{args.seed}", None, n_trials=args.trials, seed=args.seed,
                    task_info={"name": "mr", "label_names": task.label_names, "shots": 16, "seed": args.seed,
                               "splits": {k: len(v) for k, v in task.splits.items()}},
                    model_info={"name": "gemma-3-270m", "kind": harness.kind})
    study = run_search(job, SearchContext(task, harness, args.seed))
    _, best = best_candidate(study)
    test = best.evaluate(harness, task.test, task.label_names)
    doc = build_best_json(study, job, test, time.perf_counter() - start, "test")
    write_best_json(args.out, doc)
    print(f"best: {best.describe()}\ndev {doc['metrics']['dev']['accuracy']:.4f}  test {test.accuracy:.4f}  -> {args.out}")


if __name__ == "__main__":
    main()
