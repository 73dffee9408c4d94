"""The paper's write rule item by item, in batch order, for the price of one search.

`GaussianMemory.update_` looks every item of a batch up against the memory as it was
before the batch, so two items of one batch never see each other. Enrolling a gallery
wants the rule applied one image at a time, as the paper states it: an image's nearest
entry may be the one its predecessor in the batch just created or moved.
`update_in_order_` gives exactly that (the state the loop
`for i in range(b): memory.update_(mu[i:i+1], var[i:i+1], labels[i:i+1])` leaves:
keys bit for bit, labels, counts, ages and slots), while the expensive part, the search
over every entry, runs once for the whole batch:

1. One certified search finds each item's nearest entry before the batch (an item
   whose label no entry has when its turn comes creates one whatever its nearest, and
   skips it). An item thus knows a few entries and a bound: every entry it does not
   know, and the batch has not changed, is at least that far from it.
2. When an item's turn comes, its nearest entry is the nearer of (a) its nearest known
   entry the batch has not changed, provided that is within the bound, and (b) the
   nearest row the batch has changed (created or merged into) so far, both by the exact
   float64 divergence the search itself ranks by. A float64 GEMM of the lifted form,
   with a bound on its rounding, picks the few changed rows that can be nearest, and
   only those are scored exactly.
3. Items are applied in runs, each computed for all its items at once as if no item of
   the run changed the memory. A run ends before the first item whose decision an
   earlier item of the run may have changed (its nearest unchanged entry was merged
   into, a row it was compared with changed, a created or moved row may be nearer) or
   that merges into a row the run already changed; that item starts the next run.
   Items of distinct labels, each near its own entry, make up one run.
4. Where neither (a) nor (b) decides (a label's second example in one batch, whose
   nearest entry the first merged into and moved no nearer), the item searches again,
   together with every later item likely to (its nearest known entry is an earlier
   item's too): for the nearest entry beyond the ones it knows and the ones the batch
   changed, which raises its bound.
5. The changed rows, counts and ages are written back at once; merges are the memory's
   own, on a small copy of the changed rows.

The sequential loop's nearest entry is the exact argmin among every entry; only exact
ties of the divergence may resolve differently. Batches that need more slots than the
memory has empty run the loop itself, since a new entry would then evict an old one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gaussmem.gaussian import (
    clamp_variance,
    lift_entries,
    lift_queries,
    merge_running_,
    symmetric_kl_diag,
)
from gaussmem.memory import NOT_FOUND, GaussianMemory

#: Items per pass: each item is compared with every entry its pass changed before it,
#: which grows with the square of the pass; passes in sequence keep the rule's order.
_CHUNK = 1024
#: Unit roundoff of float64: the lifted form's error bound is a multiple of it.
_FLOAT64_ROUNDOFF = 2.0**-53


@torch.no_grad()
def update_in_order_(memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """`memory.update_` of each item in turn; see the module docstring.

    Args: `mu`, `var` `(batch, dim)`; `labels` `(batch,)` int64 >= 0.
    Returns: `(batch,)` the slot each item was written or merged into.
    """
    mu, var = memory._as_writes(mu, var)
    labels = memory._as_labels(labels, len(mu))
    if len(labels) > _CHUNK:
        return torch.cat([update_in_order_(memory, mu[start:start + _CHUNK],
                                           var[start:start + _CHUNK],
                                           labels[start:start + _CHUNK])
                          for start in range(0, len(labels), _CHUNK)])
    n_items = len(labels)
    empty_slots = (~memory.valid).nonzero()[:, 0]
    if n_items > len(empty_slots):
        return torch.cat([memory.update_(mu[i:i + 1], var[i:i + 1], labels[i:i + 1])
                          for i in range(n_items)]) if n_items else labels.clone()
    items = _Items(memory, mu, var, labels)
    batch = _ChangedRows(memory, n_items, empty_slots)
    start = 0
    while start < n_items:
        start = _apply_run_(items, batch, start)
    batch.write_back()
    return torch.tensor(batch.targets, dtype=torch.int64, device=labels.device)


class _Items:
    """The batch's items, and for each the entries before the batch it knows, with their
    exact divergences: every entry it does not know and the batch has not changed is at
    least `bound` from it."""

    def __init__(self, memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
                 labels: torch.Tensor) -> None:
        self.memory = memory
        self.mu, self.var, self.labels = mu, var, labels
        self.mu64, self.var64 = mu.double(), var.double()
        self.lifted = lift_queries(self.mu64, self.var64)
        self.lifted_norm = self.lifted.features.norm(dim=1)
        self.held = _held(memory, labels)
        n_items = len(labels)
        self.known_slots = torch.full((n_items, 0), NOT_FOUND, dtype=torch.int64,
                                      device=labels.device)
        self.known_divergence = self.mu64.new_zeros(n_items, 0)
        self.bound = self.mu64.new_full((n_items,), torch.inf)
        self.learn_(self.held.nonzero()[:, 0], self.known_slots.new_zeros(0))

    def learn_(self, rows: torch.Tensor, changed: torch.Tensor) -> None:
        """One certified search: for each of `rows`, its nearest entry beyond the ones it
        knows and the `changed` slots (changed ones stay changed, so the bound holds for
        every entry it may still need)."""
        excluded = torch.cat([self.known_slots[rows], changed.expand(len(rows), -1)], 1)
        found = self.memory._search_slots(
            (self.mu[rows], self.var[rows]), 1, certify=True,
            excluded=excluded if excluded.shape[1] else None)[:, 0]
        entry_mu, entry_var = self.memory.entries(found)
        divergence = symmetric_kl_diag(self.mu64[rows], self.var64[rows], entry_mu.double(),
                                       entry_var.double()).masked_fill(found == NOT_FOUND,
                                                                       torch.inf)
        slots = self.known_slots.new_full((len(self.labels), 1), NOT_FOUND)
        divergences = self.known_divergence.new_full((len(self.labels), 1), torch.inf)
        slots[rows, 0], divergences[rows, 0] = found, divergence
        self.known_slots = torch.cat([self.known_slots, slots], 1)
        self.known_divergence = torch.cat([self.known_divergence, divergences], 1)
        self.bound[rows] = divergence

    def nearest_unchanged(self, rows: torch.Tensor, changed: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(slot, divergence, unsure)` `(len(rows),)`: each row's nearest known entry
        that no slot of the `changed` mask `(capacity,)` names (NOT_FOUND, +inf where
        none); unsure where an entry it does not know may be nearer."""
        slots = self.known_slots[rows]
        divergence = self.known_divergence[rows].masked_fill(changed[slots.clamp_min(0)],
                                                             torch.inf)
        nearest, column = divergence.min(1)
        slot = slots.gather(1, column[:, None])[:, 0].masked_fill(nearest == torch.inf,
                                                                  NOT_FOUND)
        return slot, nearest, nearest > self.bound[rows]

    def divergence_range(self, rows: torch.Tensor, mu: torch.Tensor, var: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds `(len(rows), len(mu))` on the exact divergence from
        each row's item to each Gaussian `(mu, var)`, from one float64 GEMM of the lifted
        form.

        The GEMM's error is a few roundings per term of a sum bounded by the rows'
        norms (Cauchy-Schwarz) and offsets, as in the memory's float32 bound; the exact
        divergence, a sum of non-negative terms, carries a few more. The slack covers
        both with room, so a pair outside the range never needs its exact value.
        """
        entries = lift_entries(mu.double(), var.double())
        queries = self.lifted
        approximate = torch.addmm(entries.offsets, queries.features[rows],
                                  entries.features.T).add_(queries.offsets[rows, None])
        magnitude = (self.lifted_norm[rows, None] * entries.features.norm(dim=1)
                     + queries.offsets[rows, None].abs() + entries.offsets.abs()
                     + 2 * mu.shape[1])
        slack = (8 * mu.shape[1] + 32) * _FLOAT64_ROUNDOFF * magnitude
        return approximate - slack, approximate + slack


def _held(memory: GaussianMemory, labels: torch.Tensor) -> torch.Tensor:
    """`(batch,)` whether some entry has the item's label when its turn comes: one did
    before the batch, or an earlier item has it (it merged into one or created one)."""
    held = torch.isin(labels, memory.labels[memory.valid])
    earlier = torch.ones_like(held)
    earlier[_first_occurrences(labels.tolist())] = False
    return held | earlier


def _first_occurrences(labels: list[int]) -> list[int]:
    seen: set[int] = set()
    firsts = []
    for index, label in enumerate(labels):
        if label not in seen:
            seen.add(label)
            firsts.append(index)
    return firsts


class _Plan(NamedTuple):
    """What each item from a run's first on does if no item of the run changes the
    memory before it; every field `(items left,)` except `close`."""

    targets: torch.Tensor  # slot it merges into or creates; NOT_FOUND where unknown
    merges: torch.Tensor  # it merges (else it creates, unless unknown)
    unknown: torch.Tensor  # its nearest unchanged entry must be searched for first
    unchanged: torch.Tensor  # its nearest known unchanged entry
    limit: torch.Tensor  # a changed row this near, or nearer, may change its decision
    close: torch.Tensor  # (items left, changed rows): the rows it was compared with


def _apply_run_(items: _Items, batch: _ChangedRows, start: int) -> int:
    """Apply the items from `start` on to the first whose decision an earlier item of
    this run may have changed; returns that item (the number of items when none)."""
    plan = _plan(items, batch, start)
    if plan.unknown[0]:
        items.learn_(_needing_search(items, plan, start), batch.changed_slots())
        plan = _plan(items, batch, start)
    length = _first_clash(items, plan, start)
    keys = batch.keys_after(items, plan, start, length)
    length = _first_conflict(items, batch, plan, keys, start, length)
    batch.commit_(items, plan, keys, start, length)
    return start + length


def _plan(items: _Items, batch: _ChangedRows, start: int) -> _Plan:
    """`_Plan` of the items from `start` on, from the batch's changes so far."""
    rows = torch.arange(start, len(items.labels), device=items.labels.device)
    unchanged, unchanged_divergence, unsure = items.nearest_unchanged(rows, batch.changed)
    # A changed row must be nearer than this to win; where the item is unsure, every
    # entry it does not know is at least `bound` away.
    threshold = torch.minimum(unchanged_divergence, items.bound[rows])
    changed_divergence, position, close = _nearest_changed(items, batch, rows, threshold)
    from_changed = changed_divergence < threshold
    held = items.held[rows]
    unknown = held & unsure & ~from_changed
    nearest = torch.where(from_changed, batch.slot_of[position], unchanged)
    nearest_label = torch.where(from_changed, batch.label_of[position],
                                items.memory.labels[unchanged.clamp_min(0)])
    merges = (held & ~unknown & (nearest != NOT_FOUND)
              & (nearest_label == items.labels[rows]))
    creates = ~merges & ~unknown
    created = batch.empty_slots[(batch.n_created + creates.cumsum(0) - 1).clamp_min(0)]
    targets = torch.where(merges, nearest, torch.where(creates, created, NOT_FOUND))
    return _Plan(targets, merges, unknown, unchanged,
                 torch.minimum(threshold, changed_divergence), close)


def _nearest_changed(items: _Items, batch: _ChangedRows, rows: torch.Tensor,
                     threshold: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, `(divergence, position)` of its nearest changed row where that exact
    divergence is below `threshold` (else a divergence >= `threshold`, +inf where no row
    came close), and the mask `(len(rows), changed rows)` of the rows scored exactly:
    every one that may be the nearest or below `threshold`."""
    n_rows = len(rows)
    if batch.count == 0:
        return (items.mu64.new_full((n_rows,), torch.inf), rows.new_zeros(n_rows),
                torch.zeros(n_rows, 0, dtype=torch.bool, device=rows.device))
    lower, upper = items.divergence_range(rows, batch.means[: batch.count],
                                          batch.variances[: batch.count])
    close = lower <= torch.minimum(threshold, upper.min(1).values)[:, None]
    pair_row, pair_position = close.nonzero(as_tuple=True)
    exact = torch.full_like(lower, torch.inf)
    item = rows[pair_row]
    exact[pair_row, pair_position] = symmetric_kl_diag(
        items.mu64[item], items.var64[item], batch.means[pair_position].double(),
        batch.variances[pair_position].double())
    divergence, position = exact.min(1)
    return divergence, position, close


def _needing_search(items: _Items, plan: _Plan, start: int) -> torch.Tensor:
    """Items from `start` on to search beyond what they know: those that must (unknown)
    and those whose nearest known unchanged entry an earlier one shares, which that one
    will likely have merged into by their turn."""
    needing = []
    seen: set[int] = set()
    for offset, (slot, held, unknown) in enumerate(zip(
            plan.unchanged.tolist(), items.held[start:].tolist(), plan.unknown.tolist(),
            strict=True)):
        if held and (unknown or slot in seen):
            needing.append(start + offset)
        if held and slot != NOT_FOUND:
            seen.add(slot)
    return torch.tensor(needing, dtype=torch.int64, device=items.labels.device)


def _first_clash(items: _Items, plan: _Plan, start: int) -> int:
    """Items from `start` on that the plan alone shows may form a run: up to the first
    that is unknown, merges into a slot an earlier one of them targets (its key assumes
    one change per row), or whose nearest unchanged entry an earlier one targets. Only
    items whose label is held compare entries, so only they can clash."""
    targeted: set[int] = set()
    for offset, (target, unchanged, merges, unknown, held) in enumerate(zip(
            plan.targets.tolist(), plan.unchanged.tolist(), plan.merges.tolist(),
            plan.unknown.tolist(), items.held[start:].tolist(), strict=True)):
        clashes = unchanged in targeted or (merges and target in targeted)
        if unknown or (held and clashes):
            return offset
        targeted.add(target)
    return len(plan.targets)


class _RunKeys(NamedTuple):
    """The key each item of a run leaves in its target row, as if no earlier item of
    the run changed that row, with the row's position and count after it."""

    means: torch.Tensor
    variances: torch.Tensor
    counts: torch.Tensor
    positions: torch.Tensor


def _first_conflict(items: _Items, batch: _ChangedRows, plan: _Plan, keys: _RunKeys,
                    start: int, length: int) -> int:
    """The first of the run's `length` items (counted from `start`) whose planned
    decision an earlier item of the run may change: a row it was compared with moved,
    or a row one created or moved may be as near as its planned nearest; `length` when
    none."""
    rows = torch.arange(start, start + length, device=items.labels.device)
    lower, _ = items.divergence_range(rows, keys.means, keys.variances)
    nearer = lower <= plan.limit[:length, None]
    moved = torch.zeros_like(nearer)
    if batch.count:
        moved = plan.close[:length][:, keys.positions.clamp(max=batch.count - 1)]
        moved &= (keys.positions < batch.count)[None]
    earlier = torch.ones_like(nearer).tril_(-1)
    conflict = (nearer | moved) & earlier & items.held[rows, None]
    conflicting = conflict.any(1).nonzero()
    return int(conflicting[0, 0]) if len(conflicting) else length


class _ChangedRows:
    """The batch's working copy of the entries it created or merged into, in the order
    it first changed them, and the item that changed each one last."""

    def __init__(self, memory: GaussianMemory, n_items: int,
                 empty_slots: torch.Tensor) -> None:
        self.memory = memory
        self.empty_slots = empty_slots
        self.means = memory.means.new_zeros(n_items, memory.dim)
        self.variances = memory.variances.new_ones(n_items, memory.dim)
        self.counts = memory.counts.new_zeros(n_items)
        self.label_of = memory.labels.new_full((n_items,), NOT_FOUND)
        self.slot_of = memory.labels.new_full((n_items,), NOT_FOUND)
        self.last_item = memory.labels.new_zeros(n_items)
        self.changed = torch.zeros_like(memory.valid)
        self.position: dict[int, int] = {}
        self.targets: list[int] = []
        self.count = 0
        self.n_created = 0
        self.n_items = n_items

    def changed_slots(self) -> torch.Tensor:
        """`(changed rows,)` the slots the batch changed so far."""
        return self.slot_of[: self.count]

    def keys_after(self, items: _Items, plan: _Plan, start: int, length: int) -> _RunKeys:
        """`_RunKeys` of the run's first `length` planned items: a created entry's key
        is the item's, a merge is the memory's own on a copy of the target row."""
        positions, next_position = [], self.count
        for slot in plan.targets[:length].tolist():
            if slot in self.position:
                positions.append(self.position[slot])
            else:
                positions.append(next_position)
                next_position += 1
        items_mu = items.mu[start:start + length]
        items_var = items.var[start:start + length]
        means, variances = items_mu.clone(), clamp_variance(items_var)
        counts = torch.ones_like(self.counts[:length])
        merging = plan.merges[:length].nonzero()[:, 0]
        if len(merging):
            row_means, row_variances, row_counts = self._rows(plan.targets[merging])
            merge_running_(row_means, row_variances, row_counts,
                           torch.arange(len(merging), device=merging.device),
                           items_mu[merging], items_var[merging])
            means[merging], variances[merging] = row_means, row_variances
            counts[merging] = row_counts + 1
        return _RunKeys(means, variances, counts,
                        torch.tensor(positions, dtype=torch.int64, device=means.device))

    def _rows(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copies of the current means, variances and counts at `slots`: the working
        copy's where the batch changed the slot, the memory's elsewhere."""
        memory = self.memory
        slot_list = slots.tolist()
        changed = torch.tensor([slot in self.position for slot in slot_list],
                               device=slots.device)
        position = torch.tensor([self.position.get(slot, 0) for slot in slot_list],
                                dtype=torch.int64, device=slots.device)
        return (torch.where(changed[:, None], self.means[position], memory.means[slots]),
                torch.where(changed[:, None], self.variances[position],
                            memory.variances[slots]),
                torch.where(changed, self.counts[position], memory.counts[slots]))

    def commit_(self, items: _Items, plan: _Plan, keys: _RunKeys, start: int,
                length: int) -> None:
        """Apply the run's first `length` items, whose keys `keys_after` computed."""
        targets = plan.targets[:length]
        for slot in targets.tolist():
            if slot not in self.position:
                self.position[slot] = self.count
                self.count += 1
        positions = keys.positions[:length]
        self.means[positions] = keys.means[:length]
        self.variances[positions] = keys.variances[:length]
        self.counts[positions] = keys.counts[:length]
        self.label_of[positions] = items.labels[start:start + length]
        self.slot_of[positions] = targets
        self.last_item[positions] = torch.arange(start, start + length,
                                                 device=positions.device)
        self.changed[targets] = True
        self.targets.extend(targets.tolist())
        self.n_created += int((~plan.merges[:length]).sum())

    def write_back(self) -> None:
        """Write the changed rows; ages as after one `update_` call per item (every slot
        ages by the batch size, a changed one counts from the last item that changed it)."""
        memory = self.memory
        memory.ages += self.n_items
        if not self.count:
            return
        slots = self.slot_of[: self.count]
        rows = slice(0, self.count)
        memory.means[slots] = self.means[rows]
        memory.variances[slots] = self.variances[rows]
        memory.counts[slots] = self.counts[rows]
        memory.labels[slots] = self.label_of[rows]
        memory.valid[slots] = True
        memory.ages[slots] = self.n_items - 1 - self.last_item[rows]
        memory._keys_changed_(slots)
