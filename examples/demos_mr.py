"""In-context demonstrations on MR with the embedded Gemma 3 270M, through the Python API.

    python examples/demos_mr.py [--trials 12] [--prompt best.json] [--test-examples 300]

Same as: autoprompt-kit search demos --task mr --space search_spaces/demos_sentiment.yaml --out best.json
(``--prompt`` adds the demonstrations to a prompt another search found, e.g. LM-BFF's best.json).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoprompt_kit import Harness, Prompt, load_task
from autoprompt_kit.search import SearchContext, SearchJob, finish_search, get_searcher, run_search

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "demos_sentiment.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--prompt", default=None, help="a saved prompt (best.json) to add demonstrations to")
    parser.add_argument("--test-examples", type=int, default=None, help="score a seeded test subsample of this size")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///runs/autoprompt.db)")
    parser.add_argument("--out", default="best.json")
    args = parser.parse_args()
    start = time.perf_counter()
    task = load_task("mr", shots=16, seed=args.seed, max_examples=args.test_examples)  # train/dev stay 16-shot
    harness = Harness(progress=False)
    searcher_cls = get_searcher("demos")
    config = searcher_cls.config_class.from_yaml(SPACE)
    if args.prompt:
        config = searcher_cls.config_class.from_dict({**config.to_dict(), "prompt": args.prompt})
    job = SearchJob(searcher_cls(config), f"demos-mr-example-s{args.seed}" + ("-on-prompt" if args.prompt else ""),
                    args.storage, n_trials=args.trials, seed=args.seed,
                    task_info=task.info(shots=16, seed=args.seed, max_examples=args.test_examples),
                    model_info={"name": "gemma-3-270m", "kind": harness.kind})
    ctx = SearchContext(task, harness, args.seed)
    study = run_search(job, ctx)
    # best trial -> prompt (demonstrations included) -> test pass -> best.json + best.prompt/, as the CLI does
    result = finish_search(study, job, ctx, test_split="test", out=args.out, seconds=time.perf_counter() - start)
    print(f"best: {result.prompt.describe()}\ndev {result.document['metrics']['dev']['accuracy']:.4f}  "
          f"test {result.test.accuracy:.4f} (n={result.test.n})  -> {args.out}")
    # The saved prompt gives new reviews their demonstrations exactly as in the search.
    reloaded = Prompt.load(args.out, harness)
    print(reloaded.predict(["A gripping, funny and moving film.", "Two hours I will never get back."]).labels)


if __name__ == "__main__":
    main()
