"""Training-step speed: prompt-based LoRA fine-tuning with ``Harness.train`` vs PEFT + a plain HF loop.

Run (from the repository root, with the project's virtual environment)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_peft.py [--models small] [--batch-size 8] \
        [--steps 5] [--warmup 1] [--repeats 2]

Same process, same model weights (two copies of one seed-fixed model), same MR training reviews in the
same shuffled order, same batch, template ``{text_a} It was {mask}.`` (a causal LM reads the next
token after ``... It was``), words terrible/great, LoRA ``r=8, alpha=8`` on ``q_proj`` and ``v_proj``,
no dropout, AdamW, cross-entropy over the two label words:

* ``ours`` — ``Harness.train`` with ``Delta.from_specs(h, [DeltaSpec("lora", ["q_proj", "v_proj"], r=8)])``;
  it projects the mask's hidden state onto the two label-word rows only;
* ``ours, full-vocabulary head`` — the same with a ``head=`` that recomputes the class scores, which
  keeps full-vocabulary log-probabilities at the mask (what ``train`` always did before);
* ``peft`` — ``peft.get_peft_model(model, LoraConfig(...))`` and a hand-written loop: tokenise the batch
  (right padding), ``model(**batch).logits`` (every position), read the last prompt token's row,
  take the two label-word columns, cross-entropy;
* ``peft, logits_to_keep=1`` — left padding and ``logits_to_keep=1`` (only the last position goes
  through the output layer; HF slices a 3-D ``(B, 1, d)`` view, which torch runs as ``B`` separate
  matrix-vector products against the whole output matrix);
* ``peft, body + lm_head`` — left padding, the model body, then ``lm_head`` on the 2-D last hidden
  states (one matrix product): the fastest full-vocabulary hand-written loop.

Both sides tokenise inside the step. The sides alternate block by block (``--warmup`` steps, untimed,
then ``--steps`` timed steps); the best block of ``--repeats`` is reported. Models: ``small`` — Gemma 3
270M's architecture and tokenizer (262,144-token vocabulary) with 4 of its 18 layers, random weights;
``gemma270m`` — the embedded Gemma 3 270M itself. (GPT-2 is not used: our LoRA takes ``nn.Linear``
layers and GPT-2's attention uses ``Conv1D``.) Peak memory is the resident-set growth during a block.
Writes ``benchmarks/results_peft.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprompt_kit import Harness, Template, Verbalizer, load_task  # noqa: E402
from autoprompt_kit.delta import Delta, DeltaSpec  # noqa: E402
from autoprompt_kit.models.loading import default_model_dir  # noqa: E402

from _memory import PeakRSS  # noqa: E402  (benchmarks/, on the path of a script run)

TEMPLATE = "{text_a} It was {mask}."
WORDS = {"negative": "terrible", "positive": "great"}
TARGETS = ["q_proj", "v_proj"]
RANK = 8
LR = 1e-4
RESULTS = ROOT / "benchmarks" / "results_peft.md"


def build_model(name: str) -> tuple[nn.Module, Any, str]:
    """``(model, tokenizer, description)``: a seed-fixed Gemma-3-architecture model and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if name == "gemma270m":
        return AutoModelForCausalLM.from_pretrained(folder), tokenizer, "Gemma 3 270M (real weights, 18 layers)"
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = 4
    config.layer_types = config.layer_types[:4]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return model, tokenizer, f"Gemma-3-270M architecture, 4 layers, random weights ({params:.0f}M params)"


class Timer:
    """Step-end timestamps; seconds per step over the steps after ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.stamps: list[float] = []
        self.losses: list[float] = []

    def step(self, *_: Any) -> None:
        self.stamps.append(time.perf_counter())

    def seconds(self) -> float:
        timed = self.stamps[self.warmup - 1:] if self.warmup else self.stamps
        return (timed[-1] - timed[0]) / (len(timed) - 1)


class OurSide:
    """``Harness.train`` with our LoRA delta.

    ``exact_head``: pass a ``head`` that recomputes the class scores — the same loss, but ``train`` then
    keeps full-vocabulary log-probabilities at the mask (its only path before label-row training).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, batch_size: int, exact_head: bool = False) -> None:
        self.h = Harness(model, tokenizer, kind="causal", batch_size=batch_size, progress=False)
        self.delta = Delta.from_specs(self.h, [DeltaSpec("lora", TARGETS, r=RANK)]).attach(self.h)
        self.template, self.verbalizer = Template(TEMPLATE), Verbalizer.from_words(WORDS)
        self.batch_size = batch_size
        self.head = (lambda out: self.verbalizer.class_logprobs(out.word_logprobs.float())) if exact_head else None
        self.name = "ours (Harness.train + Delta LoRA)" + (", full-vocabulary head" if exact_head else "")

    def block(self, examples: list[Any], warmup: int, seed: int) -> Timer:
        timer = Timer(warmup)

        def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            loss = nn.functional.cross_entropy(logits, labels)
            timer.losses.append(float(loss.detach()))
            return loss

        self.h.train(examples, self.template, self.verbalizer, self.delta.parameters(), epochs=1, lr=LR,
                     batch_size=self.batch_size, seed=seed, loss_fn=loss_fn, on_step=timer.step, head=self.head)
        return timer

    def token_ids(self, example: Any) -> list[int]:
        enc = self.h.encoder.encode(self.template, example)
        words = [self.h.encoder.word_ids(w, enc.space_before_mask) for w in self.verbalizer.flat_words]
        return self.h.encoder.rows(0, enc, words)[0].input_ids


class PeftSide:
    """PEFT LoRA + a hand-written training loop (``mode``: full logits, ``logits_to_keep=1``, or body + lm_head)."""

    NAMES: ClassVar[dict[str, str]] = {"full": "full logits", "keep1": "left padding, logits_to_keep=1",
                                       "body": "left padding, body + lm_head on the last hidden state"}

    def __init__(self, model: nn.Module, tokenizer: Any, batch_size: int, mode: str) -> None:
        from peft import LoraConfig, get_peft_model

        self.model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0,
                                                      target_modules=TARGETS, bias="none"))
        self.tokenizer = copy.copy(tokenizer)
        self.tokenizer.padding_side = "right" if mode == "full" else "left"
        self.mode = mode
        self.batch_size = batch_size
        self.word_ids = []
        for word in WORDS.values():
            ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, f"{word!r} is not one token"
            self.word_ids.append(ids[0])
        self.name = "PEFT + plain loop, " + self.NAMES[mode]

    @staticmethod
    def prompt(example: Any) -> str:
        return f"{example.text_a.strip()} It was"

    def block(self, examples: list[Any], warmup: int, seed: int) -> Timer:
        timer = Timer(warmup)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=LR)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
        words = torch.tensor(self.word_ids)
        self.model.train()
        for start in range(0, len(order), self.batch_size):
            batch = [examples[i] for i in order[start:start + self.batch_size]]
            enc = self.tokenizer([self.prompt(e) for e in batch], padding=True, return_tensors="pt")
            labels = torch.tensor([e.label for e in batch])
            if self.mode == "keep1":
                logits = self.model(**enc, use_cache=False, logits_to_keep=1).logits[:, -1]
            elif self.mode == "body":  # 2-D input to the output layer: one matrix product, not B of them
                base = self.model.get_base_model()
                hidden = base.model(**enc, use_cache=False).last_hidden_state[:, -1]
                logits = base.lm_head(hidden)
            else:
                logits = self.model(**enc, use_cache=False).logits
                last = enc["attention_mask"].sum(dim=1) - 1
                logits = logits[torch.arange(len(batch)), last]
            loss = nn.functional.cross_entropy(logits[:, words].float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            timer.losses.append(float(loss.detach()))
            timer.step()
        self.model.eval()
        return timer

    def token_ids(self, example: Any) -> list[int]:
        return self.tokenizer(self.prompt(example))["input_ids"]


def run_model(name: str, args: argparse.Namespace, examples: list[Any]) -> dict[str, Any]:
    """Time every side on one model; a dict of results for the table."""
    model, tokenizer, label = build_model(name)
    sides: list[Any] = [OurSide(copy.deepcopy(model), tokenizer, args.batch_size),
                        OurSide(copy.deepcopy(model), tokenizer, args.batch_size, exact_head=True),
                        PeftSide(copy.deepcopy(model), tokenizer, args.batch_size, "full"),
                        PeftSide(copy.deepcopy(model), tokenizer, args.batch_size, "keep1"),
                        PeftSide(model, tokenizer, args.batch_size, "body")]
    per_block = (args.warmup + args.steps) * args.batch_size
    n_blocks = args.repeats
    pool = examples[: per_block * n_blocks]
    same_ids = sum(sides[0].token_ids(e) == sides[2].token_ids(e) for e in pool) / len(pool)
    lengths = [len(sides[0].token_ids(e)) for e in pool]
    results: dict[str, dict[str, Any]] = {s.name: {"sec": [], "peaks": [], "first_loss": None} for s in sides}
    print(f"\n## {label}: {args.batch_size} reviews a step (mean {sum(lengths) / len(lengths):.1f} tokens, "
          f"max {max(lengths)}); same token ids ours vs tokenizer: {same_ids:.1%}", flush=True)
    for rep in range(n_blocks):
        block = pool[rep * per_block:(rep + 1) * per_block]
        turn = sides if rep % 2 == 0 else sides[::-1]  # alternate who goes first
        for side in turn:
            with PeakRSS() as mem:
                timer = side.block(block, args.warmup, seed=rep)
            r = results[side.name]
            r["sec"].append(timer.seconds())
            r["peaks"].append(mem.peak)
            if rep == 0:
                r["first_loss"] = timer.losses[0]
            print(f"  block {rep}: {side.name}: {timer.seconds():.3f} s/step (first loss {timer.losses[0]:.5f})",
                  flush=True)
    return {"label": label, "results": results, "same_ids": same_ids, "ours": sides[0].name,
            "mean_len": sum(lengths) / len(lengths)}


def render(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown table of steps/s and ratios."""
    lines = [
        "# LoRA training steps: autoprompt_kit `Harness.train` vs PEFT + a plain loop",
        "",
        (f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_peft.py --models {args.models} --batch-size "
         f"{args.batch_size} --steps {args.steps} --warmup {args.warmup} --repeats {args.repeats}`"),
        "",
        (f"torch {torch.__version__}, 1 CPU thread; MR training reviews, batch {args.batch_size}, template "
         f"`{TEMPLATE}`, words terrible/great, LoRA r={RANK} alpha={RANK} on {'/'.join(TARGETS)}, AdamW; "
         f"{args.steps} timed steps per block after {args.warmup} warm-up steps, sides alternate, best of "
         f"{args.repeats} blocks (all blocks listed). Peak memory = resident-set growth during a block (one "
         "process: the side that runs first in block 0, ours, also pays the allocator's growth; block 1 runs the "
         "sides in reverse). First loss: step 1 of block 0 (same batch, LoRA B = 0), a check that the sides "
         "compute the same loss."),
        "",
        ("| model | loop | steps/s (best) | s/step of every block | peak memory of every block (MiB) | first loss "
         "| ours / this |"),
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ours = min(run["results"][run["ours"]]["sec"])
        for name, r in run["results"].items():
            best = min(r["sec"])
            ratio = "" if name == run["ours"] else f"**{best / ours:.2f}×** (goal ≥ 1×)"
            lines.append(f"| {run['label']} | {name} | {1 / best:.2f} | {', '.join(f'{s:.3f}' for s in r['sec'])} | "
                         f"{', '.join(f'{p / 2**20:.0f}' for p in r['peaks'])} | {r['first_loss']:.5f} | {ratio} |")
    lines.append("")
    lines.append("Token ids of our prompts equal the tokenizer's on the whole prompt string for " + ", ".join(
        f"{run['same_ids']:.1%} of reviews ({run['label']}, mean {run['mean_len']:.1f} tokens)" for run in runs) + ".")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small", help="comma-separated: small, gemma270m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every block")
    parser.add_argument("--repeats", type=int, default=2, help="blocks per side (best is reported)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be at least 1")
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    examples = list(load_task("mr").train)
    runs = [run_model(m.strip(), args, examples) for m in args.models.split(",") if m.strip()]
    table = render(runs, args)
    print("\n" + table)
    RESULTS.write_text(table)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
