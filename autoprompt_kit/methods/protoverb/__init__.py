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

from .config import ProtoVerbConfig
from .head import INFERENCE, SMALL_CLASS, ProtoSettings, PrototypeHead
from .searcher import ProtoVerbSearcher
from .training import Clustering, cluster_mask_embeddings, prototype_words, train_prototypes

__all__ = [
    "INFERENCE",
    "SMALL_CLASS",
    "Clustering",
    "ProtoSettings",
    "ProtoVerbConfig",
    "ProtoVerbSearcher",
    "PrototypeHead",
    "cluster_mask_embeddings",
    "prototype_words",
    "train_prototypes",
]
