"""Sharing a prompt the way PEFT adapters travel: a model card, Hub download and upload.

The folder :meth:`Prompt.save_pretrained` writes is the prompt folder (``prompt.json`` plus
safetensors) with a generated ``README.md``: YAML front matter the Hub reads (``library_name``,
``tags``, ``base_model``, ``metrics``, a ``model-index`` of the scores) and a page saying what the
prompt is, how it scored and how to use it. The network goes through ``huggingface_hub`` only
(:func:`download` → ``snapshot_download``, :func:`upload` → ``HfApi.create_repo`` +
``HfApi.upload_folder``); nothing here speaks HTTP itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from .errors import AutoPromptError


class CardSource(Protocol):
    """What a model card reads of a prompt (:class:`autoprompt_kit.Prompt` has it all).

    A protocol, not the class itself: the prompt module imports this one to write its card.
    """

    provenance: dict[str, Any]
    model: dict[str, Any]
    templates: list[Any]
    weights: list[float] | None
    ensemble: str | None
    verbalizer: Any
    demonstrations: Any
    head: Any
    states: dict[str, Any]

    @property
    def template(self) -> Any: ...

    def class_names(self) -> list[str]: ...


CARD_FILE = "README.md"
LIBRARY_NAME = "autoprompt-kit"
#: The embedded default is a GGUF build of this Hub model (the card's ``base_model``).
DEFAULT_BASE_MODEL = "google/gemma-3-270m"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(name: str) -> bool:
    """True for ``namespace/name`` (a prompt repo always has an owner); a path that exists is never one."""
    return bool(_REPO_ID.match(name)) and not Path(name).expanduser().exists() and not name.endswith(".json")


def base_model(model: dict[str, Any]) -> str | None:
    """The Hub id of the prompt's model, or None for a local folder / GGUF file (the Hub validates it)."""
    from .models.loading import DEFAULT_ALIASES

    name = str(model.get("name") or "")
    if not name or name.lower() in DEFAULT_ALIASES:
        return DEFAULT_BASE_MODEL
    # A sha256 pin means local weights (a folder or a GGUF file), whatever the name looks like.
    if model.get("sha256") or Path(name).expanduser().exists() or name.lower().endswith(".gguf"):
        return None
    return name if re.match(r"^[\w.-]+(/[\w.-]+)?$", name) else None


def _metric_rows(prompt: CardSource) -> list[tuple[str, dict[str, Any]]]:
    metrics = prompt.provenance.get("metrics") or {}
    return [(split, m) for split, m in metrics.items() if isinstance(m, dict) and "accuracy" in m]


def _front_matter(prompt: CardSource, task: str) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    method = prompt.provenance.get("method")
    tags = [LIBRARY_NAME, "prompt", "text-classification"] + ([str(method)] if method else [])
    results = []
    for split, m in _metric_rows(prompt):
        for metric, key, config in (("accuracy", "accuracy", None), ("f1", "macro_f1", "macro")):
            if m.get(key) is not None:
                results.append(
                    EvalResult(
                        task_type="text-classification",
                        dataset_type=task,
                        dataset_name=task,
                        dataset_split=split,
                        metric_type=metric,
                        metric_config=config,
                        metric_value=round(float(m[key]), 4),
                    )
                )
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=tags,
        base_model=base_model(prompt.model),
        metrics=["accuracy", "f1"],
        pipeline_tag="text-classification",
        model_name=f"{task} prompt ({method or 'autoprompt-kit'})" if results else None,
        eval_results=results or None,
    )
    return data.to_yaml()


#: Label words shown per class in the card (KPT's expanded verbalizers hold hundreds; prompt.json has all).
CARD_WORDS = 20


def _words(words: list[str]) -> str:
    shown = ", ".join(words[:CARD_WORDS])
    return shown if len(words) <= CARD_WORDS else f"{shown}, … ({len(words)} words)"


def _trained_state(prompt: CardSource) -> list[str]:
    lines = []
    if prompt.head is not None:
        lines.append(f"- a trained `{prompt.head.kind}` head on the mask hidden state (`head.safetensors`)")
    lines.extend(prompt.states[key].card_line() for key in sorted(prompt.states))
    return lines or ["- none: the prompt is text and label words only (`prompt.json`)"]


def model_card(prompt: CardSource, repo_id: str | None = None) -> str:
    """The ``README.md`` of a saved prompt: Hub front matter plus what it is, its scores and its use.

    Deterministic (no clock), so the same prompt always writes the same card.
    """
    info = prompt.provenance.get("task") or {}
    task = str(info.get("name") or "task") if isinstance(info, dict) else "task"
    names = prompt.class_names()
    method = prompt.provenance.get("method") or "a manual"
    model = prompt.model
    pins = [f"{k} `{model[k]}`" for k in ("revision", "sha256", "package") if model.get(k)]
    body = [
        f"# {task} prompt ({method})",
        "",
        f"A prompt for the **{task}** task ({len(names)} classes: {', '.join(names)}), found by "
        f"autoprompt-kit's `{method}` search. It is not a model: it is the text put around each input, "
        f"the label words read at the mask and any trained state, applied to the base model "
        f"`{model.get('name', 'gemma-3-270m')}` ({model.get('kind', 'unknown kind')}"
        + (f"; pinned by {', '.join(pins)}" if pins else "; not pinned")
        + ").",
        "",
        "## Prompt",
        "",
    ]
    if len(prompt.templates) > 1:
        weights = prompt.weights or [1.0] * len(prompt.templates)
        body.append(f"An ensemble ({prompt.ensemble or 'uniform'} weights) of {len(prompt.templates)} templates:")
        body.append("")
        body += [f"- `{t.display()}` (weight {w:.3f})" for t, w in zip(prompt.templates, weights)]
    else:
        body.append(f"Template: `{prompt.template.display()}`")
    body += ["", "| class | label words |", "|---|---|"]
    body += [f"| {n} | {_words(ws)} |" for n, ws in zip(names, prompt.verbalizer.label_words)]
    body += ["", f"Calibration: `{prompt.verbalizer.calibration}`; aggregation: `{prompt.verbalizer.aggregation}`.", ""]
    if prompt.demonstrations is not None:
        d = prompt.demonstrations
        how = (
            f"a fixed set of {len(d.fixed)}"
            if d.fixed is not None
            else f"{d.per_class} per class, chosen by `{d.selection}`"
        )
        body += [f"Demonstrations: {how}, order `{d.order}`, from a pool of {len(d.pool)} training examples.", ""]
    else:
        body += ["Demonstrations: none.", ""]
    body += ["Trained state:", ""] + _trained_state(prompt) + ["", "## Scores", ""]
    rows = _metric_rows(prompt)
    if rows:
        body += ["| split | accuracy | macro-F1 | n |", "|---|---|---|---|"]
        for split, m in rows:
            label = f"{split} ({m['folds']}-fold cross-validation over train + dev)" if "folds" in m else split
            f1 = "" if m.get("macro_f1") is None else f"{float(m['macro_f1']):.4f}"
            body.append(f"| {label} | {float(m['accuracy']):.4f} | {f1} | {m.get('n', '')} |")
    else:
        body.append("Not scored.")
    where = repo_id or "path/to/this/folder"
    body += [
        "",
        "## Usage",
        "",
        "```python",
        "from autoprompt_kit import Prompt",
        "",
        f'prompt = Prompt.from_pretrained("{where}")',
        'out = prompt.predict(["a gripping, funny film"])',
        "out.labels, out.probabilities",
        "```",
        "",
        f"or `autoprompt-kit predict --prompt {where} --input texts.txt`. Loading checks the base model "
        "against the pin above (a different file is an error; `allow_model_mismatch=True` / "
        "`--allow-model-mismatch` turns it into a warning).",
        "",
    ]
    return f"---\n{_front_matter(prompt, task).rstrip()}\n---\n\n" + "\n".join(body)


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def download(
    repo_id: str,
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local snapshot folder of a prompt repo (``huggingface_hub.snapshot_download``; cached)."""
    import huggingface_hub

    from ._version import __version__

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            library_name=LIBRARY_NAME,
            library_version=__version__,
        )
    except Exception as exc:  # noqa: BLE001 — offline, unknown repo, bad revision, auth: one line each
        at = f"@{revision}" if revision else ""
        raise AutoPromptError(f"cannot download the prompt {repo_id}{at} from the Hub ({_reason(exc)})") from None
    return Path(folder)


def upload(
    folder: Path,
    repo_id: str,
    *,
    commit_message: str,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Create the repo if needed and upload ``folder`` as one commit; returns huggingface_hub's CommitInfo."""
    import huggingface_hub

    api = huggingface_hub.HfApi(token=token, library_name=LIBRARY_NAME)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=getattr(repo, "repo_id", repo_id),
            folder_path=str(folder),
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )
    except Exception as exc:  # noqa: BLE001 — network, auth and permission errors: one line
        raise AutoPromptError(f"cannot push the prompt to {repo_id} ({_reason(exc)})") from None
