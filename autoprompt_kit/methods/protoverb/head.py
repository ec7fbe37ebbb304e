"""ProtoVerb (Cui et al., ACL 2022): prototypes learned on mask hidden states as the verbalizer.

The language model stays frozen, so one harness pass per split gives every example's hidden state
at the mask (``Harness.score(..., hidden=True)``, which also returns the manual verbalizer's word
scores); everything below trains on those ``(N, d)`` vectors.

* **Head**: the hidden states are standardised per dimension with the training set's mean and
  standard deviation (mask states share one large common direction that would otherwise dominate
  every cosine), then a linear projection ``d → proj_dim`` (no bias) and ``K`` prototypes per class,
  compared by cosine; a class's score is the temperature-scaled log-sum-exp over its prototypes.
* **Losses**: instance–prototype InfoNCE (an instance against every prototype; its own class's are
  the positives) + ``instance_weight`` × instance–instance supervised contrastive loss (same-class
  instances together). Any number of examples per class works (no equal-shot batches).
* **Initialisation**: the projection is orthogonal; each class's prototypes are the faiss k-means
  centroids of its projected training embeddings (``K = 1``: their mean). A class with fewer
  examples than ``K`` gets one prototype per example (``on_small_class: reduce``, logged) or an
  error (``on_small_class: error``).
* **Inference**: ``proto`` = prototype scores alone; ``combined`` = the average of the z-scored
  prototype scores and the z-scored manual verbalizer class log-probabilities (each class column
  standardised with its mean and standard deviation on the training set — per-example z-scores,
  as OpenPrompt does, are ±1/√2 for every binary example and carry no information).
* **Interpretation**: each prototype's nearest vocabulary words by cosine in the projected space
  (a faiss inner-product index over the projected, normalised output embeddings of word tokens),
  and its *distinctive words*: the output-layer words favoured by the centroid of the training
  examples nearest to it, relative to the mean of all of them (faiss inner-product index over the
  raw output embeddings, queried with ``centroid − mean``: the words whose logit the group raises
  most; the raw centroid alone mostly predicts "the", "not", "one"). Both go to the trial
  artifacts, i.e. ``best.json``'s ``trial_artifacts`` and the dashboard's user attributes.
* **Unsupervised**: :func:`cluster_mask_embeddings` clusters unlabelled mask embeddings into ``k``
  groups (faiss spherical k-means on standardised states) and reports each cluster's distinctive
  words the same way.

**Saving**: a trial's prompt carries the trained head (a :class:`~autoprompt_kit.artifact.Head`
of kind ``protoverb``), next to the template and the manual verbalizer that ``combined`` inference
uses; the saved prompt folder holds its settings in ``prompt.json`` and its tensors in
``head.safetensors`` (~160 kB for a 640→64 projection). ``Prompt.load(dir).evaluate(split)`` and
``predict`` re-apply it; :meth:`PrototypeHead.save` / :meth:`PrototypeHead.load` write / read
``protoverb.json`` + ``protoverb.safetensors`` for the head alone.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import AutoPromptError
from ...prompts import Template, Verbalizer, as_template
from ...search.base import HEADS, Candidate, SearchConfig, SearchContext, Searcher, TrialOutcome, choice, register
from ..kpt.knowledge import vocabulary_words

if TYPE_CHECKING:
    import optuna

    from ...data import Split
    from ...harness import EvalResult, Harness

logger = logging.getLogger(__name__)

INFERENCE = ("proto", "combined")
SMALL_CLASS = ("reduce", "error")


@dataclass
class ProtoSettings:
    """One ProtoVerb head's training settings."""

    proj_dim: int = 64
    prototypes_per_class: int = 1
    temperature: float = 0.1
    instance_weight: float = 1.0
    steps: int = 100
    lr: float = 0.01
    batch_size: int = 64
    inference: str = "combined"
    manual_weight: float = 1.0
    on_small_class: str = "reduce"

    def __post_init__(self) -> None:
        if self.proj_dim < 1 or self.prototypes_per_class < 1 or self.steps < 1 or self.batch_size < 2:
            raise AutoPromptError("proj_dim, prototypes_per_class and steps must be >= 1, batch_size >= 2")
        if self.temperature <= 0 or self.lr <= 0 or self.instance_weight < 0 or self.manual_weight < 0:
            raise AutoPromptError("temperature and lr must be > 0; instance_weight and manual_weight >= 0")
        if self.inference not in INFERENCE:
            raise AutoPromptError(f"inference must be one of {INFERENCE}, got {self.inference!r}")
        if self.on_small_class not in SMALL_CLASS:
            raise AutoPromptError(f"on_small_class must be one of {SMALL_CLASS}, got {self.on_small_class!r}")


class PrototypeHead(nn.Module):
    """Projection + prototypes; scores mask hidden states (optionally with a manual verbalizer)."""

    kind = "protoverb"

    def __init__(self, hidden_size: int, proj_dim: int, prototype_labels: Sequence[int], num_classes: int, *,
                 temperature: float = 0.1, inference: str = "combined", manual_weight: float = 1.0) -> None:
        super().__init__()
        labels = torch.tensor(list(prototype_labels), dtype=torch.long)
        if sorted(set(labels.tolist())) != list(range(num_classes)):
            raise AutoPromptError("every class needs at least one prototype")
        self.proj = nn.Linear(hidden_size, proj_dim, bias=False)
        nn.init.orthogonal_(self.proj.weight)
        self.prototypes = nn.Parameter(torch.randn(len(labels), proj_dim) * 0.01)
        self.register_buffer("prototype_labels", labels)
        self.register_buffer("input_mean", torch.zeros(hidden_size))
        self.register_buffer("input_std", torch.ones(hidden_size))
        # z-score statistics of proto scores and manual class log-probs on the training set (C,)
        for name in ("proto_mean", "manual_mean"):
            self.register_buffer(name, torch.zeros(num_classes))
        for name in ("proto_std", "manual_std"):
            self.register_buffer(name, torch.ones(num_classes))
        self.num_classes = num_classes
        self.temperature = temperature
        self.inference = inference
        self.manual_weight = manual_weight

    # -- scoring ------------------------------------------------------------------------------
    def embed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Standardise, project, normalise: ``(N, proj_dim)`` unit vectors."""
        return nn.functional.normalize(self.proj((hidden.float() - self.input_mean) / self.input_std), dim=-1)

    def similarities(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(N, P)`` cosine of each projected instance to each prototype."""
        return self.embed(hidden) @ nn.functional.normalize(self.prototypes, dim=-1).T

    def proto_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` per class: log-sum-exp over its prototypes of cosine / temperature."""
        sims = self.similarities(hidden) / self.temperature
        out = torch.full((sims.shape[0], self.num_classes), float("-inf"), device=sims.device)
        for c in range(self.num_classes):
            out[:, c] = torch.logsumexp(sims[:, self.prototype_labels == c], dim=1)
        return out

    def class_logprobs(self, hidden: torch.Tensor, manual: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C)`` class log-probabilities: prototypes alone, or z-score-combined with ``manual``."""
        proto = self.proto_logits(hidden)
        if self.inference == "proto":
            return torch.log_softmax(proto, dim=1)
        if manual is None:
            raise AutoPromptError("combined ProtoVerb inference needs the manual verbalizer's class scores")
        z_proto = (proto - self.proto_mean) / self.proto_std
        z_manual = (manual.float() - self.manual_mean) / self.manual_std
        return torch.log_softmax((z_proto + self.manual_weight * z_manual) / (1 + self.manual_weight), dim=1)

    def fit_statistics(self, hidden: torch.Tensor, manual: torch.Tensor | None) -> None:
        """Store the training-set mean and sd of each class column (for ``combined`` z-scores)."""
        with torch.no_grad():
            proto = self.proto_logits(hidden)
            self.proto_mean.copy_(proto.mean(0))
            self.proto_std.copy_(proto.std(0).clamp_min(1e-6) if len(proto) > 1 else torch.ones_like(self.proto_std))
            if manual is not None:
                self.manual_mean.copy_(manual.float().mean(0))
                self.manual_std.copy_(manual.float().std(0).clamp_min(1e-6) if len(manual) > 1
                                      else torch.ones_like(self.manual_std))

    def evaluate(self, harness: "Harness", split: "Split", template: Template | str, verbalizer: Verbalizer,
                 label_names: Sequence[str] | None = None) -> "EvalResult":
        """Accuracy / macro-F1 on a split: one harness pass (word scores + mask hidden states)."""
        from ...harness import EvalResult

        start = time.perf_counter()
        template = as_template(template)
        if label_names is not None:
            verbalizer.check_labels(label_names)
        out = harness.score(split, template, verbalizer, hidden=True)
        assert out.hidden is not None
        manual = verbalizer.class_logprobs(out.word_logprobs.float())
        with torch.no_grad():
            class_lp = self.class_logprobs(out.hidden.float().to(self.prototypes.device), manual.to(self.prototypes.device))
        labels = np.array([e.label for e in split])
        return EvalResult.from_class_logprobs(class_lp, labels, word_logprobs=out.word_logprobs.float(),
                                              num_classes=self.num_classes, seconds=time.perf_counter() - start,
                                              template=template.display(),
                                              extra={"manual_class_logprobs": manual.cpu().numpy()})

    # -- saving -------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"hidden_size": self.proj.in_features, "proj_dim": self.proj.out_features,
                "prototype_labels": self.prototype_labels.tolist(), "num_classes": self.num_classes,
                "temperature": self.temperature, "inference": self.inference, "manual_weight": self.manual_weight}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}

    def head_config(self) -> dict[str, Any]:
        """The settings a saved prompt's manifest keeps (its tensors go to safetensors)."""
        return self._meta()

    def head_tensors(self) -> dict[str, torch.Tensor]:
        return self._tensors()

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "PrototypeHead":
        """Rebuild from :meth:`head_config` and :meth:`head_tensors` (a saved prompt's head)."""
        needed = ("hidden_size", "proj_dim", "prototype_labels", "num_classes", "temperature", "inference",
                  "manual_weight")
        missing = [k for k in needed if k not in config]
        if missing:
            raise AutoPromptError(f"the saved ProtoVerb head's config lacks {', '.join(missing)}")
        try:
            return cls._build(config, tensors)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise AutoPromptError(f"the saved ProtoVerb head does not match its config: {str(exc).splitlines()[0][:200]}") from None

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "protoverb", "config": …, "safetensors_b64": …}`` — JSON-safe, re-loadable."""
        from safetensors.torch import save

        return {"kind": "protoverb", "config": self._meta(),
                "safetensors_b64": base64.b64encode(save(self._tensors())).decode("ascii")}

    @classmethod
    def _build(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "PrototypeHead":
        head = cls(meta["hidden_size"], meta["proj_dim"], meta["prototype_labels"], meta["num_classes"],
                   temperature=meta["temperature"], inference=meta["inference"], manual_weight=meta["manual_weight"])
        tensors = dict(tensors)
        tensors["prototype_labels"] = tensors["prototype_labels"].long()
        head.load_state_dict(tensors)
        return head

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrototypeHead":
        from safetensors.torch import load

        if data.get("kind") != "protoverb" or "config" not in data or "safetensors_b64" not in data:
            raise AutoPromptError("not a saved ProtoVerb head (needs kind: protoverb, config, safetensors_b64)")
        return cls._build(data["config"], load(base64.b64decode(data["safetensors_b64"])))

    def save(self, folder: str | Path) -> Path:
        """Write ``protoverb.json`` (settings) and ``protoverb.safetensors`` (weights) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self._tensors(), str(folder / "protoverb.safetensors"))
        (folder / "protoverb.json").write_text(json.dumps(self._meta(), indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "PrototypeHead":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "protoverb.json").is_file() or not (folder / "protoverb.safetensors").is_file():
            raise AutoPromptError(f"{folder} has no protoverb.json + protoverb.safetensors")
        from ...io import load_json

        return cls._build(load_json(folder / "protoverb.json", "prototype head"),
                          load_file(str(folder / "protoverb.safetensors")))


HEADS[PrototypeHead.kind] = PrototypeHead


def _kmeans(x: np.ndarray, k: int, seed: int, spherical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means: ``(centroids (k, d), assignment (n,))``."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, spherical=spherical, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=100000)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0]


def _contrastive_losses(head: PrototypeHead, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance–prototype InfoNCE and instance–instance supervised contrastive loss."""
    z = head.embed(hidden)
    sims = z @ nn.functional.normalize(head.prototypes, dim=-1).T / head.temperature  # (B, P)
    own = head.prototype_labels[None, :] == labels[:, None]
    proto_loss = -(torch.logsumexp(sims.masked_fill(~own, float("-inf")), 1) - torch.logsumexp(sims, 1)).mean()
    inst = z @ z.T / head.temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    inst = inst.masked_fill(eye, float("-inf"))
    same = (labels[:, None] == labels[None, :]) & ~eye
    has_pos = same.any(1)
    if not bool(has_pos.any()):
        return proto_loss, torch.zeros((), device=z.device)
    log_prob = inst - torch.logsumexp(inst, 1, keepdim=True)
    pos_mean = log_prob.masked_fill(~same, 0.0).sum(1) / same.sum(1).clamp_min(1)
    return proto_loss, -pos_mean[has_pos].mean()


def _label_tensor(labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    # Not np.array(tensor): torch's __array__ lacks numpy 2's copy keyword (a DeprecationWarning).
    if isinstance(labels, torch.Tensor):
        return labels.detach().long().cpu()
    return torch.as_tensor(list(labels), dtype=torch.long)


def train_prototypes(hidden: torch.Tensor, labels: Sequence[int] | torch.Tensor, num_classes: int,
                     settings: ProtoSettings, *, manual: torch.Tensor | None = None,
                     seed: int = 0) -> tuple[PrototypeHead, list[dict[str, float]]]:
    """Train a :class:`PrototypeHead` on mask hidden states ``(N, d)`` of labelled examples.

    Returns the head (z-score statistics fitted on the same examples) and the loss history.
    """
    torch.manual_seed(seed)
    hidden = hidden.float().detach().cpu()
    y = _label_tensor(labels)
    counts = torch.bincount(y, minlength=num_classes).tolist()
    if any(n == 0 for n in counts):
        missing = [c for c, n in enumerate(counts) if n == 0]
        raise AutoPromptError(f"ProtoVerb: class(es) {missing} have no training example")
    k = settings.prototypes_per_class
    per_class = []
    for c, n in enumerate(counts):
        if n < k:
            if settings.on_small_class == "error":
                raise AutoPromptError(f"ProtoVerb: class {c} has {n} training examples, fewer than "
                                      f"prototypes_per_class={k} (set on_small_class: reduce to use {n})")
            logger.warning("ProtoVerb: class %d has %d examples < %d prototypes; using %d", c, n, k, n)
        per_class.append(min(n, k))
    proto_labels = [c for c, m in enumerate(per_class) for _ in range(m)]
    head = PrototypeHead(hidden.shape[1], settings.proj_dim, proto_labels, num_classes,
                         temperature=settings.temperature, inference=settings.inference,
                         manual_weight=settings.manual_weight)
    with torch.no_grad():
        head.input_mean.copy_(hidden.mean(0))
        head.input_std.copy_(hidden.std(0).clamp_min(1e-6) if len(hidden) > 1 else torch.ones(hidden.shape[1]))
        z = head.embed(hidden).numpy()
        inits = []
        for c, m in enumerate(per_class):
            zc = z[(y == c).numpy()]
            inits.append(zc.mean(0, keepdims=True) if m == 1 else _kmeans(zc, m, seed + c)[0])
        head.prototypes.copy_(torch.from_numpy(np.concatenate(inits)))
    opt = torch.optim.Adam(head.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for step in range(settings.steps):
        idx = torch.randperm(len(y), generator=gen)[: settings.batch_size]
        proto_loss, inst_loss = _contrastive_losses(head, hidden[idx], y[idx])
        loss = proto_loss + settings.instance_weight * inst_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == settings.steps - 1:
            history.append({"step": step, "loss": float(loss.detach()), "proto": float(proto_loss.detach()),
                            "instance": float(inst_loss.detach())})
    head.eval()
    head.fit_statistics(hidden, manual)
    return head, history


def _word_index(harness: "Harness", projection: nn.Linear | None) -> tuple[Any, list[int]]:
    """faiss inner-product index over the output embeddings of the vocabulary's word tokens
    (projected and normalised when ``projection`` is given) and the token id of each row."""
    import faiss

    ids = vocabulary_words(harness).nonzero().squeeze(1)
    emb = harness.head.weight.detach().float().cpu()[ids]
    if projection is not None:
        with torch.no_grad():
            emb = nn.functional.normalize(projection(emb), dim=-1)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb.numpy(), dtype=np.float32))
    return index, ids.tolist()


def _words(harness: "Harness", index: Any, ids: list[int], queries: np.ndarray, k: int) -> list[list[str]]:
    from ...models.vocab import token_strings, word_of

    strings = token_strings(harness.tokenizer)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return [[word_of(strings[ids[j]])[0] for j in row if j >= 0] for row in found]


def prototype_words(harness: "Harness", head: PrototypeHead, hidden: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                    k: int = 10) -> list[dict[str, Any]]:
    """Interpret each prototype: its nearest words in the projected space, and the distinctive words
    of the training instances nearest to it (see the module docstring). One dict per prototype."""
    y = _label_tensor(labels)
    with torch.no_grad():
        protos = nn.functional.normalize(head.prototypes, dim=-1).cpu().numpy()
        sims = head.similarities(hidden.float().cpu())
    index, ids = _word_index(harness, head.proj)
    near = _words(harness, index, ids, protos, k)
    # each training instance belongs to its nearest prototype of its own class
    own = head.prototype_labels[None, :] == y[:, None]
    assign = sims.masked_fill(~own, -2.0).argmax(1)
    hidden = hidden.float().cpu()
    centroids, sizes = [], []
    for p in range(len(protos)):
        members = hidden[assign == p]
        sizes.append(int(len(members)))
        centroids.append(members.mean(0) if len(members) else hidden.mean(0))
    raw_index, raw_ids = _word_index(harness, None)
    predicted = _words(harness, raw_index, raw_ids, (torch.stack(centroids) - hidden.mean(0)).numpy(), k)
    return [{"prototype": p, "class": int(head.prototype_labels[p]), "members": sizes[p], "nearest_words": near[p],
             "distinctive_words": predicted[p] if sizes[p] else []} for p in range(len(protos))]


@dataclass
class Clustering:
    """Unsupervised ProtoVerb: k clusters of mask embeddings and what each one says."""

    assignments: np.ndarray
    sizes: list[int]
    top_words: list[list[str]]
    label_counts: list[list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sizes": self.sizes, "top_words": self.top_words}
        if self.label_counts is not None:
            out["label_counts"] = self.label_counts
        return out


def cluster_mask_embeddings(harness: "Harness", split: "Split", template: Template | str, k: int, *,
                            seed: int = 0, top_words: int = 10, hidden: torch.Tensor | None = None) -> Clustering:
    """Cluster unlabelled mask hidden states into ``k`` groups (faiss spherical k-means on the
    standardised states); each cluster's words are those its mean state raises most relative to the
    mean of all states (the logit difference, through the output embeddings).

    Labels, when the examples have them (>= 0), are only counted per cluster, never used.
    """
    if k < 2:
        raise AutoPromptError("cluster into at least k=2 groups")
    if hidden is None:
        hidden = harness.mask_hidden(split, template)
    hidden = hidden.float().cpu()
    if len(hidden) < k:
        raise AutoPromptError(f"cannot make {k} clusters from {len(hidden)} examples")
    standard = (hidden - hidden.mean(0)) / hidden.std(0).clamp_min(1e-6)
    _, assign = _kmeans(nn.functional.normalize(standard, dim=-1).numpy(), k, seed)
    means = torch.stack([hidden[torch.from_numpy(assign == c)].mean(0) if (assign == c).any()
                         else hidden.mean(0) for c in range(k)])
    index, ids = _word_index(harness, None)
    words = _words(harness, index, ids, (means - hidden.mean(0)).numpy(), top_words)
    labels = np.array([e.label for e in split])
    counts = None
    if (labels >= 0).all():
        n_labels = int(labels.max()) + 1
        counts = [np.bincount(labels[assign == c], minlength=n_labels).tolist() for c in range(k)]
    return Clustering(assign, [int((assign == c).sum()) for c in range(k)], words, counts)


@dataclass
class ProtoVerbConfig(SearchConfig):
    template: str = field(default="{text_a} It was {mask}.", metadata={"role": "template", "help": "the prompt template"})
    label_words: dict[str, Any] = field(default_factory=dict, metadata={"role": "label_words", 
        "help": "the manual verbalizer (label → words), used by combined inference"})
    calibration: str = field(default="none", metadata={"help": "the manual verbalizer's calibration"})
    proj_dim: list[int] = choice([64], help="choices: projection size")
    prototypes_per_class: list[int] = choice([1], help="choices: K per class")
    temperature: list[float] = choice([0.1], help="choices: cosine temperature")
    instance_weight: list[float] = choice([1.0], help="choices: weight of the instance-instance loss")
    inference: list[str] = choice(["combined", "proto"], help="choices: proto (prototypes alone) and/or combined")
    manual_weight: float = field(default=1.0, metadata={"help": "weight of the manual verbalizer when combined"})
    steps: int = field(default=100, metadata={"help": "optimisation steps (batches of batch_size)"})
    lr: float = field(default=0.01, metadata={"help": "learning rate (Adam)"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    on_small_class: str = field(default="reduce", metadata={
        "help": "a class with fewer examples than K: reduce (one prototype per example) or error"})
    top_words: int = field(default=10, metadata={"help": "words shown per prototype"})

    def __post_init__(self) -> None:
        Template(self.template)
        if not isinstance(self.label_words, dict) or len(self.label_words) < 2:
            raise AutoPromptError("protoverb needs label_words: the manual verbalizer, a mapping of label → word(s)")
        Verbalizer.from_words(self.label_words, calibration=self.calibration)
        for name, values in self.axes().items():
            if not values:
                raise AutoPromptError(f"protoverb: {name} must be a non-empty list of choices")
        self.check_points()
        if self.top_words < 1:
            raise AutoPromptError("top_words must be at least 1")


    def check_point(self, point: dict[str, Any]) -> None:
        self.settings(point)

    def settings(self, point: dict[str, Any]) -> ProtoSettings:
        """The head's settings for one trial's parameters."""
        return ProtoSettings(proj_dim=point["proj_dim"], prototypes_per_class=point["prototypes_per_class"],
                             temperature=point["temperature"], instance_weight=point["instance_weight"],
                             inference=point["inference"], steps=self.steps, lr=self.lr, batch_size=self.batch_size,
                             manual_weight=self.manual_weight, on_small_class=self.on_small_class)


@register
class ProtoVerbSearcher(Searcher):
    """ProtoVerb: one trial = one prototype head trained on the frozen model's mask states."""

    name = "protoverb"
    config_class = ProtoVerbConfig
    config: ProtoVerbConfig

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config)
        self._cache: dict[str, Any] = {}  # split fingerprint → (hidden, manual class log-probs)

    def _states(self, harness: "Harness", split: "Split", template: Template,
                verbalizer: Verbalizer) -> tuple[torch.Tensor, torch.Tensor]:
        key = split.fingerprint
        if key not in self._cache:  # the model is frozen: one pass per split serves every trial
            out = harness.score(split, template, verbalizer, hidden=True)
            assert out.hidden is not None
            self._cache[key] = (out.hidden.float().cpu(), verbalizer.class_logprobs(out.word_logprobs.float()).cpu())
        return self._cache[key]

    def run_trial(self, trial: "optuna.Trial", ctx: SearchContext) -> TrialOutcome:
        cfg, h, task = self.config, ctx.harness, ctx.task
        verbalizer = Verbalizer.from_words(cfg.label_words, calibration=cfg.calibration)
        verbalizer.check_labels(task.label_names)
        if verbalizer.calibration == "content_free":
            raise AutoPromptError("protoverb's manual verbalizer takes calibration none (combined inference "
                                  "standardises its scores on the training set instead)")
        settings = cfg.settings(cfg.sample(trial))
        template = Template(cfg.template)
        hidden, manual = self._states(h, task.train, template, verbalizer)
        head, history = train_prototypes(hidden, task.train.labels, verbalizer.num_classes, settings, manual=manual,
                                         seed=ctx.seed + trial.number)
        dev_hidden, dev_manual = self._states(h, task.dev, template, verbalizer)
        dev = _result(head, dev_hidden, dev_manual, task.dev.labels, template)
        words = prototype_words(h, head, hidden, task.train.labels, cfg.top_words)
        for entry in words:
            entry["class"] = task.label_names[entry["class"]]
        artifacts = {"prototype_words": words, "loss_history": history, "settings": asdict(settings)}
        return TrialOutcome(Candidate([template], verbalizer, head=head), dev, artifacts)


def _result(head: PrototypeHead, hidden: torch.Tensor, manual: torch.Tensor, labels: np.ndarray,
            template: Template) -> "EvalResult":
    """An EvalResult from cached states (same numbers as :meth:`PrototypeHead.evaluate`)."""
    from ...harness import EvalResult

    with torch.no_grad():
        class_lp = head.class_logprobs(hidden, manual)
    return EvalResult.from_class_logprobs(class_lp, np.asarray(labels), word_logprobs=np.zeros((len(class_lp), 0)),
                                          num_classes=head.num_classes, template=template.display())
