"""ProtoVerb at 16 shots on MR (or tweets/amazon/nyt) with the embedded Gemma 3 270M: the manual
verbalizer vs prototypes, same template, seeds 13/21/42, on the held-out test split.

The model is frozen, so the mask hidden states of each 16-shot train split and of the test split
are computed once and cached (examples/_mask_cache.py); the manual verbalizer's scores come from
the same states (checked against ``Harness.score`` first). Fixed settings are reported per K and
inference mode; "dev-selected" picks, per seed, the setting of search_spaces/protoverb_sentiment.yaml
(16 combinations) with the best 16-shot dev accuracy, as the ``protoverb`` search does. Nothing is
tuned on test. Also prints each prototype's words and an unsupervised 2-way clustering of the test
states.

    python examples/protoverb_mr.py --task mr [--seeds 13 21 42] [--prototypes 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _mask_cache import cached_mask_hidden, check_against_harness  # noqa: E402

from autoprompt_kit import Harness, Verbalizer, load_task  # noqa: E402
from autoprompt_kit.harness import classification_metrics  # noqa: E402
from autoprompt_kit.methods.kpt import single_token_logprobs  # noqa: E402
from autoprompt_kit.methods.protoverb import (ProtoSettings, cluster_mask_embeddings, prototype_words,  # noqa: E402
                                              train_prototypes)

TEMPLATE = "{text_a} It was {mask}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mr")
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42])
    parser.add_argument("--words", default="terrible,great", help="the manual verbalizer: negative,positive")
    parser.add_argument("--prototypes", type=int, nargs="+", default=[1, 2], help="prototypes per class to run")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    harness = Harness(progress=False)
    neg, pos = args.words.split(",")
    verbalizer = Verbalizer.from_words({"negative": [neg], "positive": [pos]})
    test = load_task(args.task).test
    ht = cached_mask_hidden(harness, test, TEMPLATE, f"{args.task}-test")
    diff = check_against_harness(harness, test, ht, TEMPLATE, verbalizer.flat_words)
    assert diff < 1e-3, f"cached scores differ from the harness by {diff}"
    manual_test = verbalizer.class_logprobs(single_token_logprobs(harness, ht, verbalizer.flat_words))
    cf_prior = harness.class_prior(TEMPLATE, verbalizer)

    def acc(class_lp: torch.Tensor) -> float:
        return classification_metrics(test.labels, class_lp.argmax(1).numpy(), 2)[0]

    columns = ["manual", "manual + content-free cal.", "manual z-scored on train"]
    columns += [f"ProtoVerb K={k} {mode}" for k in args.prototypes for mode in ("proto", "combined")]
    columns += ["ProtoVerb dev-selected"]
    table: dict[str, list[float]] = {c: [] for c in columns}
    shown = False
    for seed in args.seeds:
        task = load_task(args.task, shots=16, seed=seed)
        hs = cached_mask_hidden(harness, task.train, TEMPLATE, f"{args.task}-train-s{seed}")
        manual_train = verbalizer.class_logprobs(single_token_logprobs(harness, hs, verbalizer.flat_words))
        table["manual"].append(acc(manual_test))
        table["manual + content-free cal."].append(acc(verbalizer.class_logprobs(
            single_token_logprobs(harness, ht, verbalizer.flat_words), prior=cf_prior)))
        z = (manual_test - manual_train.mean(0)) / manual_train.std(0)
        table["manual z-scored on train"].append(acc(z))
        for k in args.prototypes:
            for mode in ("proto", "combined"):
                settings = ProtoSettings(prototypes_per_class=k, inference=mode, steps=args.steps)
                head, history = train_prototypes(hs, task.train.labels, 2, settings, manual=manual_train, seed=seed)
                with torch.no_grad():
                    table[f"ProtoVerb K={k} {mode}"].append(acc(head.class_logprobs(ht, manual_test)))
                if not shown and k == max(args.prototypes) and mode == "combined":
                    shown = True
                    print(f"seed {seed}, K={k}: loss {history[0]['loss']:.3f} → {history[-1]['loss']:.3f}")
                    for entry in prototype_words(harness, head, hs, task.train.labels, k=8):
                        print(f"  prototype {entry['prototype']} ({task.label_names[entry['class']]}, "
                              f"{entry['members']} members): nearest {', '.join(entry['nearest_words'])} | "
                              f"distinctive {', '.join(entry['distinctive_words'])}")
        hd = cached_mask_hidden(harness, task.dev, TEMPLATE, f"{args.task}-dev-s{seed}")
        manual_dev = verbalizer.class_logprobs(single_token_logprobs(harness, hd, verbalizer.flat_words))
        best = None
        for dim, k, inst, mode in itertools.product([64, 128], [1, 2], [1.0, 0.0], ["combined", "proto"]):
            settings = ProtoSettings(proj_dim=dim, prototypes_per_class=k, instance_weight=inst, inference=mode,
                                     steps=args.steps)
            head, _ = train_prototypes(hs, task.train.labels, 2, settings, manual=manual_train, seed=seed)
            with torch.no_grad():
                dev_acc = classification_metrics(task.dev.labels, head.class_logprobs(hd, manual_dev).argmax(1).numpy(), 2)[0]
                if best is None or dev_acc > best[0]:
                    best = (dev_acc, (dim, k, inst, mode), acc(head.class_logprobs(ht, manual_test)))
        assert best is not None
        table["ProtoVerb dev-selected"].append(best[2])
        print(f"seed {seed}: dev-selected (proj_dim, K, instance_weight, inference) = {best[1]}, dev {best[0]:.4f}")
        print(f"seed {seed}: " + "  ".join(f"{c} {table[c][-1]:.4f}" for c in columns), flush=True)

    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    print(f"\n{args.task} test n={len(test)}, Gemma 3 270M, `{TEMPLATE}`, words {neg}/{pos}, 16 shots per class, "
          f"seeds {args.seeds}; ProtoVerb: proj 64, τ 0.1, {args.steps} steps, lr 0.01 (cached-path check |Δ| = {diff:.1e})")
    print("| verbalizer | " + " | ".join(str(s) for s in args.seeds) + " | mean ± sd |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for c in columns:
        xs = table[c]
        print(f"| {c} | " + " | ".join(f"{x:.4f}" for x in xs) + f" | {statistics.mean(xs):.4f} ± {sd(xs):.4f} |")
    clusters = cluster_mask_embeddings(harness, test, TEMPLATE, 2, hidden=ht, top_words=8)
    print("\nunsupervised: 2 clusters of the test mask states (labels only counted)")
    for c, (size, words) in enumerate(zip(clusters.sizes, clusters.top_words)):
        counts = clusters.label_counts[c] if clusters.label_counts else []
        print(f"  cluster {c}: {size} examples (negative/positive {counts}): {', '.join(words)}")


if __name__ == "__main__":
    main()
