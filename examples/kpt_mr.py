"""KPT zero-shot on MR (or tweets/amazon/nyt) with the embedded Gemma 3 270M: seed words vs the
knowledgeable verbalizer, same template, on the held-out test split.

One ``Harness.mask_hidden`` pass over the support set (200 unlabelled train examples) and one over
the test split are cached (examples/_mask_cache.py); every verbalizer below is then scored from
those states by the output layer alone (single-token words: the cached path is checked against
``Harness.score`` first). No labels are used: the KPT settings are the defaults fixed before the
run (``--prior-cut``, ``--presence-rank``, ``--min-relevance``, ``--relevance-cut``); the variant
table is printed for transparency, not for picking.

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
    parser.add_argument("--presence-rank", type=int, default=1000)
    parser.add_argument("--min-relevance", type=float, default=0.3)
    parser.add_argument("--relevance-cut", type=float, default=0.0)
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
        chosen = dict(prior_cut=args.prior_cut, presence_rank=args.presence_rank, min_relevance=args.min_relevance,
                      relevance_cut=args.relevance_cut)
        default = refine(exp, scores, RefineSettings(**chosen))
        rows.append((f"KPT default ({args.sources}, {', '.join(f'{k} {v}' for k, v in chosen.items())}, contextual)",
                     accuracy(harness, default.verbalizer, ht, labels)))
        variants = []
        for presence_rank in (0, args.presence_rank):
            for min_relevance in (-1.0, args.min_relevance):
                for relevance_cut in (0.0, 0.5):
                    for calibration in ("contextual", "none"):
                        settings = RefineSettings(prior_cut=args.prior_cut, presence_rank=presence_rank,
                                                  min_relevance=min_relevance, relevance_cut=relevance_cut,
                                                  calibration=calibration)
                        res = refine(exp, scores, settings)
                        sizes = [len(ws) for ws in res.verbalizer.label_words]
                        variants.append((presence_rank, min_relevance, relevance_cut, calibration, sizes,
                                         accuracy(harness, res.verbalizer, ht, labels)))
        print(f"\nseeds {neg}/{pos}: expanded {[len(ws) for ws in exp.words]} words, {len(single)} single-token "
              f"scored; cached-path check max |Δ| = {diff:.1e}; {time.perf_counter() - start:.0f}s")
        print("| verbalizer | test accuracy |\n|---|---|")
        for name, acc in rows:
            print(f"| {name} | {acc:.4f} |")
        print(f"\nprior_cut {args.prior_cut}\n| presence_rank | min_relevance | relevance_cut | calibration | words per class "
              "| test accuracy |\n|---|---|---|---|---|---|")
        for pr, mr, rc, cal, sizes, acc in variants:
            print(f"| {pr or 'off'} | {mr if mr > -1 else 'off'} | {rc} | {cal} | {sizes} | {acc:.4f} |")
        for c, label in enumerate(default.verbalizer.labels):
            words = default.verbalizer.label_words[c]
            print(f"kept {label} ({len(words)}): {', '.join(words)}")
            gone = [r["word"] for r in default.removed if r["class"] == label and "tokens >" not in r["reason"]]
            print(f"removed {label} ({len(gone)}, longer words not counted): {', '.join(gone)}")


if __name__ == "__main__":
    main()
