"""The paper's write rule item by item, in batch order, for the price of one search.

`GaussianMemory.update_` looks every item of a batch up against the memory as it was
before the batch, so two items of one batch never see each other. Enrolling a gallery
wants the rule applied one image at a time, as the paper states it: an image's nearest
entry may be the one its predecessor in the batch just created or moved.
`update_in_order_` gives exactly that (the state the loop
`for i in range(b): memory.update_(mu[i:i+1], var[i:i+1], labels[i:i+1])` leaves:
keys bit for bit, labels, counts, ages and slots), while the expensive part, the search
over every entry, runs once for the whole batch:

1. One certified search finds each item's nearest entry before the batch
   (items of a label the memory does not hold yet skip it when they are the label's
   first: they create an entry whatever their nearest).
2. A loop in batch order takes, for each item, the nearest of (a) that entry, or where
   an earlier item of the batch changed it, the nearest unchanged entry by brute force,
   and (b) the entries the batch changed so far, by the exact float64 divergence the
   search itself ranks by, then merges into it
   (same label) or creates an entry in the lowest empty slot, on a small copy of the
   changed rows, with the memory's own merge.
3. The changed rows, counts and ages are written back at once.

The sequential loop's nearest entry is the exact argmin among every entry; only exact
ties of the divergence may resolve differently. Batches that need more slots than the
memory has empty run the loop itself, since a new entry would then evict an old one.
"""

from __future__ import annotations

import torch

from gaussmem.gaussian import clamp_variance, merge_running_, symmetric_kl_diag
from gaussmem.memory import NOT_FOUND, GaussianMemory

#: Nearest entries per item found before the batch, certified exact; an item whose every
#: candidate was changed by earlier items of the batch (a label's second example in one
#: batch) is compared with every unchanged entry instead. One: certifying the first few
#: made the search re-run in float64 whenever near-duplicate entries crowd the gallery.
_CANDIDATES = 1
#: Items per pass: each item is compared with every entry its pass changed before it,
#: which grows with the square of the pass; passes in sequence keep the rule's order.
_CHUNK = 1024


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
    candidates, divergences = _candidates_before(memory, mu, var, labels)
    batch = _ChangedRows(memory, n_items)
    item_mu, item_var = mu.double(), var.double()
    label_list = labels.tolist()
    # Labels with an entry: an item of any other label creates one, whatever its nearest.
    held = set(torch.unique(memory.labels[memory.valid]).tolist())
    targets = []
    for item in range(n_items):
        slot = NOT_FOUND
        if label_list[item] in held:
            slot = _nearest_slot(memory, batch, candidates, divergences, item_mu, item_var,
                                 item)
        if slot != NOT_FOUND and batch.label_of(slot) == label_list[item]:
            batch.merge(slot, mu[item], var[item])
        else:
            slot = int(empty_slots[batch.n_created])
            batch.create(slot, mu[item], var[item], label_list[item])
            held.add(label_list[item])
        batch.touch(slot, item)
        targets.append(slot)
    batch.write_back()
    return torch.tensor(targets, dtype=torch.int64, device=labels.device)


def _candidates_before(memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
                       labels: torch.Tensor) -> tuple[list[list[int]], list[list[float]]]:
    """Per item, its certified nearest entries before the batch, nearest first, with
    their float64 divergences; empty for the first item of a label the memory lacks."""
    n_items = len(labels)
    held = torch.isin(labels, memory.labels[memory.valid])
    first = torch.zeros(n_items, dtype=torch.bool, device=labels.device)
    first[_first_occurrences(labels.tolist())] = True
    searched = (held | ~first).nonzero()[:, 0]
    candidates: list[list[int]] = [[] for _ in range(n_items)]
    divergences: list[list[float]] = [[] for _ in range(n_items)]
    n_best = min(_CANDIDATES, len(memory))
    if n_best == 0 or len(searched) == 0:
        return candidates, divergences
    found = memory._search_slots((mu[searched], var[searched]), n_best, certify=True)
    entry_mu, entry_var = memory.entries(found)
    exact = symmetric_kl_diag(mu[searched, None].double(), var[searched, None].double(),
                              entry_mu.double(), entry_var.double())
    for row, item in enumerate(searched.tolist()):
        slots = found[row].tolist()
        candidates[item] = [slot for slot in slots if slot != NOT_FOUND]
        divergences[item] = exact[row, : len(candidates[item])].tolist()
    return candidates, divergences


def _first_occurrences(labels: list[int]) -> list[int]:
    seen: set[int] = set()
    firsts = []
    for index, label in enumerate(labels):
        if label not in seen:
            seen.add(label)
            firsts.append(index)
    return firsts


def _nearest_slot(memory: GaussianMemory, batch: _ChangedRows, candidates: list[list[int]],
                  divergences: list[list[float]], item_mu: torch.Tensor,
                  item_var: torch.Tensor, item: int) -> int:
    """The slot of the item's nearest entry in the memory as the loop left it, or
    NOT_FOUND for an empty memory (or an item that cannot merge anywhere)."""
    best_slot, best = NOT_FOUND, torch.inf
    row = candidates[item]
    unchanged = [(slot, d) for slot, d in zip(row, divergences[item], strict=True)
                 if slot not in batch.position]
    if unchanged:
        best_slot, best = unchanged[0]
    elif len(row) == _CANDIDATES:  # there may be unchanged entries beyond the candidates
        best_slot, best = _nearest_unchanged(memory, batch, item_mu[item], item_var[item])
    if batch.count:
        changed = symmetric_kl_diag(item_mu[item], item_var[item], *batch.keys_float64())
        position = int(changed.argmin())
        if float(changed[position]) < best:
            best_slot = batch.slots[position]
    return best_slot


def _nearest_unchanged(memory: GaussianMemory, batch: _ChangedRows, mu: torch.Tensor,
                       var: torch.Tensor) -> tuple[int, float]:
    """Exact nearest entry among those the batch has not changed, by brute force."""
    keep = memory.valid.clone()
    keep[batch.slots] = False
    slots = keep.nonzero()[:, 0]
    if len(slots) == 0:
        return NOT_FOUND, torch.inf
    exact = symmetric_kl_diag(mu, var, memory.means[slots].double(),
                              memory.variances[slots].double())
    position = int(exact.argmin())
    return int(slots[position]), float(exact[position])


class _ChangedRows:
    """The batch's working copy of the entries it created or merged into, in the order
    it first changed them, and the item that changed each one last."""

    def __init__(self, memory: GaussianMemory, n_items: int) -> None:
        self.memory = memory
        self.means = memory.means.new_zeros(n_items, memory.dim)
        self.variances = memory.variances.new_ones(n_items, memory.dim)
        self.counts = torch.zeros(n_items, dtype=torch.int64)
        self.labels: list[int] = []
        self.slots: list[int] = []
        self.position: dict[int, int] = {}
        self.last_item: dict[int, int] = {}
        self.n_created = 0
        self.n_items = n_items

    @property
    def count(self) -> int:
        return len(self.slots)

    def keys_float64(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.means[: self.count].double(), self.variances[: self.count].double()

    def label_of(self, slot: int) -> int:
        if slot in self.position:
            return self.labels[self.position[slot]]
        return int(self.memory.labels[slot])

    def merge(self, slot: int, mu: torch.Tensor, var: torch.Tensor) -> None:
        """The memory's own merge (`merge_running_`) on the working copy of `slot`."""
        if slot not in self.position:
            self._add_row(slot, self.memory.means[slot], self.memory.variances[slot],
                          int(self.memory.counts[slot]), int(self.memory.labels[slot]))
        row = torch.tensor([self.position[slot]])
        merge_running_(self.means, self.variances, self.counts, row, mu[None], var[None])
        self.counts[row] += 1

    def create(self, slot: int, mu: torch.Tensor, var: torch.Tensor, label: int) -> None:
        self._add_row(slot, mu, clamp_variance(var), 1, label)
        self.n_created += 1

    def touch(self, slot: int, item: int) -> None:
        self.last_item[slot] = item

    def _add_row(self, slot: int, mu: torch.Tensor, var: torch.Tensor, count: int,
                 label: int) -> None:
        position = self.count
        self.position[slot] = position
        self.slots.append(slot)
        self.labels.append(label)
        self.means[position] = mu
        self.variances[position] = var
        self.counts[position] = count

    def write_back(self) -> None:
        """Write the changed rows; ages as after one `update_` call per item (every slot
        ages by the batch size, a changed one counts from the last item that changed it)."""
        memory = self.memory
        memory.ages += self.n_items
        if not self.slots:
            return
        device = memory.means.device
        slots = torch.tensor(self.slots, dtype=torch.int64, device=device)
        rows = slice(0, self.count)
        memory.means[slots] = self.means[rows].to(device)
        memory.variances[slots] = self.variances[rows].to(device)
        memory.counts[slots] = self.counts[rows].to(device)
        memory.labels[slots] = torch.tensor(self.labels, dtype=torch.int64, device=device)
        memory.valid[slots] = True
        last = torch.tensor([self.last_item[slot] for slot in self.slots], device=device)
        memory.ages[slots] = self.n_items - 1 - last
        memory._keys_changed_(slots)
