"""A ``select`` study of N trials with the score cache off and on, in one run.

``python benchmarks/score_cache_bench.py --trials 20 --max-examples 48`` — the space
``search_spaces/select_sentiment.yaml`` (6 template choices × 4 word sets × 2 calibrations) on MR
dev, the same N grid points (shuffled with a fixed seed, as the backbone runs a grid) scored by
``TemplateSelection.run_trial`` on one harness, first with ``score_cache = False`` then ``True``
(the tokenisation cache cleared in between). Prints both times, the ratio, and whether every
trial's dev accuracy and predictions are the same.
"""

from __future__ import annotations

import argparse
import random
import time

import optuna

from autoprompt_kit import Harness, load_task
from autoprompt_kit.methods.select import SelectConfig, TemplateSelection
from autoprompt_kit.search import SearchContext

from _report import emit  # noqa: E402  (benchmarks/, on the path when a script runs)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study(harness: Harness, task, config: SelectConfig, points: list, cache: bool) -> tuple[float, list]:
    """Seconds for the trials, and each trial's (params, dev accuracy, predictions)."""
    searcher = TemplateSelection(config)
    searcher.score_cache = cache
    ctx = SearchContext(task=task, harness=harness, seed=13)
    s = optuna.create_study(direction="maximize")
    for p in points:
        s.enqueue_trial(p)
    harness.clear_cache()
    out = []
    start = time.perf_counter()
    for _ in points:
        trial = s.ask()
        outcome = searcher.run_trial(trial, ctx)
        s.tell(trial, outcome.dev.accuracy)
        out.append((trial.params, outcome.dev.accuracy, outcome.dev.predictions.tolist()))
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-examples", type=int, default=48)
    parser.add_argument("--space", default="search_spaces/select_sentiment.yaml")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", default=None, help="also append the result lines to this file")
    args = parser.parse_args()
    task = load_task("mr", max_examples=args.max_examples)
    config = SelectConfig.from_yaml(args.space)
    points = config.grid()
    random.Random(13).shuffle(points)
    points = points[: args.trials]
    harness = Harness(precision=args.precision, progress=False)
    off, a = study(harness, task, config, points, cache=False)
    on, b = study(harness, task, config, points, cache=True)
    same = a == b
    differ = sum(x != y for (_, _, pa), (_, _, pb) in zip(a, b) for x, y in zip(pa, pb))
    total = sum(len(p) for _, _, p in a)
    # The same dev predictions scored again with another batch size: how much a fresh pass moves by
    # itself in this precision (bf16 rounding depends on the batch shapes the kernels see).
    harness.clear_cache()
    first = harness.evaluate(task.dev, config.templates[0], config.label_words[0])
    harness.batch_size, size = 7, harness.batch_size
    harness.clear_cache()
    other = harness.evaluate(task.dev, config.templates[0], config.label_words[0])
    harness.batch_size = size
    self_differ = int((first.predictions != other.predictions).sum())
    text = (f"select study, {len(points)} trials, MR dev n={len(task.dev)}, precision {harness.precision}: "
            f"cache off {off:.1f}s, on {on:.1f}s -> **{off / on:.2f}x**; every trial's dev accuracy and "
            f"predictions the same: {'yes' if same else 'NO'} ({differ} of {total} trial predictions differ; "
            f"a fresh pass at batch 7 instead of {size}: {self_differ} of {len(first.predictions)} differ) "
            f"(cache: {harness.score_cache_stats})")
    emit(text, args.out)


if __name__ == "__main__":
    main()
