"""``auto`` from Python on a task of your own: the hand-written support-intent CSVs
(benchmarks/tasks/support_intent), the embedded Gemma 3 270M, a few minutes of budget.

It composes the words, templates, a ProtoVerb head, an ensemble and demonstrations, picks by
4-fold cross-validation over train + dev, refits the winner on every labelled example and prints
the estimate next to the held-out test score; then the found prompt labels new messages and is
saved as a folder that ``Prompt.load`` (or ``autoprompt-kit predict``) reads back.

    python examples/auto_intent.py [--budget 5m] [--task benchmarks/tasks/support_intent]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprompt_kit import Harness, Prompt, find_prompt, load_task

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=str(ROOT / "benchmarks" / "tasks" / "support_intent"))
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", default="runs/auto_intent.json")
    args = parser.parse_args()

    task = load_task(args.task, shots=16, seed=args.seed)
    print(task.summary())
    harness = Harness(progress=False)  # the embedded Gemma 3 270M, loaded once for the search and the predictions
    result = find_prompt("auto", task, harness=harness, budget=args.budget, seed=args.seed, out=args.out, progress=True,
                         storage="sqlite:///runs/examples.db", study=f"auto-example-{task.name}-s{args.seed}")
    cv, test = result.document["metrics"]["cv"], result.document["metrics"]["test"]
    print(f"\nfound: {result.prompt.describe()}")
    print(f"estimate (cross-validation, n={cv['n']}): accuracy {cv['accuracy']:.3f} ± {cv['se']:.3f}")
    print(f"held-out test (n={test['n']}): accuracy {test['accuracy']:.3f}")
    for stage, best in result.document.get("stages", {}).items():
        print(f"  best of {stage:15s} {best['value']:.3f}  {best['candidate']}")

    messages = ["I was billed twice for the same order", "The app freezes on the login screen",
                "Where is my package? It was due on Monday", "I can't reset my password, the link expired"]
    labels = result.prompt.predict(messages, harness).labels
    for text, label in zip(messages, labels):
        print(f"  {label:16s} {text}")
    again = Prompt.load(Path(args.out).with_suffix(".prompt"))  # what `autoprompt-kit predict` loads
    assert list(again.predict(messages, harness).labels) == list(labels)


if __name__ == "__main__":
    main()
