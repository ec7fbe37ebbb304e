"""KPT zero-shot on MR (or tweets/amazon/nyt) with the embedded Gemma 3 270M: seed words vs the
knowledgeable verbalizer, same template, on the held-out test split.

One ``Harness.mask_hidden`` pass over the support set (200 unlabelled train examples) and one over
the test split are cached (examples/_mask_cache.py); every verbalizer below is then scored from
those states by the output layer alone (single-token words: the cached path is checked against
``Harness.score`` first). No labels are used: the KPT settings are the defaults fixed before the
run (``--prior-cut``, ``--relevance-cut``); the variant table is printed for transparency, not for
picking.

    python examples/kpt_mr.py --task mr [--seeds terrible,great bad,good] [--test-examples 1000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _mask_cache import cached_mask_hidden, check_against_harness  # noqa: E402

from autoprompt_kit import Harness, Verbalizer, load_task  # noqa: E402
from autoprompt_kit.harness import classification_metrics  # noqa: E402
from autoprompt_kit.methods.kpt import (ExpansionSettings, RefineSettings, expand, refine,  # noqa: E402
                                        single_token_logprobs, support_scores_from_hidden)

TEMPLATE = "{text_a} It was {mask}."


def accuracy(harness: Harness, verbalizer: Verbalizer, hidden: torch.Tensor, labels, prior=None) -> float:
    lp = single_token_logprobs(harness, hidden, verbalizer.flat_words)
    preds = verbalizer.class_logprobs(lp, prior=prior).argmax(1).numpy()
    return classification_metrics(labels, preds, verbalizer.num_classes)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mr")
    parser.add_argument("--seeds", nargs="+", default=["terrible,great", "bad,good"],
                        help="negative,positive seed words (one set per run)")
    parser.add_argument("--sources", default="wordnet+vader")
    parser.add_argument("--prior-cut", type=float, default=0.5)
    parser.add_argument("--relevance-cut", type=float, default=0.5)
    parser.add_argument("--test-examples", type=int, default=None, help="cap the test split (seeded subsample)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    harness = Harness(progress=False)
    support = load_task(args.task, max_examples=200).train
    test = load_task(args.task, max_examples=args.test_examples).test
    hs = cached_mask_hidden(harness, support, TEMPLATE, f"{args.task}-support200")
    ht = cached_mask_hidden(harness, test, TEMPLATE, f"{args.task}-test")
    labels = test.labels
    print(f"{args.task} test n={len(test)}, support n={len(support)} (unlabelled), Gemma 3 270M, `{TEMPLATE}`")
    for seed_pair in args.seeds:
        neg, pos = seed_pair.split(",")
        seeds = {"negative": [neg], "positive": [pos]}
        start = time.perf_counter()
        exp = expand(seeds, ExpansionSettings(sources=tuple(args.sources.split("+"))), harness)
        single = [w for w in exp.all_words() if len(harness.encoder.word_ids(w, True)) == 1]
        scores = support_scores_from_hidden(harness, hs, single)
        scores.too_long = {w: len(harness.encoder.word_ids(w, True)) for w in exp.all_words() if w not in single}
        diff = check_against_harness(harness, test, ht, TEMPLATE, single[:50])
        assert diff < 1e-3, f"cached scores differ from the harness by {diff}"
        manual = Verbalizer.from_words(seeds)
        cf_prior = harness.class_prior(TEMPLATE, manual)
        seed_prior = tuple((float(scores.word_prior[scores.index()[w]]),) for w in (neg, pos))
        rows = [("seed words, no calibration", accuracy(harness, manual, ht, labels)),
                ("seed words, content-free calibration", accuracy(harness, manual, ht, labels, prior=cf_prior)),
                ("seed words, contextual calibration (support prior)",
                 accuracy(harness, manual.replace(calibration="contextual", word_prior=[list(p) for p in seed_prior]),
                          ht, labels))]
        default = None
        variants = []
        for prior_cut in (0.0, args.prior_cut):
            for relevance_cut in (0.0, args.relevance_cut):
                for calibration in ("contextual", "none"):
                    res = refine(exp, scores, RefineSettings(prior_cut=prior_cut, relevance_cut=relevance_cut,
                                                             calibration=calibration))
                    acc = accuracy(harness, res.verbalizer, ht, labels)
                    sizes = [len(ws) for ws in res.verbalizer.label_words]
                    variants.append((prior_cut, relevance_cut, calibration, sizes, acc))
                    if (prior_cut, relevance_cut, calibration) == (args.prior_cut, args.relevance_cut, "contextual"):
                        default = res
        assert default is not None
        chosen = [v[4] for v in variants if v[:3] == (args.prior_cut, args.relevance_cut, "contextual")][0]
        rows.append((f"KPT default ({args.sources}, prior_cut {args.prior_cut}, relevance_cut {args.relevance_cut}, "
                     "contextual)", chosen))
        print(f"\nseeds {neg}/{pos}: expanded {[len(ws) for ws in exp.words]} words, {len(single)} single-token "
              f"scored; cached-path check max |Δ| = {diff:.1e}; {time.perf_counter() - start:.0f}s")
        print("| verbalizer | test accuracy |\n|---|---|")
        for name, acc in rows:
            print(f"| {name} | {acc:.4f} |")
        print("\n| prior_cut | relevance_cut | calibration | words per class | test accuracy |\n|---|---|---|---|---|")
        for pc, rc, cal, sizes, acc in variants:
            print(f"| {pc} | {rc} | {cal} | {sizes} | {acc:.4f} |")
        for c, label in enumerate(default.verbalizer.labels):
            words = default.verbalizer.label_words[c]
            print(f"kept {label} ({len(words)}): {', '.join(words[:25])}{' …' if len(words) > 25 else ''}")
        print(f"removed: {len(default.removed)} words, e.g. " + "; ".join(
            f"{r['word']} ({r['class']}: {r['reason']})" for r in default.removed[:6]))


if __name__ == "__main__":
    main()
