"""Append-only training metrics: JSONL always, TensorBoard when asked for.

JSONL (one object per line, `{"step", "kind", ...}`) is the record results are built
from; each line is flushed so a crashed run keeps everything logged before the crash. A
run killed (or out of disk space) in the middle of a line leaves that line torn: readers
drop it, and a resumed run rewrites the file without it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gaussmem.errors import GaussmemError, MetricsError
from gaussmem.plumbing.atomic import write_text_atomic


class MetricsLog:
    """Writes `metrics.jsonl` in the run directory and optionally TensorBoard events."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = False,
                 resumed_at: int | None = None) -> None:
        """`resumed_at`: the step a resumed run goes on from. Records past it were
        logged after its checkpoint by a run that was then stopped; the resumed run
        logs those steps again, so they are dropped rather than kept twice."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None and self.path.exists():
            kept = [record for record in read_metrics(self.path)
                    if record["step"] <= resumed_at]
            write_text_atomic(self.path, "".join(json.dumps(record) + "\n"
                                                 for record in kept))
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise GaussmemError("tensorboard=true needs the `tensorboard` package: "
                                    "pip install tensorboard") from error
            self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Record `values` (numbers, strings) of type `kind` ("train", "val") at `step`."""
        clean = {key: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for key, v in values.items()}
        try:
            self._handle.write(json.dumps({"kind": kind, "step": step, **clean}) + "\n")
            self._handle.flush()
        except OSError as error:
            # A write on an open file names no file; the run's error message needs it.
            raise OSError(error.errno, error.strerror, str(self.path)) from error
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._handle.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl` file, less a torn last line (see the module
    docstring); a damaged line before it is a `MetricsError`."""
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise MetricsError(f"{path}, line {number}: not a JSON record ({error})") from None
    return records
