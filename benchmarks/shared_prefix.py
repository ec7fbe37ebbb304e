"""Shared-prefix scoring vs whole rows: the same harness, model and reviews, one process.

* ``templates`` — ``evaluate_many`` of 10 templates that all start with ``{text_a}`` (LM-BFF's
  generated templates for Gemma and the manual one) against 10 separate ``evaluate`` passes over
  whole rows (``Harness.shared_prefix = False``): each review is run once instead of 10 times.
* ``demonstrations`` — a fixed block of 8 demonstrations (4 per class from the 16-shot train
  split, each rendered with the template and its label word) before every test review: the block
  is run once instead of once per review.

Every case prints both times, the ratio, whether every prediction is the same and the largest
class log-probability difference. The shared run is timed twice, before and after the whole-row
run, and the mean of the two is reported: load that drifts during the run hits both sides alike.
The load average is printed at the start and the end.

Run: ``python benchmarks/shared_prefix.py [--examples 200] [--demo-examples 100] [--cases templates demonstrations]``
(prefix it with ``OMP_NUM_THREADS=1`` on a machine whose cores are busy: there, several threads
per process make the short suffix passes' small kernels wait, and the ratio measures contention).
(``--gemma-config DIR`` as in ``harness_throughput.py``: Gemma 3 270M's architecture with random
weights, for a machine the real weights cannot reach).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprompt_kit import EvalResult, Harness, Template, Verbalizer, load_task  # noqa: E402

# LM-BFF's generated templates for Gemma 3 270M on MR (README, "LM-BFF" results) and the manual one.
TEMPLATES = [
    "{text_a} It was {mask}.", "{text_a} And it's {mask}.", "{text_a} It has a {mask}.", "{text_a} As {mask}.",
    "{text_a} And {mask}.", "{text_a} There is {mask}.", "{text_a} That's {mask}.", "{text_a} The movie is {mask}.",
    "{text_a} It's a {mask}.", "{text_a} It was a {mask}.",
]
WORDS = {"negative": "terrible", "positive": "great"}


def timed(fn: Callable[[], list[EvalResult]]) -> tuple[float, list[EvalResult]]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(name: str, h: Harness, shared: Callable[[], list[EvalResult]], whole: Callable[[], list[EvalResult]],
            n_tokens: tuple[int, int]) -> float:
    """Times the shared path twice, before and after one whole-row run, and takes their mean; prints one row."""
    h.shared_prefix = True
    t_shared, got = timed(shared)
    h.shared_prefix = False
    t_whole, ref = timed(whole)
    h.shared_prefix = True
    t_again, _ = timed(shared)
    t_shared = (t_shared + t_again) / 2
    same = all((a.predictions == b.predictions).all() for a, b in zip(got, ref))
    diff = max(float(np.abs(a.class_logprobs - b.class_logprobs).max()) for a, b in zip(got, ref))
    n = sum(r.n for r in got)
    print(f"| {name} | {n} | {n_tokens[0]:,} / {n_tokens[1]:,} | {t_whole:.1f} | {t_shared:.1f} | "
          f"**{t_whole / t_shared:.2f}×** | {'yes' if same else 'NO'} | {diff:.1e} |", flush=True)
    return t_whole / t_shared


def token_counts(h: Harness, split, templates: list[Template], verbalizer: Verbalizer) -> tuple[int, int]:
    """Tokens a whole-row pass runs, and the tokens left once every review's shared prefix runs once."""
    from autoprompt_kit.harness.prefix import group_by_prefix

    rows = []
    for t in templates:
        for e in split:
            enc = h.encoder.encode(t, e)
            rows.extend(h.encoder.rows(len(rows), enc, [h.encoder.word_ids(w, enc.space_before_mask)
                                                         for w in verbalizer.flat_words]))
    whole = sum(len(r.input_ids) for r in rows)
    groups, _ = group_by_prefix(rows, h.shared_prefix_min)
    return whole, whole - sum((len(g.rows) - 1) * g.length for g in groups)


def demonstration_template(task, k_per_class: int) -> str:
    """``k_per_class`` train reviews per class, each as ``"<review> It was <word>."``, then the test review."""
    words = [WORDS[name] for name in task.label_names]
    picked: list[str] = []
    for label in range(len(words)):
        texts = [e.text_a for e in task.train if e.label == label and "{" not in e.text_a and "}" not in e.text_a]
        picked.extend(f"{text} It was {words[label]}." for text in texts[:k_per_class])
    order = np.random.default_rng(0).permutation(len(picked))
    return " ".join(picked[i] for i in order) + " {text_a} It was {mask}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="MR test reviews for the template case")
    parser.add_argument("--demo-examples", type=int, default=100, help="MR test reviews for the demonstration case")
    parser.add_argument("--demos", type=int, default=8, help="demonstrations before every review (half per class)")
    parser.add_argument("--cases", nargs="+", default=["templates", "demonstrations"],
                        choices=["templates", "demonstrations"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--gemma-config", default=None,
                        help="folder with Gemma 3 270M's config.json + tokenizer: random weights, no download")
    args = parser.parse_args()
    if args.gemma_config:
        from harness_throughput import random_gemma  # noqa: E402  (benchmarks/, on the path of a script run)

        h, model = random_gemma(args.gemma_config, args.batch_size, args.device), "Gemma 3 270M architecture (random)"
    else:
        h, model = Harness(batch_size=args.batch_size, device=args.device, progress=False), "Gemma 3 270M"
    verbalizer = Verbalizer.from_words(WORDS)
    test = load_task("mr").test
    print(f"{model}, {h.device}, torch {torch.__version__} ({torch.get_num_threads()} threads), batch {h.batch_size}; "
          f"MR test; words terrible/great; load average at start {os.getloadavg()[0]:.2f}")
    print("| case | items | tokens: whole rows / shared | whole rows (s) | shared prefix (s) | speed-up | "
          "same predictions | max abs Δ class log-prob |")
    print("|---|---|---|---|---|---|---|---|")
    if "templates" in args.cases:
        split = test[: args.examples]
        templates = [Template(t) for t in TEMPLATES]
        h.evaluate_many(split[:4], templates, verbalizer)  # warm-up
        for t in templates:
            h.evaluate(split, t, verbalizer)  # tokenisation cache, as in a search that scores the split often
        compare(f"{len(templates)} templates starting with {{text_a}}: evaluate_many vs {len(templates)} evaluate",
                h, lambda: h.evaluate_many(split, templates, verbalizer),
                lambda: [h.evaluate(split, t, verbalizer) for t in templates],
                token_counts(h, split, templates, verbalizer))
    if "demonstrations" in args.cases:
        split = test[: args.demo_examples]
        template = Template(demonstration_template(load_task("mr", shots=16, seed=13), args.demos // 2))
        h.evaluate(split, template, verbalizer)  # warm-up and tokenisation cache
        compare(f"{args.demos} demonstrations before every review", h,
                lambda: [h.evaluate(split, template, verbalizer)], lambda: [h.evaluate(split, template, verbalizer)],
                token_counts(h, split, [template], verbalizer))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
