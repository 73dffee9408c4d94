"""GaussianMemory: search against brute force, batch writes against a sequential reference."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaussmem.bfloat16_screen import EntryScreen, lower_bound_of
from gaussmem.errors import MemoryFileError
from gaussmem.gaussian import (
    lift_entries,
    lift_queries,
    moment_match_merge,
    shot_weights,
    symmetric_kl_diag,
)
from gaussmem.memory import NOT_FOUND, SCREEN_MIN_QUERIES, GaussianMemory
from gaussmem.row_selection import RunningSmallest, smallest_per_row
from gaussmem.slot_memory import SlotMemory

DIM = 4


def random_gaussians(count: int, *, seed: int, dim: int = DIM, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    var = torch.exp(torch.rand(count, dim, generator=generator, dtype=torch.float64) - 0.5)
    return mu.to(dtype), var.to(dtype)


def filled_memory(capacity: int = 10, n_entries: int = 6, **kwargs) -> GaussianMemory:
    memory = GaussianMemory(capacity, DIM, seed=0, **kwargs)
    mu, var = random_gaussians(n_entries, seed=1)
    memory.update_(mu, var, torch.arange(n_entries) % 3)  # empty before: all new entries
    return memory


def brute_force_divergence(memory: GaussianMemory, mu, var) -> torch.Tensor:
    """(n, capacity) exact SKL, +inf at empty slots."""
    divergence = symmetric_kl_diag(
        mu[:, None].double(),
        var[:, None].double(),
        memory.means.double(),
        memory.variances.double(),
    )
    return divergence.masked_fill(~memory.valid, torch.inf)


# --- sequential reference for the documented batch semantics --------------------------
@dataclass
class ReferenceMemory:
    """Plain-Python memory that applies one item at a time (float64)."""

    means: list[torch.Tensor]
    variances: list[torch.Tensor]
    labels: list[int]
    counts: list[int]
    ages: list[int]
    valid: list[bool]

    @classmethod
    def of(cls, memory: GaussianMemory) -> ReferenceMemory:
        return cls(
            means=[row.double().clone() for row in memory.means],
            variances=[row.double().clone() for row in memory.variances],
            labels=memory.labels.tolist(),
            counts=memory.counts.tolist(),
            ages=memory.ages.tolist(),
            valid=memory.valid.tolist(),
        )

    def nearest(self, mu, var, label: int | None = None) -> int | None:
        best_slot, best_divergence = None, float("inf")
        for slot in range(len(self.labels)):
            if not self.valid[slot] or (label is not None and self.labels[slot] != label):
                continue
            divergence = symmetric_kl_diag(mu, var, self.means[slot], self.variances[slot]).item()
            if divergence < best_divergence:
                best_slot, best_divergence = slot, divergence
        return best_slot

    def allocate(self, used: set[int], excluded: set[int]) -> int:
        for slot in range(len(self.labels)):
            if not self.valid[slot] and slot not in used:
                return slot
        candidates = [s for s in range(len(self.labels)) if s not in used | excluded]
        return max(candidates, key=lambda slot: (self.ages[slot], -slot))

    def write(self, slot: int, mu, var, label: int) -> None:
        self.means[slot], self.variances[slot] = mu.clone(), var.clone()
        self.labels[slot], self.counts[slot], self.valid[slot] = label, 1, True

    def merge(self, slot: int, mu, var) -> None:
        self.counts[slot] += 1
        w_1, w_2 = shot_weights(self.counts[slot])
        self.means[slot], self.variances[slot] = moment_match_merge(
            self.means[slot], self.variances[slot], mu, var, w_1, w_2
        )

    def finish_batch(self, touched: set[int]) -> None:
        self.ages = [0 if slot in touched else age + 1 for slot, age in enumerate(self.ages)]

    def update(self, mu, var, labels: list[int]) -> list[int]:
        nearest = [self.nearest(mu[i], var[i]) for i in range(len(labels))]
        merges = {
            i: slot
            for i, slot in enumerate(nearest)
            if slot is not None and self.labels[slot] == labels[i]
        }
        targets, used = [], set()
        for i, label in enumerate(labels):
            if i in merges:
                targets.append(merges[i])
                continue
            slot = self.allocate(used, set(merges.values()))
            used.add(slot)
            self.write(slot, mu[i], var[i], label)
            targets.append(slot)
        for i, slot in merges.items():  # dicts keep insertion (= batch) order
            self.merge(slot, mu[i], var[i])
        self.finish_batch(set(targets))
        return targets

    def write_support(self, mu, var, labels: list[int]) -> list[int]:
        merges = {}
        for i, label in enumerate(labels):
            slot = self.nearest(mu[i], var[i], label)
            if slot is not None:
                merges[i] = slot
        created: dict[int, int] = {}
        targets, used = [], set()
        for i, label in enumerate(labels):
            if i in merges:
                slot = merges[i]
                self.merge(slot, mu[i], var[i])
            elif label in created:
                slot = created[label]
                self.merge(slot, mu[i], var[i])
            else:
                slot = self.allocate(used, set(merges.values()))
                used.add(slot)
                created[label] = slot
                self.write(slot, mu[i], var[i], label)
            targets.append(slot)
        self.finish_batch(set(targets))
        return targets

    def assert_matches(self, memory: GaussianMemory) -> None:
        assert memory.labels.tolist() == self.labels
        assert memory.counts.tolist() == self.counts
        assert memory.ages.tolist() == self.ages
        assert memory.valid.tolist() == self.valid
        torch.testing.assert_close(memory.means, torch.stack(self.means))
        torch.testing.assert_close(memory.variances, torch.stack(self.variances))


def clustered_batch(batch_size: int, n_labels: int, generator: torch.Generator):
    """Items near per-label centres, so batches mix hits, misses and duplicate labels."""
    centres = torch.randn(n_labels, DIM, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.randint(n_labels, (batch_size,), generator=generator)
    mu = centres[labels] + 0.5 * torch.randn(batch_size, DIM, generator=generator)
    var = torch.exp(torch.rand(batch_size, DIM, generator=generator) - 0.5)
    # A few items carry a label other than their cluster's: guaranteed misses.
    relabel = torch.rand(batch_size, generator=generator) < 0.2
    labels = torch.where(relabel, (labels + 1) % n_labels, labels)
    return mu.double(), var.double(), labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["update", "write_support"])
def test_batch_writes_match_sequential_reference(seed, method):
    generator = torch.Generator().manual_seed(seed)
    memory = GaussianMemory(6, DIM, dtype=torch.float64, seed=seed)
    reference = ReferenceMemory.of(memory)
    hits_and_misses = 0
    for _ in range(12):  # from empty to full and past it
        batch_size = int(torch.randint(1, 7, (1,), generator=generator))
        # update_ needs few labels to hit; write_support_ needs many to fill the memory.
        mu, var, labels = clustered_batch(batch_size, 3 if method == "update" else 9, generator)
        if method == "update":
            targets = memory.update_(mu, var, labels)
            expected = reference.update(mu, var, labels.tolist())
        else:
            targets = memory.write_support_(mu, var, labels)
            expected = reference.write_support(mu, var, labels.tolist())
        assert targets.tolist() == expected
        reference.assert_matches(memory)
        hits_and_misses += len(set(expected)) < batch_size
    assert memory.valid.all(), "the sequence must reach a full memory"
    assert hits_and_misses > 0, "the sequence must put two items into one slot"


def test_update_merges_hit_and_writes_miss():
    memory = GaussianMemory(4, DIM, seed=0)
    mu, var = random_gaussians(2, seed=3, dtype=torch.float32)
    memory.update_(mu, var, torch.tensor([7, 8]))
    assert len(memory) == 2 and memory.counts[:2].tolist() == [1, 1]
    near = mu[:1] + 0.01
    memory.update_(near, var[:1], torch.tensor([7]))  # nearest is label 7: merge
    assert len(memory) == 2 and memory.counts[0] == 2
    torch.testing.assert_close(memory.means[0], (mu[0] + near[0]) / 2)
    memory.update_(near, var[:1], torch.tensor([9]))  # nearest is label 7, wrong: new entry
    assert len(memory) == 3 and memory.labels[2] == 9


def test_oldest_slot_is_replaced_and_ties_go_to_lowest_index():
    memory = GaussianMemory(3, DIM, seed=0)
    mu, var = random_gaussians(6, seed=4, dtype=torch.float32)
    for item in range(3):
        memory.update_(mu[item : item + 1], var[item : item + 1], torch.tensor([item]))
    assert memory.ages.tolist() == [2, 1, 0]
    assert memory.update_(mu[3:4], var[3:4], torch.tensor([10])).tolist() == [0]
    memory.reset_()
    memory.update_(mu[:3], var[:3], torch.tensor([0, 1, 2]))  # equal ages
    assert memory.update_(mu[3:5], var[3:5], torch.tensor([10, 11])).tolist() == [0, 1]


def test_new_entries_never_overwrite_a_slot_merged_in_the_same_batch():
    memory = GaussianMemory(3, DIM, dtype=torch.float64, seed=0)
    mu, var = random_gaussians(3, seed=5)
    for item in range(3):
        memory.update_(mu[item : item + 1], var[item : item + 1], torch.tensor([item]))
    # Item 0 hits slot 0 (the oldest); item 1 misses and must take slot 1, the next oldest.
    targets = memory.update_(torch.stack([mu[0], mu[0]]), var[:2], torch.tensor([0, 5]))
    assert targets.tolist() == [0, 1]
    assert memory.labels.tolist() == [0, 5, 2]


def test_batch_larger_than_the_memory_is_rejected():
    memory = GaussianMemory(2, DIM)
    mu, var = random_gaussians(3, seed=6, dtype=torch.float32)
    with pytest.raises(ValueError, match="new entries"):
        memory.update_(mu, var, torch.arange(3))


def test_batch_larger_than_the_memory_is_accepted_when_its_items_merge():
    memory = GaussianMemory(2, DIM, dtype=torch.float64, seed=0)
    mu, var = random_gaussians(2, seed=6)
    memory.update_(mu, var, torch.tensor([0, 1]))
    targets = memory.update_(mu[[0, 1, 0]], var[[0, 1, 0]], torch.tensor([0, 1, 0]))
    assert targets.tolist() == [0, 1, 0] and memory.counts.tolist() == [3, 2]


def test_a_training_steps_lookups_and_write_never_read_device_values_back():
    """On an accelerator, reading a value back to the host (nonzero, unique, boolean
    indexing, .item()) makes the host wait for the device. Meta tensors hold no values,
    so any such read raises on them: the training step's memory calls must not."""
    memory = GaussianMemory(64, DIM, seed=0).to("meta")
    mu, var = torch.zeros(16, DIM, device="meta"), torch.ones(16, DIM, device="meta")
    labels = torch.arange(16, device="meta")
    memory.nearest_with_label(mu, var, labels)
    memory.nearest_with_other_label(mu, var, labels)
    divergence, _ = memory.divergences_to_entries(mu, var)  # loss.memory_term=softmax
    targets = memory.update_(mu, var, labels)
    assert divergence.shape == (16, 64)
    assert targets.shape == (16,) and targets.device.type == "meta"


def test_searching_every_slot_answers_as_searching_the_occupied_ones(monkeypatch):
    # On an accelerator the search scores all slots rather than find the last occupied.
    memory = filled_memory(capacity=40, n_entries=25)
    mu, var = random_gaussians(9, seed=12, dtype=torch.float32)
    labels = torch.randint(3, (9,), generator=torch.Generator().manual_seed(0))
    expected = [memory.query(mu, var, k=4).slots, memory.nearest_with_label(mu, var, labels).slots,
                memory.nearest_with_other_label(mu, var, labels).slots]
    monkeypatch.setattr(memory, "_searched_extent", lambda: memory.capacity)
    found = [memory.query(mu, var, k=4).slots, memory.nearest_with_label(mu, var, labels).slots,
             memory.nearest_with_other_label(mu, var, labels).slots]
    for got, want in zip(found, expected, strict=True):
        assert torch.equal(got, want)


def test_write_support_merges_shots_of_a_class():
    memory = GaussianMemory(8, DIM, seed=0)
    mu, var = random_gaussians(6, seed=7, dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # 3-way 2-shot, shots interleaved
    slots = memory.write_support_(mu, var, labels)
    assert slots.tolist() == [0, 1, 2, 0, 1, 2]
    assert len(memory) == 3 and memory.counts[:3].tolist() == [2, 2, 2]
    expected_mu, expected_var = moment_match_merge(mu[:3], var[:3], mu[3:], var[3:], 0.5, 0.5)
    torch.testing.assert_close(memory.means[:3], expected_mu)
    torch.testing.assert_close(memory.variances[:3], expected_var)
    # A third shot in a later call merges into the class's entry, whatever is nearest.
    memory.write_support_(mu[1:2], var[1:2], torch.tensor([0]))
    assert len(memory) == 3 and memory.counts[0] == 3


def test_age_noise_is_reproducible_from_the_seed():
    def replacement_slots(seed: int) -> list[int]:
        memory = GaussianMemory(16, DIM, age_noise=5.0, seed=seed)
        mu, var = random_gaussians(40, seed=8, dtype=torch.float32)
        memory.update_(mu[:16], var[:16], torch.arange(16))
        return [
            int(memory.update_(mu[i : i + 1], var[i : i + 1], torch.tensor([100 + i])))
            for i in range(16, 40)
        ]

    assert replacement_slots(0) == replacement_slots(0)
    assert replacement_slots(0) != replacement_slots(1)
    exact = replacement_slots(0)
    assert exact != list(range(16)) + list(range(8)), "noise must change the exact order"


def test_reset_empties_and_reseeds():
    memory = filled_memory(age_noise=2.0)
    state_after_fill = copy.deepcopy(memory.state_dict())
    memory.reset_()
    assert len(memory) == 0 and (memory.labels == NOT_FOUND).all() and not memory.counts.any()
    mu, var = random_gaussians(6, seed=1)
    memory.update_(mu, var, torch.arange(6) % 3)
    for name, tensor in memory.state_dict().items():
        if name != "_extra_state":
            assert torch.equal(tensor, state_after_fill[name]), name


# --- queries ---------------------------------------------------------------------------
def test_empty_memory_returns_not_found():
    memory = GaussianMemory(5, DIM)
    mu, var = random_gaussians(3, seed=9, dtype=torch.float32)
    result = memory.query(mu, var, k=2)
    assert (result.slots == NOT_FOUND).all() and (result.labels == NOT_FOUND).all()
    assert torch.isinf(result.divergence).all() and (result.similarity == 0).all()
    nearest = memory.nearest_with_other_label(mu, var, torch.zeros(3, dtype=torch.int64))
    assert (nearest.slots == NOT_FOUND).all() and torch.isinf(nearest.divergence).all()


def test_query_top_k_matches_brute_force_and_pads_missing():
    memory = filled_memory(capacity=10, n_entries=6)
    mu, var = random_gaussians(5, seed=10, dtype=torch.float32)
    result = memory.query(mu, var, k=8)
    assert result.slots.shape == (5, 8)
    exact = brute_force_divergence(memory, mu, var)
    expected = exact.topk(6, dim=1, largest=False)
    assert torch.equal(result.slots[:, :6], expected.indices)
    torch.testing.assert_close(
        result.divergence[:, :6].double(), expected.values, rtol=1e-5, atol=1e-5
    )
    assert (result.slots[:, 6:] == NOT_FOUND).all(), "empty slots never match"
    assert (result.labels[:, 6:] == NOT_FOUND).all()
    assert torch.equal(result.labels[:, :6], memory.labels[expected.indices])
    torch.testing.assert_close(result.similarity, torch.exp(-result.divergence))


def test_query_divergence_is_differentiable_in_the_query_only():
    memory = filled_memory()
    mu, var = random_gaussians(3, seed=11, dtype=torch.float32)
    mu.requires_grad_(True)
    memory.query(mu, var, k=2).divergence.sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all()
    assert not any(buffer.requires_grad for buffer in memory.buffers())


def test_divergences_to_entries_match_brute_force_and_carry_the_query_gradient():
    memory = filled_memory(capacity=10, n_entries=6)
    memory.valid[4] = False  # a hole below the last occupied slot stays +inf
    memory.labels[4] = NOT_FOUND
    memory._keys_changed_(None)
    mu, var = random_gaussians(5, seed=14, dtype=torch.float32)
    mu.requires_grad_(True)
    divergence, labels = memory.divergences_to_entries(mu, var)
    assert divergence.shape == (5, 6), "slots past the last occupied one are left out"
    assert labels.tolist() == [0, 1, 2, 0, NOT_FOUND, 2]
    exact = brute_force_divergence(memory, mu.detach(), var)
    assert torch.isinf(divergence[:, 4]).all()
    occupied = [0, 1, 2, 3, 5]
    torch.testing.assert_close(divergence[:, occupied].double(), exact[:, occupied],
                               rtol=1e-4, atol=1e-4)
    divergence[:, occupied].sum().backward()
    # The whole gradient, not only the part through the queries' offsets.
    reference_mu = mu.detach().double().requires_grad_(True)
    symmetric_kl_diag(reference_mu[:, None], var.double()[:, None],
                      memory.means[occupied].double(),
                      memory.variances[occupied].double()).sum().backward()
    torch.testing.assert_close(mu.grad.double(), reference_mu.grad, rtol=1e-3, atol=1e-3)
    empty = GaussianMemory(4, DIM).divergences_to_entries(mu.detach(), var)
    assert empty[0].shape == (5, 0) and empty[1].shape == (0,)


def test_nearest_with_label_and_other_label_match_brute_force():
    memory = filled_memory(capacity=10, n_entries=6)  # labels 0, 1, 2 twice each
    mu, var = random_gaussians(5, seed=12, dtype=torch.float32)
    query_labels = torch.tensor([0, 1, 2, 3, 0])
    exact = brute_force_divergence(memory, mu, var)
    same = memory.labels[None] == query_labels[:, None]
    positive = memory.nearest_with_label(mu, var, query_labels)
    negative = memory.nearest_with_other_label(mu, var, query_labels)
    expected_positive = exact.masked_fill(~same, torch.inf).min(1)
    expected_negative = exact.masked_fill(same, torch.inf).min(1)
    assert positive.slots[:3].tolist() == expected_positive.indices[:3].tolist()
    assert positive.slots[4] == expected_positive.indices[4]
    assert positive.slots[3] == NOT_FOUND and torch.isinf(positive.divergence[3])
    assert torch.equal(negative.slots, expected_negative.indices)
    torch.testing.assert_close(
        negative.divergence.double(), expected_negative.values, rtol=1e-5, atol=1e-5
    )


def test_other_label_not_found_when_every_entry_shares_the_label():
    memory = GaussianMemory(4, DIM)
    mu, var = random_gaussians(2, seed=13, dtype=torch.float32)
    memory.update_(mu, var, torch.tensor([3, 3]))
    result = memory.nearest_with_other_label(mu, var, torch.tensor([3, 3]))
    assert (result.slots == NOT_FOUND).all() and torch.isinf(result.divergence).all()


@pytest.mark.parametrize("max_block_elements", [1, 7, 40])
def test_chunked_search_equals_unchunked(max_block_elements):
    memory = filled_memory(capacity=12, n_entries=11)
    chunked = copy.deepcopy(memory)
    chunked.max_block_elements = max_block_elements
    mu, var = random_gaussians(9, seed=14, dtype=torch.float32)
    labels = torch.arange(9) % 4
    for name in ("slots", "labels", "divergence"):
        assert torch.equal(
            getattr(chunked.query(mu, var, k=4), name), getattr(memory.query(mu, var, k=4), name)
        )
    for search in ("nearest_with_label", "nearest_with_other_label"):
        assert torch.equal(
            getattr(chunked, search)(mu, var, labels).slots,
            getattr(memory, search)(mu, var, labels).slots,
        )


@pytest.mark.parametrize("max_block_elements", [7, 2**26])
@pytest.mark.parametrize("doubtful", [False, True])
def test_search_past_excluded_slots_matches_brute_force(max_block_elements, doubtful,
                                                        monkeypatch):
    """A query's excluded slots never come back, across slot blocks; it gets the
    brute-force nearest of the other entries, also where every float32 answer is in
    doubt and every entry is re-scored exactly."""
    if doubtful:
        monkeypatch.setattr(GaussianMemory, "_score_error_bound",
                            lambda self, lifted, rows: torch.full(
                                (rows.stop - rows.start,), 1e6, dtype=torch.float64))
    memory = filled_memory(capacity=12, n_entries=11, max_block_elements=max_block_elements)
    mu, var = random_gaussians(6, seed=15, dtype=torch.float32)
    exact = brute_force_divergence(memory, mu, var)
    excluded = exact.argsort(1)[:, :3]
    excluded[0, 1] = NOT_FOUND  # padding
    excluded[1] = torch.tensor([10, 0, 10])  # repeats, and the first slot
    excluded[2] = NOT_FOUND  # none
    found = memory._search_slots((mu, var), 2, certify=True, excluded=excluded)
    kept = exact.clone()
    for row, slots in enumerate(excluded.tolist()):
        kept[row, [slot for slot in slots if slot != NOT_FOUND]] = torch.inf
    assert torch.equal(found, kept.topk(2, dim=1, largest=False).indices)


def test_entry_scale_is_the_largest_finite_entry_norm_and_offset():
    """The float32 error bound's entry scale: the largest lifted-feature norm and |offset|
    over valid entries, empty slots left out (they hold offset +inf)."""
    memory = filled_memory(capacity=10, n_entries=6)
    lifted = lift_entries(memory.means[:6].double(), memory.variances[:6].double())
    norm, offset = memory._scale_of(None)
    assert norm == pytest.approx(float(lifted.features.norm(dim=1).max()), rel=1e-6)
    assert offset == pytest.approx(float(lifted.offsets.abs().max()), rel=1e-6)
    some = torch.tensor([1, 4])
    assert memory._scale_of(some)[0] == pytest.approx(
        float(lifted.features[some].norm(dim=1).max()), rel=1e-6)
    assert GaussianMemory(4, DIM)._scale_of(None) == (0.0, 0.0)


def test_block_shape_respects_the_budget():
    memory = GaussianMemory(1000, DIM, max_block_elements=5000)
    for n_queries in (1, 300, 4000):
        query_rows, slot_rows = memory._block_shape(n_queries, 1000)
        assert query_rows * slot_rows <= 5000 and query_rows <= n_queries


def test_bad_inputs_are_rejected():
    memory = GaussianMemory(4, DIM)
    mu, var = random_gaussians(2, seed=15, dtype=torch.float32)
    with pytest.raises(ValueError, match="shape"):
        memory.query(mu[:, :2], var[:, :2])
    with pytest.raises(ValueError, match="labels"):
        memory.update_(mu, var, torch.tensor([0]))
    with pytest.raises(ValueError, match=">= 0"):
        memory.update_(mu, var, torch.tensor([0, -1]))


# --- module state ------------------------------------------------------------------------
def test_state_is_buffers_not_parameters_and_writes_detach():
    memory = GaussianMemory(4, DIM)
    assert list(memory.parameters()) == []
    assert {"means", "variances", "labels", "counts", "ages", "valid"} <= set(memory.state_dict())
    mu, var = random_gaussians(2, seed=16, dtype=torch.float32)
    mu.requires_grad_(True)
    memory.update_(mu * 2, var, torch.tensor([0, 1]))
    assert not memory.means.requires_grad and memory.means.grad_fn is None


def test_state_dict_round_trip_continues_identically():
    memory = filled_memory(capacity=8, n_entries=8, age_noise=3.0)
    restored = GaussianMemory(8, DIM, age_noise=3.0, seed=123)
    restored.load_state_dict(copy.deepcopy(memory.state_dict()))
    assert torch.equal(restored.entry_features, memory.entry_features), "lift rebuilt on load"
    mu, var = random_gaussians(4, seed=17, dtype=torch.float32)
    for item in range(4):
        new_labels = torch.tensor([50 + item])
        assert torch.equal(
            memory.update_(mu[item : item + 1], var[item : item + 1], new_labels),
            restored.update_(mu[item : item + 1], var[item : item + 1], new_labels),
        )


def test_to_float64_recomputes_the_lift():
    memory = filled_memory()
    mu, var = random_gaussians(3, seed=18, dtype=torch.float32)
    float32_result = memory.query(mu, var, k=3)
    memory.to(torch.float64)
    assert memory.means.dtype == memory.entry_features.dtype == torch.float64
    assert memory.ages.dtype == torch.int64
    expected_lift = lift_entries(memory.means, memory.variances).features
    assert torch.equal(memory.entry_features[:, memory.valid].T, expected_lift[memory.valid])
    float64_result = memory.query(mu.double(), var.double(), k=3)
    assert torch.equal(float64_result.slots, float32_result.slots)
    assert float64_result.divergence.dtype == torch.float64


def test_cpu_scores_carry_the_entry_offsets_in_the_product():
    """The CPU search adds each entry's offset inside the matrix product (its last lift
    row against a 1 per query): scores equal the accelerator path's features . lift +
    offset, empty slots score +inf and never NaN, and growing keeps the offset row."""
    memory = GaussianMemory(6, DIM, dtype=torch.float64)
    mu, var = random_gaussians(4, seed=19)
    memory.update_(mu, var, torch.arange(4))
    queries = lift_queries(*random_gaussians(3, seed=20)).features
    expected = queries @ memory.entry_features + memory.entry_offsets
    scores = memory._entry_scores(queries, slice(0, 6))
    assert torch.allclose(scores[:, :4], expected[:, :4], rtol=1e-12, atol=1e-9)
    assert torch.equal(scores[:, 4:], torch.full((3, 2), torch.inf, dtype=torch.float64))
    memory.grow_(9)
    assert memory.entry_lift.shape == (4 * DIM + 1, 9)
    assert torch.isinf(memory.entry_offsets[4:]).all()
    assert torch.equal(memory._entry_scores(queries, slice(0, 9))[:, :4], scores[:, :4])


def test_save_load_round_trip(tmp_path):
    memory = filled_memory(age_noise=1.5)
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    loaded = GaussianMemory.load(path, map_location="cpu")
    assert (loaded.capacity, loaded.dim, loaded.age_noise, loaded.seed) == (10, DIM, 1.5, 0)
    for name, tensor in memory.state_dict().items():
        if name != "_extra_state":
            assert torch.equal(getattr(loaded, name), tensor), name
    mu, var = random_gaussians(3, seed=19, dtype=torch.float32)
    assert torch.equal(loaded.query(mu, var, k=2).slots, memory.query(mu, var, k=2).slots)
    into_existing = GaussianMemory(10, DIM)
    into_existing.restore_(path)
    assert torch.equal(into_existing.means, memory.means) and len(into_existing) == len(memory)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_unreadable_file_names_the_file(tmp_path, damage):
    path = tmp_path / "memory.safetensors"
    if damage != "missing":
        filled_memory().save(path)
        payload = path.read_bytes()
        path.write_bytes(payload[: len(payload) // 2] if damage == "truncated" else b"\x00" * 99)
    with pytest.raises(MemoryFileError, match="memory.safetensors"):
        GaussianMemory.load(path)


def test_mismatched_file_names_the_file(tmp_path):
    path = tmp_path / "memory.safetensors"
    filled_memory(capacity=10).save(path)
    with pytest.raises(MemoryFileError, match=r"memory\.safetensors.*'means'.*dim 5"):
        GaussianMemory(10, 5).restore_(path)
    with pytest.raises(MemoryFileError, match="capacity 7"):
        GaussianMemory(7, DIM).restore_(path)
    incomplete = tmp_path / "incomplete.safetensors"
    tensors = safetensors.torch.load_file(path)
    del tensors["ages"]
    with open(path, "rb") as handle:
        metadata = safetensors.safe_open(handle.name, "pt").metadata()
    safetensors.torch.save_file(tensors, incomplete, metadata=metadata)
    with pytest.raises(MemoryFileError, match=r"incomplete\.safetensors.*missing.*ages"):
        GaussianMemory.load(incomplete)
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(MemoryFileError, match=r"foreign\.safetensors.*format"):
        GaussianMemory.load(foreign)


# --- FAISS backend and reuse of the slot policy -----------------------------------------
def test_faiss_backend_matches_torch():
    pytest.importorskip("faiss")
    memory = filled_memory(capacity=12, n_entries=9)
    with_faiss = GaussianMemory(12, DIM, seed=0, search_backend="faiss")
    empty = with_faiss.query(*random_gaussians(2, seed=22, dtype=torch.float32), k=3)
    assert (empty.slots == NOT_FOUND).all() and torch.isinf(empty.divergence).all()
    with_faiss.load_state_dict(memory.state_dict())
    mu, var = random_gaussians(6, seed=20, dtype=torch.float32)
    expected, got = memory.query(mu, var, k=11), with_faiss.query(mu, var, k=11)
    assert torch.equal(got.slots, expected.slots)
    torch.testing.assert_close(got.divergence, expected.divergence)
    new_mu, new_var = random_gaussians(2, seed=21, dtype=torch.float32)
    with_faiss.update_(new_mu, new_var, torch.tensor([40, 41]))  # index must be rebuilt
    assert with_faiss.query(new_mu, new_var).labels[:, 0].tolist() == [40, 41]


def test_faiss_backend_without_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"gaussmem\[faiss\]"):
        GaussianMemory(4, DIM, search_backend="faiss")


class PointMemory(SlotMemory):
    """Point keys with squared Euclidean distance and mean merge: the policy is reusable."""

    def __init__(self, capacity: int, dim: int) -> None:
        super().__init__(capacity, seed=0)
        self.register_buffer("keys", torch.zeros(capacity, dim))

    def _lift_query_keys(self, keys):
        return keys[0]

    def _score_block(self, lifted_queries, query_rows, slot_rows, out=None):
        distance = torch.cdist(lifted_queries[query_rows], self.keys[slot_rows]) ** 2
        return distance.masked_fill(~self.valid[slot_rows], torch.inf)

    def _store_keys_(self, slots, keys, stores):
        self.keys[slots[stores]] = keys[0][stores]

    def _merge_keys_(self, slots, keys, merges):
        slots, points = slots[merges], keys[0][merges]
        totals = self.keys * self.counts[:, None]
        totals.index_add_(0, slots, points)
        counts = self.counts.index_add(0, slots, torch.ones_like(slots))
        self.keys[slots] = totals[slots] / counts[slots, None]


def test_slot_policy_works_with_point_keys():
    memory = PointMemory(3, 2)
    points = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.1, 0.0]])
    memory._commit_batch_(
        (points[:2],), torch.tensor([0, 1]), torch.tensor([-1, -1]), torch.arange(2)
    )
    nearest = memory._search_slots((points[2:],), 1)[:, 0]
    assert nearest.tolist() == [0]
    memory._commit_batch_((points[2:],), torch.tensor([0]), nearest, torch.arange(1))
    assert memory.counts.tolist() == [2, 1, 0] and memory.ages.tolist() == [0, 1, 2]
    torch.testing.assert_close(memory.keys[0], torch.tensor([0.05, 0.0]))


def test_grow_keeps_entries_and_answers_then_accepts_more() -> None:
    generator = torch.Generator().manual_seed(11)
    memory = GaussianMemory(6, 4, seed=0)
    mu = torch.randn(6, 4, generator=generator)
    var = torch.rand(6, 4, generator=generator) + 0.1
    memory.write_support_(mu, var, torch.arange(6))
    queries = torch.randn(5, 4, generator=generator)
    before = memory.query(queries, torch.ones(5, 4), k=3)
    memory.grow_(10)
    after = memory.query(queries, torch.ones(5, 4), k=3)
    assert memory.capacity == 10 and len(memory) == 6
    assert torch.equal(before.slots, after.slots) and torch.allclose(before.divergence,
                                                                     after.divergence)
    memory.write_support_(torch.randn(4, 4, generator=generator), torch.ones(4, 4),
                          torch.arange(6, 10))
    assert len(memory) == 10 and sorted(memory.labels.tolist()) == list(range(10))
    copy = GaussianMemory(10, 4)
    copy.load_state_dict(memory.state_dict())
    assert torch.equal(copy.query(queries, torch.ones(5, 4)).slots,
                       memory.query(queries, torch.ones(5, 4)).slots)
    with pytest.raises(ValueError, match="cannot shrink"):
        memory.grow_(4)


# --- untrusted files and non-finite values ----------------------------------------------
def edited_file(tmp_path, edit_tensors=None, edit_metadata=None):
    """A saved memory with its tensors and/or metadata edited, as a hostile file would be."""
    path = tmp_path / "memory.safetensors"
    filled_memory().save(path)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(str(path), "pt") as reader:
        metadata = reader.metadata()
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    edited = tmp_path / "edited.safetensors"
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    safetensors.torch.save_file(tensors, edited, metadata=metadata)
    return edited


def _set(name, slot, value):
    def edit(tensors):
        tensors[name][slot] = value
    return edit


@pytest.mark.parametrize(("edit", "problem"), [
    (_set("means", 0, float("nan")), "means are not all finite"),
    (_set("means", 8, float("inf")), "means are not all finite"),
    (_set("variances", 1, float("inf")), "variances are not all finite"),
    (_set("variances", 2, -1.0), r"variances are not all > 0"),
    (_set("variances", 9, 0.0), r"variances are not all > 0"),
    (_set("counts", 0, -3), r"counts are not all >= 0"),
    (_set("counts", 0, 0), "count below 1"),
    (_set("labels", 0, -1), "valid slot has a negative label"),
    (_set("labels", 9, -5), "below -1"),
    (_set("ages", 3, -1), r"ages are not all >= 0"),
    (_set("ages", 3, 2**62), "ages are too large"),
    (lambda tensors: tensors.update(labels=tensors["labels"].double()), "'labels'.*dtype F64"),
    (lambda tensors: tensors.update(counts=tensors["counts"].float() + 0.5), "'counts'.*dtype"),
    (lambda tensors: tensors.update(means=tensors["means"].half()), "'means'.*dtype F16"),
    (lambda tensors: tensors.update(variances=tensors["variances"].double()), "must agree"),
    (lambda tensors: tensors.update(valid=tensors["valid"].long()), "'valid'.*dtype"),
    (lambda tensors: tensors.update(means=tensors["means"][:, :2]), r"'means'.*shape \(10, 2\)"),
    (lambda tensors: tensors.update(labels=tensors["labels"][:5]), r"'labels'.*shape \(5,\)"),
    (lambda tensors: tensors.update(noise_generator_state=torch.zeros(7, dtype=torch.uint8)),
     "noise_generator_state"),
])
def test_a_file_with_bad_values_is_refused_naming_the_file(tmp_path, edit, problem):
    path = edited_file(tmp_path, edit_tensors=edit)
    with pytest.raises(MemoryFileError, match=rf"edited\.safetensors: .*{problem}"):
        GaussianMemory.load(path)
    with pytest.raises(MemoryFileError, match=problem):
        GaussianMemory(10, DIM).restore_(path)


@pytest.mark.parametrize(("key", "value"), [
    ("capacity", str(10**12)), ("capacity", "0"), ("capacity", "-4"), ("capacity", "1e3"),
    ("capacity", "9" * 5000), ("dim", "2.5"), ("dim", ""), ("seed", "-1"), ("seed", str(2**64)),
    ("age_noise", "nan"), ("age_noise", "-1"), ("age_noise", "inf"), ("age_noise", "x"),
])
def test_bad_metadata_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, key,
                                                               value):
    path = edited_file(tmp_path, edit_metadata=lambda metadata: metadata.update({key: value}))

    def no_construction(*args, **kwargs):
        raise AssertionError("a memory was allocated from unchecked metadata")

    monkeypatch.setattr(GaussianMemory, "__init__", no_construction)
    with pytest.raises(MemoryFileError, match=rf"edited\.safetensors: .*{key}"):
        GaussianMemory.load(path)


def test_non_finite_writes_are_rejected_and_leave_the_memory_alone():
    memory = filled_memory()
    before = copy.deepcopy(memory.state_dict())
    mu, var = random_gaussians(2, seed=40, dtype=torch.float32)
    for bad_mu, bad_var in [(mu.index_fill(1, torch.tensor([0]), torch.nan), var),
                            (mu, var.index_fill(1, torch.tensor([1]), torch.inf))]:
        with pytest.raises(ValueError, match="finite"):
            memory.update_(bad_mu, bad_var, torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="finite"):
            memory.write_support_(bad_mu, bad_var, torch.tensor([0, 1]))
    for name, tensor in memory.state_dict().items():
        if name != "_extra_state":
            assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_an_entry_with_non_finite_values_never_wins_a_search(value):
    """However it got in (here through load_state_dict), a NaN, inf or overflowing entry
    scores +inf: it never wins, and the other entries are found as before."""
    memory = filled_memory()
    mu, var = random_gaussians(5, seed=41, dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 0, 1])
    expected = brute_force_divergence(memory, mu, var)
    state = memory.state_dict()
    state["means"][2] = value
    expected[:, 2] = torch.inf
    poisoned = GaussianMemory(10, DIM, seed=0)
    poisoned.load_state_dict(state)
    found = poisoned.query(mu, var, k=6)  # five entries are left to find
    assert torch.equal(found.slots[:, :5], expected.topk(5, dim=1, largest=False).indices)
    assert (found.slots[:, 5] == NOT_FOUND).all() and torch.isinf(found.divergence[:, 5]).all()
    assert not (poisoned.nearest_with_label(mu, var, labels).slots == 2).any()
    assert not (poisoned.nearest_with_other_label(mu, var, labels).slots == 2).any()
    divergence, _ = poisoned.divergences_to_entries(mu, var)
    assert torch.isinf(divergence[:, 2]).all() and not divergence.isnan().any()
    slots = poisoned.update_(mu, var, labels)
    assert not (slots == 2).any() and torch.isfinite(poisoned.means[slots]).all()


# --- exact ranking over the whole clamped range ----------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    mean_centre=st.sampled_from([0.0, 1e3, -1e3]),
    mean_spread=st.sampled_from([1e-2, 1.0, 30.0, 1e3]),
    log_var_range=st.sampled_from([(-10.0, 10.0), (-10.0, -5.0), (5.0, 10.0), (-1.0, 1.0)]),
    k=st.sampled_from([1, 3]),
)
@pytest.mark.parametrize("search_screen", ["off", "bfloat16"])
def test_float32_search_ranks_exactly_at_extreme_legal_ranges(
    search_screen, seed, mean_centre, mean_spread, log_var_range, k
):
    """|mean| up to ~1e3 and log-variances across an encoder's clamp range [-10, 10]: the
    float32 memory returns the float64 oracle's nearest entries (up to float32 ties of the
    exact divergence), for plain, same-label and other-label searches, with its product
    in float32 and through the bfloat16 screen."""
    generator = torch.Generator().manual_seed(seed)
    dim, n_entries, n_queries = 16, 150, 40
    low, high = log_var_range

    def gaussians(count):
        mu = mean_centre + mean_spread * torch.randn(count, dim, generator=generator)
        log_var = low + (high - low) * torch.rand(count, dim, generator=generator)
        return mu, log_var.exp()

    memory = GaussianMemory(n_entries, dim, seed=0, max_block_elements=1024,
                            search_screen=search_screen)
    entry_mu, entry_var = gaussians(n_entries)
    memory.write_support_(entry_mu, entry_var, torch.arange(n_entries) % 7)
    query_mu, query_var = gaussians(n_queries)
    query_labels = torch.randint(7, (n_queries,), generator=generator)
    oracle = brute_force_divergence(memory, query_mu, query_var)
    same = query_labels[:, None] == memory.labels[None]
    cases = [
        (memory.query(query_mu, query_var, k=k).slots, oracle),
        (memory.nearest_with_label(query_mu, query_var, query_labels).slots[:, None],
         oracle.masked_fill(~same, torch.inf)),
        (memory.nearest_with_other_label(query_mu, query_var, query_labels).slots[:, None],
         oracle.masked_fill(same, torch.inf)),
    ]
    for slots, divergence in cases:
        best = divergence.topk(slots.shape[1], dim=1, largest=False).values
        got = divergence.gather(1, slots)
        assert torch.allclose(got, best, rtol=1e-5, atol=1e-9), (got - best).abs().max()


@pytest.mark.parametrize("n_columns", [5, 300, 1000, 1027])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_grouped_selection_finds_the_smallest_scores(n_columns, k):
    """The two-stage selection against one `topk`: same values, and columns that hold
    them, with ties (scores rounded to a few levels) and +inf (empty slots) in the rows."""
    generator = torch.Generator().manual_seed(n_columns + k)
    scores = torch.randn(6, n_columns, generator=generator)
    scores[1] = torch.round(scores[1])  # many ties
    scores[2, : n_columns // 2] = torch.inf
    scores[3] = torch.inf
    values, columns = smallest_per_row(scores, k)
    expected = torch.topk(scores, min(k, n_columns), dim=1, largest=False).values
    assert torch.equal(values, expected)
    assert torch.equal(scores.gather(1, columns), values)
    assert all(len(set(row)) == len(row) for row in columns.tolist())


@pytest.mark.parametrize("width", [1, 4, 10])
@pytest.mark.parametrize("block_widths", [[300, 300, 300], [64, 31, 700, 5, 200], [1000, 1000]])
def test_running_selection_over_blocks_finds_the_smallest_scores(width, block_widths):
    """Blocks merged one after another, reading only the groups whose minimum beats the
    running width-th best, against one `topk` over the whole row: same values, columns
    that hold them, with ties, +inf rows and a row whose best scores come last."""
    generator = torch.Generator().manual_seed(width + len(block_widths))
    scores = torch.randn(7, sum(block_widths), generator=generator)
    scores[1] = torch.round(scores[1])                      # many ties
    scores[2, : scores.shape[1] // 2] = torch.inf           # empty slots first
    scores[3] = torch.inf
    scores[4] = torch.linspace(1, -1, scores.shape[1])      # every block beats the last
    selection, start = RunningSmallest(width), 0
    for block_width in block_widths:
        selection.add(scores[:, start : start + block_width], start)
        start += block_width
    values, columns = selection.result()
    expected = torch.topk(scores, width, dim=1, largest=False).values
    assert torch.equal(values, expected)
    assert torch.equal(scores.gather(1, columns), values)
    # +inf places are reported as NOT_FOUND by the search, whatever their column.
    found = [[c for c, v in zip(row, vals, strict=True) if v < float("inf")]
             for row, vals in zip(columns.tolist(), values.tolist(), strict=True)]
    assert all(len(set(row)) == len(row) for row in found)


# --- the bfloat16 screen ----------------------------------------------------------------
def family_gallery(n_entries: int, n_families: int, dim: int, n_queries: int, seed: int):
    """Entries in families (members of one family close together, as photos of one
    person), queries new views of random entries: `(means, variances, query_means,
    query_variances)`, float32."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_families, dim, generator=generator)
    family = torch.randint(n_families, (n_entries,), generator=generator)
    means = centres[family] + 0.5 * torch.randn(n_entries, dim, generator=generator)
    variances = torch.exp(-4 * torch.rand(n_entries, dim, generator=generator))
    source = torch.randint(n_entries, (n_queries,), generator=generator)
    query_means = means[source] + 0.5 * variances[source].sqrt() * torch.randn(
        n_queries, dim, generator=generator)
    query_variances = variances[source] * torch.exp(
        0.3 * torch.randn(n_queries, dim, generator=generator))
    return means, variances, query_means, query_variances


@pytest.mark.parametrize("mean_centre", [0.0, 300.0])
def test_screen_products_bound_the_divergence_from_below(mean_centre):
    """Every screened product, read through `lower_bound_of`, is at most the float64
    divergence, across a wide range of variances; near the origin (where a trained
    encoder's means are) mostly within a tenth of it, so the bounds can rank."""
    generator = torch.Generator().manual_seed(3)
    dim = 8
    means = mean_centre + 3 * torch.randn(500, dim, generator=generator)
    variances = torch.exp(12 * torch.rand(500, dim, generator=generator) - 6)
    memory = GaussianMemory(500, dim, search_screen="bfloat16")
    memory.write_support_(means, variances, torch.arange(500))
    query_means, query_variances = means[:40] + 0.1, variances[:40] * 1.5
    lifted = memory._lift_query_keys((query_means, query_variances))
    lower = lower_bound_of(memory._score_block(lifted, slice(None), slice(0, 500)))
    exact = brute_force_divergence(memory, query_means, query_variances)
    assert (lower <= exact).all(), (lower - exact).max()
    if mean_centre == 0:
        assert ((exact - lower) / exact.clamp_min(1)).median() < 0.1


@pytest.mark.parametrize("n_queries", [1, 40])
def test_the_bfloat16_product_accumulates_in_float32_and_rounds_once(n_queries):
    """The screen's bound counts one rounding of each product to bfloat16. Terms of
    +-256 and a 1 that sum to -255 (a bfloat16 number) come out as -255 only if the
    partial sums (up to 256 * 129 + 1, where bfloat16's spacing is 256) are float32."""
    width = 4 * 64 + 5
    queries = torch.ones(n_queries, width, dtype=torch.bfloat16)
    entries = torch.zeros(300, width, dtype=torch.bfloat16)
    half = width // 2
    entries[:, :half] = 256.0
    entries[:, half: 2 * half] = -256.0
    entries[:, 0] = 1.0   # 129 * 256 + 1 - 130 * 256
    product = torch.mm(queries, entries.T)
    assert (product.float() == -255.0).all()


def test_screened_search_proves_the_nearest_without_searching_again(monkeypatch):
    """On a gallery of families the screen's bound is tight enough that no query needs
    a second search for its nearest entry (its family's other members may need one for
    the k-th), and the answers are the float64 oracle's."""
    again = []
    rescore = GaussianMemory._rescore_near
    monkeypatch.setattr(GaussianMemory, "_rescore_near",
                        lambda self, mu, *args: again.append(len(mu)) or rescore(self, mu, *args))
    means, variances, query_means, query_variances = family_gallery(4000, 40, 32, 100, seed=4)
    memory = GaussianMemory(4000, 32, search_screen="bfloat16")
    memory.write_support_(means, variances, torch.arange(4000))
    oracle = brute_force_divergence(memory, query_means, query_variances)
    found = memory.query(query_means, query_variances, k=1).slots
    assert torch.equal(found, oracle.topk(1, dim=1, largest=False).indices)
    assert again == []
    found = memory.query(query_means, query_variances, k=4).slots
    assert torch.equal(found, oracle.topk(4, dim=1, largest=False).indices)


@pytest.mark.parametrize("most_near", [64, 0])
def test_a_screen_too_loose_to_prove_falls_back_to_the_exact_search(monkeypatch, most_near):
    """With a bound so loose that nothing is proved, every query is searched again and
    still gets the oracle's answer: among the entries the screen cannot rule out, or
    (`_SCREEN_MOST_NEAR` 0: more than it allows) by float32 scores instead."""
    monkeypatch.setattr("gaussmem.bfloat16_screen._BFLOAT16_ROUNDOFF", 0.25)
    monkeypatch.setattr("gaussmem.memory._SCREEN_MOST_NEAR", most_near)
    means, variances, query_means, query_variances = family_gallery(600, 20, 8, 30, seed=5)
    memory = GaussianMemory(600, 8, search_screen="bfloat16")
    memory.write_support_(means, variances, torch.arange(600) % 50)
    oracle = brute_force_divergence(memory, query_means, query_variances)
    assert torch.equal(memory.query(query_means, query_variances, k=3).slots,
                       oracle.topk(3, dim=1, largest=False).indices)


def test_the_screen_follows_every_change_of_the_entries():
    """Merges, new entries, cleared slots, growth and a loaded state: a screened memory
    answers as one that multiplies in float32."""
    means, variances, query_means, query_variances = family_gallery(300, 10, 8, 40, seed=6)
    screened = GaussianMemory(200, 8, seed=0, search_screen="bfloat16")
    plain = GaussianMemory(200, 8, seed=0, search_screen="off")

    def same_answers():
        for mu, var in ((query_means, query_variances), (means[::7], variances[::7])):
            assert torch.equal(screened.query(mu, var, k=3).slots,
                               plain.query(mu, var, k=3).slots)

    for memory in (screened, plain):
        memory.write_support_(means[:150], variances[:150], torch.arange(150))
    same_answers()
    for memory in (screened, plain):
        memory.update_(means[150:200], variances[150:200], torch.arange(50))  # merges
        memory.clear_slots_(torch.arange(0, 150, 3))
    same_answers()
    for memory in (screened, plain):
        memory.grow_(300)
        memory.write_support_(means[200:], variances[200:], torch.arange(200, 300))
    same_answers()
    state = plain.state_dict()
    plain.load_state_dict(screened.state_dict())
    screened.load_state_dict(state)
    same_answers()


@pytest.mark.parametrize("search_screen", ["off", "bfloat16"])
def test_empty_and_cleared_slots_never_match_a_search(search_screen):
    """Asked for more entries than the memory holds, a search pads with NOT_FOUND and
    never names a cleared or never-written slot (the screen's rows for such slots carry
    an offset of +inf, never NaN)."""
    means, variances, query_means, query_variances = family_gallery(10, 3, 4, 40, seed=9)
    memory = GaussianMemory(64, 4, seed=0, search_screen=search_screen)
    memory.write_support_(means, variances, torch.arange(10))
    memory.clear_slots_(torch.tensor([3, 7]))
    found = memory.query(query_means, query_variances, k=12).slots
    assert (found[:, :8] >= 0).all() and (found[:, 8:] == NOT_FOUND).all()
    assert set(found[:, :8].flatten().tolist()) <= set(range(10)) - {3, 7}


def test_an_entry_or_query_beyond_bfloat16_never_makes_a_nan_bound():
    """A lifted feature at float32's largest value overflows bfloat16 (or the rescaled
    float32): that entry's bound becomes -inf (always a candidate, scored exactly), and
    a query so large gets no screen at all, instead of inf - inf = NaN in the product."""
    means, variances = random_gaussians(6, seed=10, dtype=torch.float32)
    lifted = lift_entries(means, variances)
    lift = torch.cat([lifted.features, lifted.offsets[:, None]], 1).T.contiguous()
    lift[DIM, 0] = torch.finfo(torch.float32).max
    screen = EntryScreen(lift, means, variances)
    queries = lift_queries(means, variances)
    products = screen.products(screen.queries(queries.features, queries.offsets),
                               slice(None), slice(None))
    assert not products.isnan().any()
    assert (products[:, 0] == -torch.inf).all() and products[:, 1:].isfinite().all()
    features = queries.features.clone()
    features[0, DIM] = torch.finfo(torch.float32).max
    assert screen.queries(features, queries.offsets) is None


@pytest.mark.parametrize("loose", [False, True])
def test_a_screened_search_past_excluded_slots_matches_brute_force(loose, monkeypatch):
    """What a gallery's in-order enrollment asks (`_search_slots` with `excluded`):
    screened, the excluded slots never come back and the rest rank as brute force does,
    also where a bound too loose to prove anything sends every query searching again."""
    if loose:
        monkeypatch.setattr("gaussmem.bfloat16_screen._BFLOAT16_ROUNDOFF", 0.25)
    means, variances, query_means, query_variances = family_gallery(200, 8, 8, 40, seed=11)
    memory = GaussianMemory(200, 8, seed=0, search_screen="bfloat16")
    memory.write_support_(means, variances, torch.arange(200))
    exact = brute_force_divergence(memory, query_means, query_variances)
    excluded = exact.argsort(1)[:, :3]
    found = memory._search_slots((query_means, query_variances), 2, certify=True,
                                 excluded=excluded)
    kept = exact.scatter(1, excluded, torch.inf)
    assert torch.equal(found, kept.topk(2, dim=1, largest=False).indices)


def test_divergences_to_entries_are_exact_whatever_the_screen():
    means, variances, query_means, query_variances = family_gallery(100, 5, 4, 10, seed=7)
    screened = GaussianMemory(100, 4, search_screen="bfloat16")
    screened.write_support_(means, variances, torch.arange(100))
    divergence, _ = screened.divergences_to_entries(query_means, query_variances)
    oracle = brute_force_divergence(screened, query_means, query_variances)
    assert torch.allclose(divergence.double(), oracle, rtol=1e-4, atol=1e-3)


def test_auto_screens_only_large_float32_cpu_searches(monkeypatch):
    memory = GaussianMemory(64, DIM)
    memory.write_support_(*random_gaussians(64, seed=8, dtype=torch.float32), torch.arange(64))
    monkeypatch.setattr("gaussmem.memory._cpu_has_native_bfloat16", lambda: True)
    assert not memory.screens_search(SCREEN_MIN_QUERIES)   # fewer slots than SCREEN_MIN_SLOTS
    monkeypatch.setattr("gaussmem.memory.SCREEN_MIN_SLOTS", 64)
    assert memory.screens_search(SCREEN_MIN_QUERIES)
    assert not memory.screens_search(SCREEN_MIN_QUERIES - 1)   # a matrix-vector product
    monkeypatch.setattr("gaussmem.memory._cpu_has_native_bfloat16", lambda: False)
    assert not memory.screens_search(SCREEN_MIN_QUERIES)   # emulated bfloat16 is slower
    wide = GaussianMemory(64, DIM, dtype=torch.float64, search_screen="bfloat16")
    wide.write_support_(*random_gaussians(64, seed=8), torch.arange(64))
    assert not wide.screens_search(1)     # a float64 memory is the reference
    assert not GaussianMemory(8, DIM, search_screen="bfloat16").screens_search(1)  # empty
    with pytest.raises(ValueError, match="search_screen"):
        GaussianMemory(8, DIM, search_screen="int8")
