"""S3Delta on MR with the embedded Gemma 3 270M: search a delta structure under a budget, re-train, save, export.

    OMP_NUM_THREADS=2 python examples/s3delta_mr.py --budget 0.02
    python examples/s3delta_mr.py --budget 0.005 --test-examples 300 --out runs/s3delta-mr

The same search as a resumable study (several trials, best.json with the delta, dashboard):

    autoprompt-kit search s3delta --space search_spaces/s3delta_sentiment.yaml --trials 4
"""

from __future__ import annotations

import argparse
import time

import torch

from autoprompt_kit import Harness, load_task
from autoprompt_kit.delta import Delta
from autoprompt_kit.methods.s3delta import (
    S3DeltaConfig,
    describe_budget,
    s3delta_search,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.02, help="percent of the backbone's parameters")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--test-examples", type=int, default=300)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--search-epochs", type=int, default=6)
    parser.add_argument("--gate-lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="runs/s3delta-mr")
    args = parser.parse_args()

    task = load_task("mr", shots=args.shots, seed=args.seed)
    test = load_task("mr", max_examples=args.test_examples).test
    harness = Harness(batch_size=16, max_length=96, progress=False)
    config = S3DeltaConfig(budget_percent=args.budget, warmup_epochs=args.warmup_epochs,
                           search_epochs=args.search_epochs, epochs=args.epochs, gate_lr=[args.gate_lr])
    print(describe_budget(harness, config))

    start = time.perf_counter()
    found = s3delta_search(harness, task.train, task.dev, config.template, config.label_words, config, seed=args.seed)
    print(f"search: {found.seconds:.0f}s, {len(found.structure)} of {found.candidates} candidates switched on\n")
    print(found.table, "\n")

    torch.manual_seed(args.seed)  # re-train the found structure from scratch
    delta = Delta.from_structure(harness, found.structure).attach(harness)
    harness.train(task.train, config.template, config.label_words, delta.parameters(), epochs=config.epochs,
                  lr=config.lr, batch_size=config.batch_size, seed=args.seed)
    result = harness.evaluate(test, config.template, config.label_words)
    print(f"prompt + searched delta: test accuracy {result.accuracy:.4f} (n={result.n}), "
          f"{delta.num_parameters():,} trainable parameters, {time.perf_counter() - start:.0f}s in all")
    delta.save(args.out)
    delta.detach()
    print(f"saved {args.out}/delta.json + delta.safetensors  (show it: autoprompt-kit delta {args.out})")

    if {e["kind"] for e in delta.entries} == {"lora"}:  # PEFT can express LoRA-only structures
        delta.export_peft(f"{args.out}-peft", harness, base_model="gemma-3-270m")
        print(f"exported to {args.out}-peft (peft.PeftModel.from_pretrained loads it)")

if __name__ == "__main__":
    main()
