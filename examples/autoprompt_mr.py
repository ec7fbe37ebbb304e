"""AutoPrompt on MR with the embedded Gemma 3 270M: manual template vs found trigger prompt.

For each seed: 16-shot train/dev (LM-BFF protocol), one AutoPrompt trial (a resumable Optuna study
under runs/), then the manual template and the found trigger template — same label words
(terrible / great), no calibration — are scored on the held-out test split.

    python examples/autoprompt_mr.py [--seeds 13 21 42] [--iterations 15] [--test-examples 1000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from autoprompt_kit import Harness, Template, Verbalizer, load_task
from autoprompt_kit.methods import AutoPromptConfig
from autoprompt_kit.search import SearchContext, SearchJob, finish_search, get_searcher, run_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42])
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--triggers", type=int, default=3)
    parser.add_argument("--test-examples", type=int, default=None, help="cap the test split (seeded subsample)")
    parser.add_argument("--loss", default="likelihood", choices=["likelihood", "cross_entropy"])
    parser.add_argument("--storage", default="sqlite:///runs/examples.db")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("autoprompt_kit.methods.autoprompt").setLevel(logging.INFO)  # one line per iteration

    harness = Harness(progress=False)
    words = {"negative": ["terrible"], "positive": ["great"]}
    manual = Template("{text_a} It was {mask}.")
    verbalizer = Verbalizer.from_words(words)
    config = AutoPromptConfig(template="{text_a} {trigger*3} {mask}.", label_words=words,
                              num_triggers=[args.triggers], num_candidates=[args.candidates], init_token=["the"],
                              iterations=args.iterations, batch_size=16, loss=[args.loss])
    rows = []
    manual_cache: dict[str, float] = {}
    for seed in args.seeds:
        start = time.perf_counter()
        task = load_task("mr", shots=16, seed=seed)
        test = task.test if args.test_examples is None else load_task("mr", max_examples=args.test_examples).test
        job = SearchJob(get_searcher("autoprompt")(config), f"autoprompt-mr-example-s{seed}-it{args.iterations}-{args.loss}",
                        args.storage, n_trials=1, seed=seed, progress=False,
                        task_info=task.info(shots=16, seed=seed), model_info={"name": "gemma-3-270m"})
        ctx = SearchContext(task, harness, seed)
        result = finish_search(run_search(job, ctx), job, ctx, test_split=None)  # best trial -> found prompt
        trial, found = result.study.best_trial, result.prompt
        key = test.fingerprint
        if key not in manual_cache:
            manual_cache[key] = harness.evaluate(test, manual, verbalizer).accuracy
        found_acc = found.evaluate(test, harness).accuracy
        rows.append((seed, manual_cache[key], found_acc, found.template.display(), trial.value,
                     time.perf_counter() - start))
        print(f"seed {seed}: manual {manual_cache[key]:.4f}  found {found_acc:.4f}  dev {trial.value:.4f}  "
              f"{found.template.display()}  ({rows[-1][-1]:.0f}s)", flush=True)

    print(f"\nMR test (n={len(test)}), Gemma 3 270M, words terrible/great, no calibration, loss {args.loss}, "
          f"{args.iterations} iterations, k={args.candidates}, {args.triggers} triggers")
    print("| seed | manual `{text_a} It was {mask}.` | AutoPrompt | found template | dev (16-shot) |")
    print("|---|---|---|---|---|")
    for seed, m, f, t, dev, _ in rows:
        print(f"| {seed} | {m:.4f} | {f:.4f} | `{t}` | {dev:.4f} |")
    man = [r[1] for r in rows]
    fnd = [r[2] for r in rows]
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    print(f"| mean ± sd | {statistics.mean(man):.4f} ± {sd(man):.4f} | {statistics.mean(fnd):.4f} ± {sd(fnd):.4f} | | |")


if __name__ == "__main__":
    main()
