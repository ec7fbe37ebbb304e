"""Template / verbalizer selection on MR with the embedded Gemma 3 270M, through the Python API.

    python examples/select_mr.py [--trials 20]

Same as: autoprompt-kit search select --task mr --space search_spaces/select_sentiment.yaml --out best.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoprompt_kit import Harness, load_task
from autoprompt_kit.search import SearchContext, SearchJob, finish_search, get_searcher, run_search

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
                    task_info=task.info(shots=16, seed=args.seed),
                    model_info={"name": "gemma-3-270m", "kind": harness.kind})
    ctx = SearchContext(task, harness, args.seed)
    study = run_search(job, ctx)
    # best trial -> prompt -> test pass -> best.json + best.prompt/, as the CLI does
    result = finish_search(study, job, ctx, test_split="test", out=args.out, seconds=time.perf_counter() - start)
    prompt = result.prompt
    print(f"best: {prompt.describe()}\ndev {result.document['metrics']['dev']['accuracy']:.4f}  "
          f"test {result.test.accuracy:.4f}  -> {args.out}")
    print(prompt.predict(["A gripping, funny and moving film.", "Two hours I will never get back."]).labels)


if __name__ == "__main__":
    main()
