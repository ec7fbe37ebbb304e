"""The scoring engine: rows → batches → shared-prefix passes → forward → gather.

Plain functions over a :class:`Scorer` (the harness, or anything with its model and settings),
used by :class:`~.harness.Harness` and by the passes built on it (:mod:`.training`,
:mod:`.gradients`, :mod:`.decoding`). The package-internal API:

* :func:`build_rows` — tokenised rows of templates × example blocks (through :class:`.encoding.PromptCache`);
* :func:`batches` — length-bucketed batches, or item-ordered ones that never split an item;
* :func:`plan` — every index tensor of one batch; :func:`forward` — one padded pass over it;
  :func:`target_values` — each target's log-prob in a pass's output;
* :func:`run` — all of the above over rows, scattered into ``(items, words)`` scores, with rows of a
  causal LM that share a token prefix run through its key/value cache (:func:`passes`);
* :func:`mask_logprobs` — full-vocabulary log-probabilities at the mask;
* :func:`pad`, :func:`put_soft_embeddings`, :func:`cache_key`, :func:`label_subset`.

Nothing here imports the harness: it reads what it needs off the :class:`Scorer` it is given.
"""

from __future__ import annotations

import array
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..data import Example
from ..errors import AutoPromptError
from ..prompts.template import Template
from ..prompts.verbalizer import Verbalizer
from . import precision as precisions
from ._output import OutputLayer, gathering_head
from .encoding import PromptCache, PromptEncoder, Row
from .prefix import PrefixGroup, group_by_prefix, suffix_cache


class Scorer(OutputLayer, Protocol):
    """What the engine reads off a harness (:class:`~.harness.Harness` is one); settings are read
    at every call, so a caller may change them between calls."""

    kind: str
    pad_id: int
    batch_size: int
    progress: bool
    encoder: PromptEncoder
    prompt_cache: PromptCache
    cache_items: int
    stream_items: int
    input_hooks: list[Callable[[dict[str, Any], list[Row]], None]]
    shared_prefix: bool
    shared_prefix_min: int
    suffix_batch_factor: int


@dataclass
class Plan:
    """Index tensors of one batch: inputs, read positions and where each target's score goes."""

    rows: list[Row]
    ids: torch.Tensor  # (B, T) token ids (after each row's cached prefix, if any)
    mask: torch.Tensor  # (B, T)
    positions: torch.Tensor  # (B, K) read positions in ``ids``
    hidden_k: torch.Tensor  # (B,) which of the K positions is the hidden state's
    target_batch: torch.Tensor  # (n,) per target: row in the batch,
    target_k: torch.Tensor  # … read position index,
    target_column: torch.Tensor  # … output column (token id, or its index in the label subset),
    target_item: torch.Tensor  # … item and word it is added to
    target_word: torch.Tensor
    items: torch.Tensor  # (B,) item of each row


@dataclass
class PrefixPass:
    """Prefix groups run together: their prefixes once, then every row's remaining tokens."""

    groups: list[PrefixGroup]


@dataclass
class PrefixCache:
    """What a suffix batch continues: a key/value cache (see :func:`.prefix.suffix_cache`) with each
    row's prefix at the right end of ``width`` slots, which slots are real, and each prefix's length."""

    cache: Any
    mask: torch.Tensor  # (B, width)
    lengths: torch.Tensor  # (B,)


def long_tensor(values: list[int]) -> torch.Tensor:
    """A 1-D int64 tensor from a list of ints, through a typed buffer (3× faster than ``torch.tensor``)."""
    if not values:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(array.array("q", values), dtype=torch.long)


def cache_key(module: nn.Module) -> str:
    """The keyword ``module.forward`` takes a key/value cache under."""
    # transformers 5.x renames ``past_key_values`` to ``cache``; older versions know only the former.
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def build_rows(
    h: Scorer, templates: Sequence[Template], blocks: Sequence[Sequence[Example]], verbalizer: Verbalizer | None
) -> tuple[list[Row], list[int]]:
    """The rows of ``templates[i]`` × ``blocks[i]`` (items numbered across blocks) and each block's size."""
    rows: list[Row] = []
    sizes = []
    item = 0
    encoder = h.encoder
    reserve = encoder.reserve(verbalizer.flat_words) if verbalizer is not None else 1
    # Label-word ids looked up once per call for each spacing before the mask, not per example.
    words_by_space: dict[bool, list[tuple[int, ...]]] = {}
    for template, block in zip(templates, blocks):
        encoded = h.prompt_cache.encode(encoder, template, block, reserve, h.cache_items)
        for enc in encoded:
            words = None
            if verbalizer is not None:
                words = words_by_space.get(enc.space_before_mask)
                if words is None:
                    words = [encoder.word_ids(w, enc.space_before_mask) for w in verbalizer.flat_words]
                    words_by_space[enc.space_before_mask] = words
            rows.extend(encoder.rows(item, enc, words))
            item += 1
        sizes.append(len(encoded))
    return rows, sizes


def label_subset(rows: list[Row]) -> list[int] | None:
    """Token ids to project onto, when each item is read at exactly one position in one row."""
    items = set()
    tokens: set[int] = set()
    for row in rows:
        if row.item in items or len({t[0] for t in row.targets}) > 1:
            return None
        items.add(row.item)
        tokens.update(t[1] for t in row.targets)
    return sorted(tokens)


def batches(rows: list[Row], batch_size: int, *, sort: bool) -> Iterator[list[Row]]:
    """Length-bucketed batches (``sort``), or batches in item order that never split an item."""
    if sort:
        ordered = sorted(rows, key=lambda r: r.length)
        for start in range(0, len(ordered), batch_size):
            yield ordered[start : start + batch_size]
        return
    batch: list[Row] = []
    for row in rows:
        if len(batch) >= batch_size and row.item != batch[-1].item:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def passes(h: Scorer, rows: list[Row], sort: bool, shared: bool) -> list[list[Row] | PrefixPass]:
    """The forward passes that cover ``rows``: whole-row batches and, with ``shared``, prefix passes.

    Prefix groups are length-bucketed like rows. A pass takes groups (shortest prefixes first)
    until their rows fill two suffix batches or it holds ``4 * batch_size`` prefixes; it runs the
    prefixes ``batch_size`` at a time, then the remaining tokens of all their rows against the
    cache. Groups are used only when they skip at least 1/8 of the rows' tokens.
    """
    groups, rest = group_by_prefix(rows, h.shared_prefix_min) if shared else ([], rows)
    # Each prefix pass adds forward calls: worth it only when the groups skip a good share of
    # the work (a few reviews that happen to start alike do not pay for it on a small model).
    if groups and 8 * sum((len(g.rows) - 1) * g.length for g in groups) < sum(len(r.input_ids) for r in rows):
        groups, rest = [], rows
    out: list[list[Row] | PrefixPass] = list(batches(rest, h.batch_size, sort=sort))
    groups.sort(key=lambda g: g.length)
    rows_wanted = 2 * h.suffix_batch_factor * h.batch_size
    current: list[PrefixGroup] = []
    for group in groups:
        current.append(group)
        if sum(len(g.rows) for g in current) >= rows_wanted or len(current) >= 4 * h.batch_size:
            out.append(PrefixPass(current))
            current = []
    if current:
        out.append(PrefixPass(current))
    return out


def use_shared_prefix(h: Scorer, soft_embeddings: torch.Tensor | None) -> bool:
    """Whether a pass may run shared prefixes once (see :attr:`Harness.shared_prefix`)."""
    # Gradients (training, trigger gradients), input hooks (prefix deltas, S3Delta gates) and
    # trainable soft tokens edit what the prefix pass would see: those keep the whole-row path.
    return (
        h.shared_prefix
        and h.kind == "causal"
        and not torch.is_grad_enabled()
        and soft_embeddings is None
        and not h.input_hooks
    )


def run(
    h: Scorer,
    rows: list[Row],
    n_items: int,
    n_words: int,
    subset: list[int] | None,
    *,
    hidden: bool,
    sort: bool,
    soft_embeddings: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward all rows; scatter target log-probs into ``(n_items, n_words)``.

    Without gradients, rows of a causal LM that share a long token prefix are run through
    the prefix cache (see :attr:`Harness.shared_prefix`). Scores stay on the device; nothing is
    synchronised per batch. (Trigger gradients run their own pass: :mod:`.gradients`.)
    """
    word_lp = torch.zeros(n_items, n_words, device=h.device)
    hid: torch.Tensor | None = None
    col = {tok: i for i, tok in enumerate(subset)} if subset is not None else None
    subset_t = torch.tensor(subset, device=h.device) if subset is not None else None
    todo = passes(h, rows, sort, use_shared_prefix(h, soft_embeddings))
    bar = None
    if h.progress and len(todo) > 8 and not torch.is_grad_enabled():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="scoring", unit="batch", leave=False)
    for one in todo:
        outputs: Iterable[tuple[Plan, torch.Tensor, torch.Tensor, Any]]
        if isinstance(one, PrefixPass):
            outputs = prefix_forwards(h, one, subset_t, col)
        else:
            planned = plan(h, one, col)
            outputs = [(planned, *forward(h, planned, subset_t, soft_embeddings=soft_embeddings))]
        for planned, logp, hs, _ in outputs:
            if planned.target_batch.numel():
                values, index = target_values(planned, logp)
                word_lp = word_lp.index_put(index, values, accumulate=True)
            if hidden and hs is not None:
                if hid is None:
                    hid = torch.zeros(n_items, hs.shape[-1], device=h.device, dtype=hs.dtype)
                # An item may span several rows; they share the mask position, so any row will do.
                # In place when nothing is differentiated: a copy per batch would cost O(n²) on big splits.
                index_h = (planned.items,)
                hid = hid.index_put(index_h, hs) if torch.is_grad_enabled() else hid.index_put_(index_h, hs)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return word_lp, hid


def prefix_forwards(
    h: Scorer, one: PrefixPass, subset: torch.Tensor | None, col: dict[int, int] | None
) -> Iterator[tuple[Plan, torch.Tensor, torch.Tensor, None]]:
    """Run the prefixes of ``one`` once, then its rows' remaining tokens against their cache.

    Prefixes of different lengths are run right-padded (a real token never attends to a later
    pad, so their states are exact) and then moved to the right end of the cache, pads first:
    every suffix then starts at the same cache index, and cache-index distances equal position
    distances, which is what causal and sliding-window masks are computed from. The pads are
    masked out and every row's positions are explicit.
    """
    dev = h.device
    size = h.batch_size
    groups = one.groups
    lengths = torch.tensor([g.length for g in groups], device=dev)
    width = max(g.length for g in groups)
    shift = width - lengths
    parts = []
    for i in range(0, len(groups), size):
        part: list[Any] = prefix_states(h, pad(h, [g.prefix for g in groups[i : i + size]])[0])
        if any(g.length != width for g in groups[i : i + size]):
            # Row b's slot j takes its prefix token j - shift[b]: real tokens at the right end.
            source = (torch.arange(width, device=dev)[None, :] - shift[i : i + size, None]).clamp_min(0)
            part = [
                tuple(x.gather(2, source[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3])) for x in kv)
                for kv in part
            ]
        parts.append(part)
    states = (
        parts[0]
        if len(parts) == 1
        else [
            (torch.cat([p[layer][0] for p in parts]), torch.cat([p[layer][1] for p in parts]))
            for layer in range(len(parts[0]))
        ]
    )
    suffix = [len(row.input_ids) - group.length for group in groups for row in group.rows]
    members = sorted(
        zip(suffix, ((g, row) for g, group in enumerate(groups) for row in group.rows)), key=lambda m: m[0]
    )
    # Suffixes are short: a batch holds ``suffix_batch_factor`` batches' worth of rows, within
    # ``batch_size * 512`` cached tokens (the cache copy every row carries bounds memory).
    longest = width + members[-1][0]
    per_batch = max(size, min(h.suffix_batch_factor * size, size * 512 // longest))
    for chunk in suffix_chunks(members, per_batch):
        which = torch.tensor([g for _, (g, _) in chunk], device=dev)
        planned = plan(h, [row for _, (_, row) in chunk], col, offsets=[groups[g].length for _, (g, _) in chunk])
        cache = suffix_cache(states, None if len(groups) == 1 else which, len(chunk), planned.ids.shape[1])
        valid = torch.arange(width, device=dev)[None, :] >= shift[which][:, None]
        logp, hs, _ = forward(h, planned, subset, cache=PrefixCache(cache, valid.long(), lengths[which]))
        yield planned, logp, hs, None


def suffix_chunks(members: list[tuple[int, Any]], per_batch: int) -> Iterator[list[tuple[int, Any]]]:
    """Batches of ``(suffix length, member)`` sorted by length: full, or cut where the length
    grows once half full (padding a short suffix to a longer one costs as much as running it)."""
    chunk: list[tuple[int, Any]] = []
    for member in members:
        if chunk and (len(chunk) >= per_batch or (member[0] > chunk[-1][0] and 2 * len(chunk) >= per_batch)):
            yield chunk
            chunk = []
        chunk.append(member)
    if chunk:
        yield chunk


def prefix_states(h: Scorer, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer key/value states ``(B, heads, L, d)`` of right-padded prefixes (pads after each)."""
    from transformers import DynamicCache

    body = h.model.base_model
    # A cache without the model's config keeps every key in every layer (no sliding-window
    # trimming), so the suffix pass's masks, sliding windows included, are built from absolute
    # positions exactly as for a whole row.
    cache = DynamicCache()
    with precisions.autocast(h.precision, h.device):
        out = body(input_ids=ids, use_cache=True, **{cache_key(body): cache})
    filled = out.get("cache")
    filled = filled if filled is not None else out.past_key_values
    return [(k, v) for k, v, *_ in filled]


def _positions(row: Row) -> list[int]:
    return sorted({row.hidden_position, *(t[0] for t in row.targets)})


def plan(h: Scorer, batch: list[Row], col: dict[int, int] | None, offsets: Sequence[int] | None = None) -> Plan:
    """Every index tensor one batch needs, built in one pass over its rows and moved in one copy.

    ``col`` maps a target token to its output column (when the pass projects onto a label subset).
    ``offsets[b]`` leading tokens of row ``b`` are already in a prefix cache: the batch holds
    the rest, and its read positions count from there.
    """
    n = len(batch)
    offsets = offsets if offsets is not None else [0] * n
    width = max(len(r.input_ids) - o for r, o in zip(batch, offsets))
    positions = [_positions(r) for r in batch]
    k = max(len(p) for p in positions)
    pad_id = h.pad_id
    # One flat buffer: ids (n·width) | positions (n·k) | hidden index, item, length (n each) | targets (5 per target)
    ids: list[int] = []
    pos: list[int] = []
    tail: list[int] = []
    targets: list[int] = []
    for b, (row, p, off) in enumerate(zip(batch, positions, offsets)):
        tokens = row.input_ids[off:] if off else row.input_ids
        ids += tokens
        ids += [pad_id] * (width - len(tokens))
        if len(p) == 1:  # the common case: one read position, where the hidden state is read too
            pos += [p[0] - off] * k
            tail += (0, row.item, len(tokens))
            for _, tok, w in row.targets:
                targets += (b, 0, col[tok] if col is not None else tok, row.item, w)
            continue
        where = {q: i for i, q in enumerate(p)}
        pos += [q - off for q in p] + [p[0] - off] * (k - len(p))
        tail += (where[row.hidden_position], row.item, len(tokens))
        for q, tok, w in row.targets:
            targets += (b, where[q], col[tok] if col is not None else tok, row.item, w)
    flat = long_tensor(ids + pos + tail + targets).to(h.device)
    ids_t = flat[: n * width].view(n, width)
    pos_t = flat[n * width : n * (width + k)].view(n, k)
    tail_t = flat[n * (width + k) : n * (width + k + 3)].view(n, 3)
    t = flat[n * (width + k + 3) :].view(-1, 5).T.contiguous()  # each row is an index tensor
    mask = (torch.arange(width, device=h.device)[None, :] < tail_t[:, 2:3]).long()
    return Plan(batch, ids_t, mask, pos_t, tail_t[:, 0], t[0], t[1], t[2], t[3], t[4], tail_t[:, 1])


def target_values(plan: Plan, logp: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Each target's log-prob in ``logp`` (float32) and the ``(item, word)`` index it is added at."""
    return logp[plan.target_batch, plan.target_k, plan.target_column].float(), (plan.target_item, plan.target_word)


def forward(
    h: Scorer,
    plan: Plan,
    subset: torch.Tensor | None,
    *,
    full_at_hidden: bool = False,
    soft_embeddings: torch.Tensor | None = None,
    embeds_grad: bool = False,
    cache: PrefixCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One padded forward pass over a planned batch.

    Returns log-probs ``(B, K, V or |subset|)`` at each row's read positions (``(B, V)`` at the
    hidden position with ``full_at_hidden``), the output layer's input at each row's hidden
    position ``(B, d)``, and the input embeddings when gradients w.r.t. them were asked for
    (``embeds_grad``). With ``cache`` (causal LMs) the rows continue the cached prefixes.
    """
    dev = h.device
    if h.precision == "int8" and torch.is_grad_enabled():
        raise AutoPromptError("an int8 harness scores only: training and gradients need --precision fp32 or bf16")
    batch = plan.rows
    ids, mask = plan.ids, plan.mask
    kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": False}
    if cache is not None:
        kwargs["attention_mask"] = torch.cat([cache.mask, mask], dim=1)
        # Pads after a row's last token keep its last position: numbered on, a short suffix behind
        # a long prefix would run past an absolute position table (GPT-2) that the row itself fits.
        last = cache.lengths + mask.sum(1).clamp_min(1) - 1
        positions = cache.lengths[:, None] + torch.arange(ids.shape[1], device=dev)[None, :]
        kwargs["position_ids"] = torch.minimum(positions, last[:, None])
        kwargs[cache_key(h.model)] = cache.cache
        kwargs["use_cache"] = True
    if h.kind == "seq2seq":
        dec, dmask = pad(h, [r.decoder_input_ids or [] for r in batch])
        kwargs["decoder_input_ids"] = dec
        kwargs["decoder_attention_mask"] = dmask
    embeds = None
    has_soft = soft_embeddings is not None and any(r.soft_positions for r in batch)
    if embeds_grad or has_soft:
        embeds = h.model.get_input_embeddings()(ids)
        if has_soft:
            embeds = put_soft_embeddings(embeds, batch, soft_embeddings)  # type: ignore[arg-type]
        if embeds_grad:
            embeds = embeds.detach().requires_grad_(True)
        kwargs["inputs_embeds"] = embeds
    else:
        kwargs["input_ids"] = ids
    captured: dict[str, torch.Tensor] = {}
    rows_only = None if full_at_hidden else subset
    for hook in h.input_hooks:
        hook(kwargs, batch)
    with gathering_head(h.head, plan.positions, rows_only, captured), precisions.autocast(h.precision, h.device):
        logits = h.model(**kwargs).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.arange(len(batch), device=dev)
    hidden = captured["x"][rows, plan.hidden_k]
    if full_at_hidden:
        logp = logp[rows, plan.hidden_k]
    return logp, hidden, embeds


def mask_logprobs(h: Scorer, examples: list[Example], template: Template, reduce: str | None) -> torch.Tensor:
    """Full-vocabulary log-probabilities of the first token at the mask: the log of their mean
    ``(V,)`` with ``reduce="mean"`` (never holding ``N × V`` values), else ``(N, V)`` on the CPU."""
    rows, sizes = build_rows(h, [template], [examples], None)
    total: torch.Tensor | None = None
    per_row = []
    with torch.inference_mode():
        for batch in batches(rows, h.batch_size, sort=True):
            logp, _, _ = forward(h, plan(h, batch, None), None, full_at_hidden=True)
            if reduce == "mean":
                chunk = logp.exp().sum(dim=0)
                total = chunk if total is None else total + chunk
            else:
                per_row.append((batch, logp))
    if reduce == "mean":
        assert total is not None
        return (total / sizes[0]).clamp_min(1e-30).log()
    out = torch.empty(sizes[0], h.head.weight.shape[0])
    for batch, logp in per_row:
        out[[r.item for r in batch]] = logp.float().cpu()
    return out


def pad(h: Scorer, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(ids, attention_mask)`` on the harness device."""
    lengths = [len(seq) for seq in sequences]
    width = max(lengths)
    flat: list[int] = []
    for seq in sequences:
        flat += seq
        flat += [h.pad_id] * (width - len(seq))
    ids = long_tensor(flat).view(len(sequences), width)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.to(h.device), mask.to(h.device)


def put_soft_embeddings(embeds: torch.Tensor, batch: list[Row], soft: torch.Tensor) -> torch.Tensor:
    """Replace soft-token embeddings with the trainable ones (same order in every row)."""
    embeds = embeds.clone()
    for b, row in enumerate(batch):
        if row.soft_positions:
            if len(row.soft_positions) != soft.shape[0]:
                raise AutoPromptError(
                    f"the template has {len(row.soft_positions)} soft tokens, soft_embeddings has {soft.shape[0]}"
                )
            embeds[b, row.soft_positions] = soft.to(embeds.device, embeds.dtype)
    return embeds
