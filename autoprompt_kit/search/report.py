"""A study that reads like a report: metric names, readable study attributes, Markdown notes on
every trial and on the study (optuna-dashboard's notes), and artifacts (Optuna's artifact store:
dev predictions CSV, confusion matrix PNG, the best prompt folder as a zip).

Nothing here decides anything about the search: every function only describes what the backbone
(:mod:`.runner`) computed. Each one is best-effort where the search must not fail for a report
(a missing optuna-dashboard or matplotlib leaves a note, not an error).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

if TYPE_CHECKING:
    from ..artifact import Prompt
    from ..data import Split
    from ..harness import EvalResult

logger = logging.getLogger(__name__)

#: Study attributes a reader sees first: capitalised keys sort before the lower-case ones.
READABLE = ("Method", "Task", "Model", "Space", "Metric")
ARTIFACT_DIR = "artifacts"
PREDICTION_ROWS = 12  # rows of the dev-prediction table in a trial's note (errors first)


# -- names ---------------------------------------------------------------------------------------
def metric_name(metric: str, selection: dict[str, Any] | None) -> str:
    """What a study's value is, in words: ``dev accuracy``, ``dev macro-F1``, ``CV accuracy (4 folds)``."""
    shown = "macro-F1" if metric == "macro_f1" else metric
    if (selection or {}).get("mode") == "cv":
        return f"CV {shown} ({selection['folds']} folds)"  # type: ignore[index]
    return f"dev {shown}"


def model_label(fingerprint: dict[str, str]) -> str:
    """``gemma-3-270m (causal, fp32, sha256:1a2b3c4d5e6f)``: the name and what pins its weights."""
    name = Path(fingerprint.get("model", "?")).name or fingerprint.get("model", "?")
    pin, _, digest = str(fingerprint.get("weights", "")).partition(":")
    weights = f"{pin}:{digest[:12]}" if digest else ""
    extra = ", ".join(x for x in (fingerprint.get("kind"), fingerprint.get("precision"), weights) if x)
    return f"{name} ({extra})" if extra else name


def space_label(axes: dict[str, list[Any]], n_candidates: int | None, stages: Sequence[str] = ()) -> str:
    """``template ×5 · label_words ×3 · calibration ×2 (30 candidates)``, or a staged method's stages."""
    if stages:
        return "stages " + " → ".join(stages)
    parts = " · ".join(f"{name} ×{len(values)}" for name, values in axes.items())
    return f"{parts} ({n_candidates} candidates)" if n_candidates is not None else parts


def study_overview(
    method: str, task_summary: str, fingerprint: dict[str, str], space: str, metric: str
) -> dict[str, str]:
    """The readable study attributes (:data:`READABLE`)."""
    return {"Method": method, "Task": task_summary, "Model": model_label(fingerprint), "Space": space, "Metric": metric}


def readable_params(params: dict[str, Any]) -> str:
    """A trial's parameters on one line: ``template={text_a} It was {mask}. · label_words=bad/good``."""
    return " · ".join(f"{k}={v}" for k, v in params.items())


# -- notes ---------------------------------------------------------------------------------------
def save_note(study: optuna.Study, body: str, trial_id: int | None = None) -> bool:
    """Write a Markdown note on the study (``trial_id`` None) or one of its trials; False when
    optuna-dashboard is missing or another process wrote the same note at the same moment."""
    try:
        from optuna_dashboard._note import note_ver_key, save_note_with_version
    except ImportError:
        return False
    storage = study._storage
    try:
        version = storage.get_study_system_attrs(study._study_id).get(note_ver_key(trial_id), 0) + 1
        save_note_with_version(storage, study._study_id, trial_id, version, body)
    except Exception as exc:  # noqa: BLE001 — a note must never fail a search
        logger.debug("note not saved: %s", exc)
        return False
    return True


def _md(text: Any, limit: int = 120) -> str:
    """One Markdown table cell: no pipes or newlines, cut to ``limit`` characters."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def probabilities(result: EvalResult) -> np.ndarray:
    """Class probabilities ``(N, C)`` from the result's class log-probabilities (softmax per row)."""
    lp = np.asarray(result.class_logprobs, dtype=float)
    if not lp.size:
        return lp
    lp = np.where(np.isfinite(lp), lp, -1e9)
    shifted = np.exp(lp - lp.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def prediction_rows(result: EvalResult, examples: Split, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per scored example: text, gold, predicted and the predicted class's probability."""
    probs = probabilities(result)
    rows = []
    for i, (ex, gold, pred) in enumerate(zip(examples, result.labels, result.predictions)):
        text = ex.text_a if ex.text_b is None else f"{ex.text_a} ‖ {ex.text_b}"
        rows.append(
            {
                "index": i,
                "text": text,
                "gold": label_names[int(gold)],
                "predicted": label_names[int(pred)],
                "probability": float(probs[i, int(pred)]) if probs.size else float("nan"),
                "correct": int(gold) == int(pred),
            }
        )
    return rows


def predictions_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["index", "text", "gold", "predicted", "probability", "correct"])
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "probability": f"{r['probability']:.4f}"})
    return out.getvalue()


def trial_note(
    number: int,
    prompt: Prompt,
    result: EvalResult,
    examples: Split,
    label_names: Sequence[str],
    metric: str,
    value: float,
    cv: dict[str, Any] | None,
    seconds: float,
) -> str:
    """A finished trial's note: the prompt as the model reads it on one real example, the label
    words, calibration, demonstrations, trained state, the score with its n, and the predictions."""
    rows = prediction_rows(result, examples, label_names)
    example = examples[0] if len(examples) else None
    lines = [f"## Trial {number}: {prompt.describe()}", ""]
    shown = "macro-F1" if metric == "macro_f1" else metric
    if cv:
        lines.append(
            f"**CV {shown} {value:.4f} ± {cv['se']:.4f}** (n={cv['n']}, {cv['folds']}-fold cross-validation "
            f"over train + dev; folds: {', '.join(f'{s:.3f}' for s in cv['fold_scores'])})"
        )
    else:
        se = math.sqrt(max(value * (1 - value), 0.0) / max(result.n, 1)) if metric == "accuracy" else None
        lines.append(
            f"**dev {shown} {value:.4f}**"
            + (f" ± {se:.4f}" if se is not None else "")
            + f" (n={result.n})"
            + f" · accuracy {result.accuracy:.4f} · macro-F1 {result.macro_f1:.4f} · {seconds:.1f} s"
        )
    lines += ["", "### Prompt"]
    for i, template in enumerate(prompt.templates):
        weight = f" (weight {prompt.weights[i]:.3f})" if prompt.weights and len(prompt.templates) > 1 else ""
        lines.append(f"- template: `{template.display()}`{weight}")
    if example is not None:
        import textwrap

        rendered = textwrap.fill(prompt.templates[0].fill(example, "[mask]")[:1500], 100)  # no sideways scrolling
        lines += [
            "",
            f"Rendered on a {'dev' if not cv else 'labelled'} example (gold: {label_names[example.label]}):",
            "",
            "```text",
            rendered,
            "```",
        ]
    lines += ["", "| class | label words |", "|---|---|"]
    labels = prompt.verbalizer.labels or list(label_names)
    for label, words in zip(labels, prompt.verbalizer.label_words):
        lines.append(f"| {_md(label)} | {_md(', '.join(words))} |")
    lines += [
        "",
        f"- calibration: **{prompt.verbalizer.calibration}**",
        f"- demonstrations: {prompt.demonstrations.describe() if prompt.demonstrations is not None else 'none'}",
        f"- trained state: {trained_state(prompt)}",
    ]
    errors = [r for r in rows if not r["correct"]]
    table = sorted(rows, key=lambda r: (r["correct"], -r["probability"]))[:PREDICTION_ROWS]
    lines += [
        "",
        f"### {'Out-of-fold' if cv else 'Dev'} predictions ({len(errors)} wrong of {len(rows)}; "
        f"errors first, {len(table)} shown)",
        "",
        "| # | text | gold | predicted | p |",
        "|---|---|---|---|---|",
    ]
    for r in table:
        mark = "" if r["correct"] else " ✗"
        lines.append(
            f"| {r['index']} | {_md(r['text'], 90)} | {_md(r['gold'])} | {_md(r['predicted'])}{mark} "
            f"| {r['probability']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def trained_state(prompt: Prompt) -> str:
    """``none``, or the kind and size of what the prompt carries (head, delta, fine-tuned weights)."""
    parts = []
    if prompt.head is not None:
        size = sum(int(t.numel()) for t in prompt.head.head_tensors().values())
        parts.append(f"{prompt.head.kind} head ({size:,} values)")
    parts.extend(prompt.states[key].summary() for key in sorted(prompt.states))
    return ", ".join(parts) or "none"


def failed_note(number: int, reason: str) -> str:
    return f"## Trial {number}: failed\n\n{reason}\n"


def study_note(
    study_name: str,
    overview: dict[str, str],
    best: optuna.trial.FrozenTrial | None,
    search_command: str | None,
    out: str | None,
) -> str:
    """The study's note: what was searched, the best prompt so far, how to reproduce and use it."""
    lines = [f"# {study_name}", ""]
    lines += [f"- **{key.lower()}**: {_md(value, 300)}" for key, value in overview.items()]
    if best is not None:
        lines += [
            "",
            f"## Best so far: trial {best.number}, {overview.get('Metric', 'value')} {best.value:.4f}",
            "",
            "Of tied trials the simpler prompt wins, then the more confident one (optuna-dashboard's "
            '"Best Trial" badge marks the first of them).',
            "",
            f"- prompt: `{best.user_attrs.get('prompt', '')}`",
            f"- template: `{best.user_attrs.get('template', '')}`",
            f"- label words: `{best.user_attrs.get('label_words', '')}`",
        ]
    if search_command:
        language = "bash" if search_command.startswith("autoprompt-kit") else "python"
        lines += ["", "## Reproduce", "", f"```{language}", search_command, "```"]
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"autoprompt-kit predict --prompt {out or 'best.json'} --input texts.txt",
        "```",
    ]
    return "\n".join(lines) + "\n"


# -- artifacts ------------------------------------------------------------------------------------
def artifact_dir(storage_url: str) -> Path:
    """Where a storage's artifacts live: ``artifacts/`` beside an SQLite file, else ``runs/artifacts``."""
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url[len("sqlite:///") :]).expanduser().parent / ARTIFACT_DIR
    return Path("runs") / ARTIFACT_DIR


def artifact_store(storage_url: str) -> Any:
    """Optuna's file-system artifact store beside the storage (created on first use)."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = artifact_dir(storage_url)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def upload(
    store: Any, study: optuna.Study, trial_id: int | None, path: Path, mimetype: str | None = None
) -> str | None:
    """Upload one file to the study (``trial_id`` None) or a trial; its artifact id, or None on failure.

    Optuna refuses to attach anything to a finished trial, but the best trial is only known once
    it finished: then the artifact's record is written into Optuna's trial table directly, in the
    same form :func:`optuna.artifacts.upload_artifact` writes it.
    """
    import warnings

    from optuna.artifacts import upload_artifact

    try:
        target: Any = study
        if trial_id is not None:
            target = study._storage.get_trial(trial_id)
            if target.state.is_finished():
                return _upload_to_finished(store, study, trial_id, path, mimetype)
        with warnings.catch_warnings():  # the artifact API is "experimental" in Optuna 3.x/4.x
            warnings.simplefilter("ignore")
            return upload_artifact(
                artifact_store=store,
                file_path=str(path),
                study_or_trial=target,
                storage=study._storage,
                mimetype=mimetype,
            )
    except Exception as exc:  # noqa: BLE001 — an artifact must never fail a search
        logger.warning("artifact %s not stored: %s", path.name, exc)
        return None


def _upload_to_finished(store: Any, study: optuna.Study, trial_id: int, path: Path, mimetype: str | None) -> str:
    import json
    import mimetypes
    import uuid

    import sqlalchemy as sa
    from optuna.storages._rdb import models

    engine = getattr(getattr(study._storage, "_backend", study._storage), "engine", None)
    if engine is None:
        raise RuntimeError("the trial is finished and the storage is not a database")
    artifact_id = str(uuid.uuid4())
    guessed, encoding = mimetypes.guess_type(path.name)
    meta = {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": mimetype or guessed or "application/octet-stream",
        "encoding": encoding,
    }
    with open(path, "rb") as fh:
        store.write(artifact_id, fh)
    table = models.TrialSystemAttributeModel
    with engine.begin() as conn:  # the value is the JSON of a JSON string, as Optuna stores it
        conn.execute(
            sa.insert(table).values(
                trial_id=trial_id, key=f"artifacts:{artifact_id}", value_json=json.dumps(json.dumps(meta))
            )
        )
    return artifact_id


def confusion_png(
    labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str], title: str, path: Path
) -> bool:
    """A confusion-matrix PNG (gold rows × predicted columns); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    k = len(label_names)
    matrix = np.zeros((k, k), dtype=int)
    for g, p in zip(labels, predictions):
        matrix[int(g), int(p)] += 1
    size = max(3.5, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), [str(n) for n in label_names], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(n) for n in label_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    top = matrix.max() or 1
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > top / 2 else "black"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def zip_folder(folder: Path, out: Path) -> Path:
    """``folder`` as a zip archive at ``out`` (``.zip`` appended by :func:`shutil.make_archive`)."""
    return Path(shutil.make_archive(str(out.with_suffix("")), "zip", root_dir=folder))


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="autoprompt-report-")
