"""KPT zero-shot on MR (or tweets/amazon/nyt, or any task: fortunes) with the embedded Gemma 3 270M:
seed words vs the knowledgeable verbalizer, same template, on the held-out test split.

One ``Harness.mask_hidden`` pass over the support set (200 unlabelled train examples) and one over
the test split are cached (examples/_mask_cache.py); every verbalizer below is then scored from
those states by the output layer alone (single-token words: the cached path is checked against
``Harness.score`` first). No labels are used: the KPT settings are the defaults fixed before the
run (``--prior-cut``, ``--presence-rank``, ``--min-relevance``, ``--relevance-cut``); the variant
table is printed for transparency, not for picking.

    python examples/kpt_mr.py --task mr [--seeds terrible,great bad,good] [--test-examples 1000]
    python examples/kpt_mr.py --task fortunes --seeds names --sources wordnet \
        --template "{text_a} This text is about {mask}."      # 10 classes, the class names as seeds

Accuracy and macro-F1 are printed as ``accuracy / macro-F1``.
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
from autoprompt_kit.prompts.defaults import task_label_words  # noqa: E402


def accuracy(harness: Harness, verbalizer: Verbalizer, hidden: torch.Tensor, labels, prior=None) -> str:
    lp = single_token_logprobs(harness, hidden, verbalizer.flat_words)
    preds = verbalizer.class_logprobs(lp, prior=prior).argmax(1).numpy()
    acc, f1 = classification_metrics(labels, preds, verbalizer.num_classes)
    return f"{acc:.4f} / {f1:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mr")
    parser.add_argument("--seeds", nargs="+", default=["terrible,great", "bad,good"],
                        help="one seed word per class in label order, comma-separated, or 'names' (the class names "
                             "read as words); one set per run")
    parser.add_argument("--template", default="{text_a} It was {mask}.")
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
    template = args.template
    hs = cached_mask_hidden(harness, support, template, f"{args.task}-support200")
    ht = cached_mask_hidden(harness, test, template, f"{args.task}-test")
    labels = test.labels
    names = load_task(args.task, max_examples=1).label_names
    print(f"{args.task} test n={len(test)}, support n={len(support)} (unlabelled), Gemma 3 270M, `{template}`")
    for seed_set in args.seeds:
        if seed_set == "names":
            seeds = task_label_words(names)
        else:
            words = seed_set.split(",")
            if len(words) != len(names):
                raise SystemExit(f"--seeds {seed_set!r}: give one word per class {names}")
            seeds = {name: [w] for name, w in zip(names, words)}
        start = time.perf_counter()
        exp = expand(seeds, ExpansionSettings(sources=tuple(args.sources.split("+"))), harness)
        single = [w for w in exp.all_words() if len(harness.encoder.word_ids(w, True)) == 1]
        scores = support_scores_from_hidden(harness, hs, single)
        scores.too_long = {w: len(harness.encoder.word_ids(w, True)) for w in exp.all_words() if w not in single}
        diff = check_against_harness(harness, test, ht, template, single[:50])
        assert diff < 1e-3, f"cached scores differ from the harness by {diff}"
        manual = Verbalizer.from_words(seeds)
        cf_prior = harness.class_prior(template, manual)
        seed_prior = tuple(tuple(float(scores.word_prior[scores.index()[w]]) for w in ws) for ws in seeds.values())
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
        print(f"\nseeds {' / '.join(','.join(ws) for ws in seeds.values())}: expanded {[len(ws) for ws in exp.words]} words, {len(single)} single-token "
              f"scored; cached-path check max |Δ| = {diff:.1e}; {time.perf_counter() - start:.0f}s")
        print("| verbalizer | test accuracy / macro-F1 |\n|---|---|")
        for name, acc in rows:
            print(f"| {name} | {acc} |")
        print(f"\nprior_cut {args.prior_cut}\n| presence_rank | min_relevance | relevance_cut | calibration | words per class "
              "| test accuracy / macro-F1 |\n|---|---|---|---|---|---|")
        for pr, mr, rc, cal, sizes, acc in variants:
            print(f"| {pr or 'off'} | {mr if mr > -1 else 'off'} | {rc} | {cal} | {sizes} | {acc} |")
        for c, label in enumerate(default.verbalizer.labels):
            words = default.verbalizer.label_words[c]
            print(f"kept {label} ({len(words)}): {', '.join(words)}")
            gone = [r["word"] for r in default.removed if r["class"] == label and "tokens >" not in r["reason"]]
            print(f"removed {label} ({len(gone)}, longer words not counted): {', '.join(gone)}")


if __name__ == "__main__":
    main()
