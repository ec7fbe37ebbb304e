"""Training a ProtoVerb head (k-means initialisation, the two contrastive losses), the words each
prototype stands for, and unsupervised clustering of mask states."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...errors import AutoPromptError
from ...models.vocab import vocabulary_words
from ...prompts import Template
from .head import ProtoSettings, PrototypeHead

if TYPE_CHECKING:
    from ...data import Split
    from ...harness import Harness

logger = logging.getLogger(__name__)


def _kmeans(x: np.ndarray, k: int, seed: int, spherical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means: ``(centroids (k, d), assignment (n,))``."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    km: Any = faiss.Kmeans(
        x.shape[1],
        k,
        niter=25,
        seed=seed,
        spherical=spherical,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=100000,
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0]


def _contrastive_losses(
    head: PrototypeHead, hidden: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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


def _label_tensor(labels: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    # Not np.array(tensor): torch's __array__ lacks numpy 2's copy keyword (a DeprecationWarning).
    if isinstance(labels, torch.Tensor):
        return labels.detach().long().cpu()
    return torch.as_tensor(list(labels), dtype=torch.long)


def train_prototypes(
    hidden: torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int,
    settings: ProtoSettings,
    *,
    manual: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[PrototypeHead, list[dict[str, float]]]:
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
                raise AutoPromptError(
                    f"ProtoVerb: class {c} has {n} training examples, fewer than "
                    f"prototypes_per_class={k} (set on_small_class: reduce to use {n})"
                )
            logger.warning("ProtoVerb: class %d has %d examples < %d prototypes; using %d", c, n, k, n)
        per_class.append(min(n, k))
    proto_labels = [c for c, m in enumerate(per_class) for _ in range(m)]
    head = PrototypeHead(
        hidden.shape[1],
        settings.proj_dim,
        proto_labels,
        num_classes,
        temperature=settings.temperature,
        inference=settings.inference,
        manual_weight=settings.manual_weight,
    )
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
            history.append(
                {
                    "step": step,
                    "loss": float(loss.detach()),
                    "proto": float(proto_loss.detach()),
                    "instance": float(inst_loss.detach()),
                }
            )
    head.eval()
    head.fit_statistics(hidden, manual)
    return head, history


def _word_index(harness: Harness, projection: nn.Linear | None) -> tuple[Any, list[int]]:
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


def _words(harness: Harness, index: Any, ids: list[int], queries: np.ndarray, k: int) -> list[list[str]]:
    from ...models.vocab import token_strings, word_of

    strings = token_strings(harness.tokenizer)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return [[word_of(strings[ids[j]])[0] for j in row if j >= 0] for row in found]


def prototype_words(
    harness: Harness,
    head: PrototypeHead,
    hidden: torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    k: int = 10,
) -> list[dict[str, Any]]:
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
    return [
        {
            "prototype": p,
            "class": int(head.prototype_labels[p]),
            "members": sizes[p],
            "nearest_words": near[p],
            "distinctive_words": predicted[p] if sizes[p] else [],
        }
        for p in range(len(protos))
    ]


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


def cluster_mask_embeddings(
    harness: Harness,
    split: Split,
    template: Template | str,
    k: int,
    *,
    seed: int = 0,
    top_words: int = 10,
    hidden: torch.Tensor | None = None,
) -> Clustering:
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
    means = torch.stack(
        [hidden[torch.from_numpy(assign == c)].mean(0) if (assign == c).any() else hidden.mean(0) for c in range(k)]
    )
    index, ids = _word_index(harness, None)
    words = _words(harness, index, ids, (means - hidden.mean(0)).numpy(), top_words)
    labels = np.array([e.label for e in split])
    counts = None
    if (labels >= 0).all():
        n_labels = int(labels.max()) + 1
        counts = [np.bincount(labels[assign == c], minlength=n_labels).tolist() for c in range(k)]
    return Clustering(assign, [int((assign == c).sum()) for c in range(k)], words, counts)
