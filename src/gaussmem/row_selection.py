"""Each row's smallest scores, selected from a score matrix or from its blocks.

A memory search scores its queries against every slot, block by block, and keeps a few
smallest scores per query. On the CPU one `torch.topk` over a wide row costs several times
a single pass over it, so these read a row in groups of `SELECTION_GROUP` columns and look
inside only the groups whose minimum can still matter.
"""

from __future__ import annotations

import torch

#: Columns per group in the two-stage selections.
SELECTION_GROUP = 32


def smallest_per_row(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to k smallest scores per row, ascending, with their column indices; equal
    scores may come back in any order.

    A wide row is selected in two stages: the minimum of each group of `SELECTION_GROUP`
    columns, the k groups of smallest minima, then the k smallest of those groups'
    columns. The i-th smallest score's group has a minimum no larger than it, and so does
    every group ranked before that one, which therefore holds i scores no larger: the two
    stages find the same values as one `topk` over the row, which on the CPU costs several
    times the group minima's single pass.
    """
    n_rows, n_columns = scores.shape
    k = min(k, n_columns)
    if k == 1:
        values, indices = scores.min(dim=1, keepdim=True)
        return values, indices
    group = SELECTION_GROUP
    n_groups = n_columns // group
    if n_groups <= 4 * k:
        return torch.topk(scores, k, dim=1, largest=False)
    grouped = n_groups * group
    minima = scores[:, :grouped].unflatten(1, (n_groups, group)).amin(dim=2)
    groups = torch.topk(minima, k, dim=1, largest=False, sorted=False).indices
    offsets = torch.arange(group, device=scores.device)
    columns = (groups[:, :, None] * group + offsets).flatten(1)
    if grouped < n_columns:  # the last, partial group is always a candidate
        tail = torch.arange(grouped, n_columns, device=scores.device)
        columns = torch.cat([columns, tail.expand(n_rows, -1)], 1)
    values, picked = torch.topk(scores.gather(1, columns), k, dim=1, largest=False)
    return values, columns.gather(1, picked)


class RunningSmallest:
    """The `width` smallest scores per row over a row's blocks of columns, ascending, with
    their columns; equal scores may come back in any order.

    On an accelerator each block's best `width` are kept and selected from once at the
    end: choosing which columns to read would make the host wait for the device. On the
    CPU the best so far are merged after every block, and a block's group of
    `SELECTION_GROUP` columns is read only where its minimum is below the row's current
    `width`-th best: past the first blocks few groups are, so a block costs one pass
    for the group minima instead of `smallest_per_row`'s selections over the whole block.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.values: torch.Tensor | None = None
        self.columns: torch.Tensor | None = None
        self._blocks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, scores: torch.Tensor, start: int) -> None:
        """Take in the block `scores` `(rows, columns)`, whose first column is `start`."""
        passing = self._groups_to_read(scores)
        if passing is None:   # select from the whole block
            values, columns = smallest_per_row(scores, self.width)
            columns.add_(start)
            if scores.device.type == "cpu":
                self._merge(values, columns)
            else:
                self._blocks.append((values, columns))
            return
        rows, groups, counts, most = passing
        group = SELECTION_GROUP
        n_rows, n_columns = scores.shape
        grouped = n_columns // group * group
        values, columns = [], []
        if most:
            # Each row's passing groups side by side, padded with +inf to the most any row has.
            rank = torch.arange(len(rows)) - (counts.cumsum(0) - counts)[rows]
            read = groups[:, None] * group + torch.arange(group)
            padded = torch.full((n_rows, most, group), torch.inf, dtype=scores.dtype)
            padded[rows, rank] = scores[rows[:, None], read]
            padded_columns = torch.zeros(padded.shape, dtype=torch.int64)
            padded_columns[rows, rank] = read
            values.append(padded.flatten(1))
            columns.append(padded_columns.flatten(1))
        if grouped < n_columns:   # a partial last group is always read
            values.append(scores[:, grouped:])
            columns.append(torch.arange(grouped, n_columns).expand(n_rows, -1))
        if values:
            self._merge(torch.cat(values, 1), torch.cat(columns, 1) + start)

    def _groups_to_read(self, scores: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
        """`(rows, groups, groups per row, the most of any row)` of the block's whole
        groups whose minimum is below their row's current `width`-th best; None where the
        whole block is selected from instead: on an accelerator, before `width`
        candidates are known, in a block narrower than a group, or where some row has
        many groups to read."""
        if (scores.device.type != "cpu" or self.values is None
                or self.values.shape[1] < self.width):
            return None
        n_rows, n_columns = scores.shape
        n_groups = n_columns // SELECTION_GROUP
        if n_groups == 0:
            return None
        minima = scores[:, : n_groups * SELECTION_GROUP].unflatten(
            1, (n_groups, SELECTION_GROUP)).amin(dim=2)
        rows, groups = (minima < self.values[:, -1:]).nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=n_rows)
        most = int(counts.max())
        if most > 4 * self.width:   # a row may take its best from anywhere in the block
            return None
        return rows, groups, counts, most

    def _merge(self, values: torch.Tensor, columns: torch.Tensor) -> None:
        """Keep the best `width` of the best so far and `values` (any order)."""
        if self.values is not None:
            values = torch.cat([self.values, values], 1)
            columns = torch.cat([self.columns, columns], 1)
        elif values.shape[1] <= self.width:   # a first block's `smallest_per_row`: sorted already
            self.values, self.columns = values, columns
            return
        self.values, order = torch.topk(values, min(self.width, values.shape[1]), dim=1,
                                        largest=False)
        self.columns = columns.gather(1, order)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(values, columns)`, each `(rows, <= width)`, ascending."""
        if self._blocks:
            values, order = smallest_per_row(torch.cat([v for v, _ in self._blocks], 1), self.width)
            return values, torch.cat([c for _, c in self._blocks], 1).gather(1, order)
        assert self.values is not None and self.columns is not None, "no block was added"
        return self.values, self.columns
