"""Label memory: a fixed number of slots, each holding a key, a class label, a sample count
and an age (update calls since the slot was last written or merged into).

`SlotMemory` is the key-agnostic part after Kaiser et al. 2017 ("Learning to Remember Rare
Events"): blocked nearest-slot search with label masks, slot allocation (empty slots
first, then the oldest, with optional age noise), counts, ages and the batch write
semantics. The paper's memory (`gaussmem.memory.GaussianMemory`) plugs in
diagonal-Gaussian keys; a point-key baseline (`gaussmem.methods.kaiser`) plugs in its own
score and merge.

"Not found" (empty memory, fewer than k matching entries, no entry with/without the
label): slot `NOT_FOUND` (-1), label `NOT_FOUND` (-1).

Batch write semantics, deterministic and equal to this sequential order:
1. Every item of the batch is looked up against the memory state BEFORE the batch.
2. Items that merge into an existing entry are merged in batch order (sequential
   moment-matching merges with w = (k-1)/k, 1/k; the result is order-free anyway).
3. Items that need a new entry take distinct slots, in batch order: empty slots first
   (lowest index first), then valid slots by decreasing age (plus uniform noise in
   [-age_noise, age_noise] drawn once per call from the memory's own generator), ties to
   the lowest index. A slot that this batch merges into is never overwritten.
4. Every slot's age grows by 1; slots written or merged into by the batch get age 0.
A batch whose new entries plus merged-into slots exceed the capacity is rejected.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gaussmem.row_selection import SELECTION_GROUP, RunningSmallest

#: Slot and label returned where nothing was found; also the label of an empty slot.
NOT_FOUND = -1
#: Default bound on the elements of one temporary `(queries, slots)` score block:
#: 2**26 float32 = 256 MiB, so 1e7 entries never materialise a 1e10-element matrix.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**26
#: A CPU score block of 16 MB (float32): large enough for the matrix product to run at
#: speed, small enough that selecting the smallest reads it from the cache instead of
#: main memory.
_CPU_BLOCK_ELEMENTS = 2**22
#: Fewest queries per block before entries are split instead: each query block re-reads
#: every entry's key, so tiny query blocks turn the GEMM into a memory-bound scan.
_MIN_QUERY_BLOCK = 256


class SlotMemory(nn.Module):
    """Slot policy shared by every label memory; knows nothing about the keys' form.

    Subclasses provide `_lift_query_keys`, `_score_block` (a divergence up to a per-query
    constant, +inf at empty slots), `_store_keys_`, `_merge_keys_` and `_keys_changed_`.
    """

    labels: torch.Tensor
    counts: torch.Tensor
    ages: torch.Tensor
    valid: torch.Tensor

    def __init__(
        self,
        capacity: int,
        *,
        age_noise: float = 0.0,
        seed: int | None = None,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    ) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"memory capacity must be >= 1, got {capacity}")
        if age_noise < 0:
            raise ValueError(f"age_noise must be >= 0, got {age_noise}")
        self.capacity = capacity
        self.age_noise = float(age_noise)
        self.max_block_elements = max_block_elements
        # A fresh generator's .seed() draws from the OS without touching the global RNG.
        self.seed = int(seed) if seed is not None else torch.Generator().seed()
        self._noise_generator = torch.Generator().manual_seed(self.seed)
        self.register_buffer("labels", torch.full((capacity,), NOT_FOUND, dtype=torch.int64))
        self.register_buffer("counts", torch.zeros(capacity, dtype=torch.int64))
        self.register_buffer("ages", torch.zeros(capacity, dtype=torch.int64))
        self.register_buffer("valid", torch.zeros(capacity, dtype=torch.bool))

    def __len__(self) -> int:
        """Number of valid entries (so an empty memory is falsy)."""
        return int(self.valid.sum())

    def _empty_slot_values(self) -> dict[str, Any]:
        """Per-slot buffers (first dimension = capacity) and the value of an empty slot;
        subclasses add their key buffers, so `grow_` pads every one of them."""
        return {"labels": NOT_FOUND, "counts": 0, "ages": 0, "valid": False}

    @torch.no_grad()
    def grow_(self, capacity: int) -> None:
        """Enlarge to `capacity` slots in place; entries keep their slots, new slots are
        empty. Evaluation memories are sized by the episode (a 400-way 5-shot support set
        needs 2,000 entries), so callers grow them instead of rebuilding them by hand."""
        if capacity < self.capacity:
            raise ValueError(f"grow_ cannot shrink the memory from {self.capacity} to "
                             f"{capacity} slots")
        extra = capacity - self.capacity
        if extra == 0:
            return
        for name, empty_value in self._empty_slot_values().items():
            current = getattr(self, name)
            padding = current.new_full((extra, *current.shape[1:]), empty_value)
            setattr(self, name, torch.cat([current, padding]))
        self.capacity = capacity
        self._keys_changed_(None)

    # State that a checkpoint needs beyond buffers: the age-noise generator, so a resumed
    # run draws the same noise as an uninterrupted one.
    def get_extra_state(self) -> dict[str, Any]:
        return {"noise_generator_state": self._noise_generator.get_state(), "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._noise_generator.set_state(state["noise_generator_state"])

    @torch.no_grad()
    def reset_(self) -> None:
        """Empty every slot and re-seed the age noise, as after construction."""
        self.labels.fill_(NOT_FOUND)
        self.counts.zero_()
        self.ages.zero_()
        self.valid.zero_()
        self._noise_generator.manual_seed(self.seed)
        self._keys_changed_(None)

    @torch.no_grad()
    def clear_slots_(self, slots: torch.Tensor) -> None:
        """Empty `slots` `(n,)` in place (a gallery forgetting a label); the other slots
        keep their entries and ages, and emptied slots never match again until written."""
        slots = torch.as_tensor(slots, dtype=torch.int64, device=self.labels.device)
        self.labels[slots] = NOT_FOUND
        self.counts[slots] = 0
        self.ages[slots] = 0
        self.valid[slots] = False
        self._keys_changed_(slots)

    # --- hooks for the key type -------------------------------------------------------
    def _lift_query_keys(self, keys: tuple[torch.Tensor, ...]) -> Any:
        """Whatever per-query form `_score_block` consumes."""
        raise NotImplementedError

    def _score_block(
        self,
        lifted_queries: Any,
        query_rows: slice,
        slot_rows: slice,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(query block, slot block)` scores: lower is nearer, +inf for empty slots.

        May omit terms that are constant per query: only the ranking is used. Writes into
        `out` (contiguous, the block's shape) when given, which the search reuses across
        blocks.
        """
        raise NotImplementedError

    def _store_keys_(
        self, slots: torch.Tensor, keys: tuple[torch.Tensor, ...], stores: torch.Tensor
    ) -> None:
        """Overwrite the key at `slots[i]` with `keys[i]` (each `(r, ...)`) where
        `stores[i]`; other items leave their slot alone. Storing items that share a slot
        carry equal keys, and no slot is both stored and left alone (`put_rows_`)."""
        raise NotImplementedError

    def _merge_keys_(
        self, slots: torch.Tensor, keys: tuple[torch.Tensor, ...], merges: torch.Tensor
    ) -> None:
        """Merge the `keys` of the items with `merges[i]` into `slots` `(r,)` (repeats
        allowed) in batch order; a slot no item merges into keeps its key bit for bit.

        `self.counts` still holds the counts before this merge.
        """
        raise NotImplementedError

    def _keys_changed_(self, slots: torch.Tensor | None) -> None:
        """Refresh caches derived from keys at `slots` (repeats allowed; None: all)."""

    # --- search -----------------------------------------------------------------------
    def _block_shape(self, n_queries: int, n_slots: int) -> tuple[int, int]:
        """Queries and slots per score block, keeping their product <= max_block_elements
        (on a CPU, <= `_CPU_BLOCK_ELEMENTS` too)."""
        budget = max(1, self.max_block_elements)
        if self.valid.device.type == "cpu":
            budget = min(budget, _CPU_BLOCK_ELEMENTS)
        query_rows = min(n_queries, max(1, budget // max(1, n_slots)))
        query_rows = max(query_rows, min(n_queries, _MIN_QUERY_BLOCK, budget))
        slot_rows = min(n_slots, max(1, budget // max(1, query_rows)))
        if slot_rows < n_slots and slot_rows > SELECTION_GROUP:
            # Whole selection groups: only the last block has a partial one to read whole.
            slot_rows -= slot_rows % SELECTION_GROUP
        return max(1, query_rows), max(1, slot_rows)

    def _occupied_extent(self) -> int:
        """One past the last valid slot: slots beyond it are empty and never scored."""
        occupied = self.valid.nonzero()
        return int(occupied[-1, 0]) + 1 if len(occupied) else 0

    def _searched_extent(self) -> int:
        """Slots a search scores. On the CPU, only up to the last occupied one (early in a
        training episode most slots are empty). On an accelerator, all of them: finding
        the last occupied slot would make the host wait for the device on every search,
        and empty slots score +inf, so the answer is the same."""
        return self._occupied_extent() if self.valid.device.type == "cpu" else self.capacity

    @torch.no_grad()
    def _search_slots(
        self,
        keys: tuple[torch.Tensor, ...],
        k: int,
        query_labels: torch.Tensor | None = None,
        same_label: bool = True,
        *,
        certify: bool = False,
        excluded: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The k nearest slots per query, `(n_queries, k)`, NOT_FOUND where none qualify.

        `keys`: the queries' keys, each `(n_queries, ...)`, lifted by `_lift_query_keys`.

        With `query_labels` `(n_queries,)`, only slots whose label equals (`same_label`)
        or differs from the query's label qualify. Blocked over queries and slots so no
        score block exceeds `max_block_elements`; a running top-k merges slot blocks.
        Within a block, equal scores may come back in any order. `certify` asks
        `_refine_candidates` to prove its answer even where that reads device values back.
        `excluded` `(n_queries, e)`: slots that never qualify for that query (NOT_FOUND
        pads), so a search can go on past the entries a caller already knows.
        """
        device = self.valid.device
        n_queries = len(keys[0])
        lifted_queries = self._lift_query_keys(keys)
        n_slots = self._searched_extent()
        found = torch.full((n_queries, k), NOT_FOUND, dtype=torch.int64, device=device)
        if n_slots == 0 or n_queries == 0:
            return found
        width = self._candidate_width(k, lifted_queries)
        query_step, slot_step = self._block_shape(n_queries, n_slots)
        # One score buffer for every block: a fresh output per block page-faults, which on
        # a CPU costs a visible share of the GEMM's own time.
        scratch = None
        for query_start in range(0, n_queries, query_step):
            query_rows = slice(query_start, min(query_start + query_step, n_queries))
            smallest = RunningSmallest(width)
            for slot_start in range(0, n_slots, slot_step):
                slot_rows = slice(slot_start, min(slot_start + slot_step, n_slots))
                block_size = (query_rows.stop - query_rows.start, slot_rows.stop - slot_rows.start)
                out = None if scratch is None else scratch[: math.prod(block_size)].view(block_size)
                scores = self._score_block(lifted_queries, query_rows, slot_rows, out)
                if scratch is None and scores.is_contiguous():  # the first block is the largest
                    scratch = scores.view(-1)
                if query_labels is not None:
                    equal = query_labels[query_rows, None] == self.labels[None, slot_rows]
                    scores = scores.masked_fill_(~equal if same_label else equal, torch.inf)
                if excluded is not None:
                    scores = scores.masked_fill_(
                        excluded_in_block(excluded[query_rows], slot_rows, scores.shape[1]),
                        torch.inf)
                smallest.add(scores, slot_start)
            best_scores, best_slots = smallest.result()
            best_slots.masked_fill_(best_scores == torch.inf, NOT_FOUND)
            labels = None if query_labels is None else query_labels[query_rows]
            best_slots = self._refine_candidates(
                keys, lifted_queries, query_rows, best_scores, best_slots, k, labels, same_label,
                certify, None if excluded is None else excluded[query_rows],
            )
            found[query_rows, : best_slots.shape[1]] = best_slots
        return found

    def _candidate_width(self, k: int, lifted_queries: Any) -> int:
        """Candidates per query the search keeps for `_refine_candidates` (>= k), for the
        queries as `_lift_query_keys` made them."""
        return k

    def _refine_candidates(
        self,
        keys: tuple[torch.Tensor, ...],
        lifted_queries: Any,
        query_rows: slice,
        scores: torch.Tensor,
        slots: torch.Tensor,
        k: int,
        query_labels: torch.Tensor | None,
        same_label: bool,
        certify: bool,
        excluded: torch.Tensor | None,
    ) -> torch.Tensor:
        """The k best of a query block's candidates `slots` (ascending `scores`, both
        `(rows, <= width)`, NOT_FOUND where none qualified); by default the first k.
        `excluded`: the block's rows of `_search_slots`'s argument."""
        return slots[:, :k]

    # --- writes -----------------------------------------------------------------------
    @torch.no_grad()
    def _allocate_slots(self, creates: torch.Tensor, merge_slots: torch.Tensor) -> torch.Tensor:
        """A new slot for every item with `creates` `(b,)`, distinct, best first in batch
        order (other items get some slot, to be ignored); never a slot in `merge_slots`.

        Empty slots first (lowest index first), then valid slots by age + noise, oldest
        first, ties to the lowest index. Every shape is fixed by b, so on an accelerator
        choosing slots waits for the device only where age noise is on and may be needed.
        """
        n_items, capacity = len(creates), self.capacity
        device = self.ages.device
        excluded = torch.zeros(capacity, dtype=torch.int64, device=device).index_add_(
            0, merge_slots.clamp_min(0), (merge_slots != NOT_FOUND).long()) > 0
        if n_items > capacity:
            # New entries plus merged-into slots never exceed the batch, so only a batch
            # larger than the memory can run out of slots; checking costs a host sync.
            n_new, available = int(creates.sum()), capacity - int(excluded.sum())
            if n_new > available:
                raise ValueError(
                    f"a batch needs {n_new} new entries but only {available} of {capacity} "
                    "slots are not being merged into; use a smaller batch"
                )
        slot_index = torch.arange(capacity, device=device)
        empty = ~self.valid
        # The noise is drawn only when a valid slot must be overwritten, as it always was,
        # so a seed gives the replacement order it gave before.
        if self.age_noise > 0 and bool(creates.sum() > empty.sum()):
            noise = torch.rand(capacity, generator=self._noise_generator, dtype=torch.float64)
            priority = self.ages.double() + (2 * noise.to(device) - 1) * self.age_noise
            first_empty = self.ages.max().double() + self.age_noise + 1
            priority = torch.where(empty, first_empty + (capacity - slot_index), priority)
            priority = priority.masked_fill(excluded, -torch.inf)
        else:
            # Exact integer key: older first, then lower index; every empty slot above
            # every valid one (ages stay << 2**63 / capacity).
            priority = self.ages * capacity + (capacity - 1 - slot_index)
            first_empty = (self.ages.max() + 1) * capacity
            priority = torch.where(empty, first_empty + (capacity - 1 - slot_index), priority)
            priority = priority.masked_fill(excluded, -1)
        best = torch.topk(priority, min(n_items, capacity)).indices
        rank = (creates.cumsum(0) - 1).clamp(0, max(len(best) - 1, 0))
        return best[rank] if len(best) else torch.zeros_like(merge_slots)

    @torch.no_grad()
    def _commit_batch_(
        self,
        keys: tuple[torch.Tensor, ...],
        labels: torch.Tensor,
        merge_slots: torch.Tensor,
        creator_of: torch.Tensor,
    ) -> torch.Tensor:
        """Apply one batch by the module's documented semantics; returns target slots `(b,)`.

        Args:
            keys: each `(b, ...)`, detached, in the memory's dtype and device.
            labels: `(b,)` int64.
            merge_slots: `(b,)` existing slot each item merges into, or NOT_FOUND.
            creator_of: `(b,)` for items with merge_slots == NOT_FOUND, the batch index of
                the item whose new entry they join (their own index to create one).

        Masks over the whole batch instead of boolean indexing keep every shape fixed by
        b, so on an accelerator a training step's write never waits for the device.
        """
        positions = torch.arange(len(labels), device=labels.device)
        needs_new = merge_slots == NOT_FOUND
        creates = needs_new & (creator_of == positions)
        new_slots = self._allocate_slots(creates, merge_slots)
        # A joining item takes its creator's slot; every other item its own target.
        targets = torch.where(needs_new, new_slots[creator_of], merge_slots)

        self._store_keys_(targets, tuple(key[creator_of] for key in keys), needs_new)
        put_rows_(self.labels, targets, labels[creator_of], needs_new)
        put_rows_(self.counts, targets, torch.ones_like(labels), needs_new)
        self.valid.index_fill_(0, targets, True)

        merges = ~creates
        self._merge_keys_(targets, keys, merges)
        self.counts.index_add_(0, targets, merges.long())
        self.ages += 1
        self.ages.index_fill_(0, targets, 0)
        self._keys_changed_(targets)
        return targets


def put_rows_(
    buffer: torch.Tensor, slots: torch.Tensor, values: torch.Tensor, puts: torch.Tensor
) -> None:
    """`buffer[slots[i]] = values[i]` where `puts[i]`, in place; other items rewrite their
    row's current value. Items that share a slot must agree (all put equal values, or none
    puts), so repeated slots are harmless; no boolean indexing, so no host sync."""
    mask = puts.view(-1, *([1] * (values.ndim - 1)))
    buffer.index_put_((slots,), torch.where(mask, values, buffer[slots]))


def excluded_in_block(excluded: torch.Tensor, slot_rows: slice, width: int) -> torch.Tensor:
    """`(rows, width)` mask of each query's `excluded` slots `(rows, e)` within the block
    of `width` slots from `slot_rows.start`. A slot outside the block adds 0 to some
    column, so it never clears a real exclusion there; no host sync."""
    inside = (excluded >= slot_rows.start) & (excluded < slot_rows.stop)
    columns = (excluded - slot_rows.start).clamp(0, width - 1)
    counts = torch.zeros(len(excluded), width, dtype=torch.int32, device=excluded.device)
    return counts.scatter_add_(1, columns, inside.int()) > 0
