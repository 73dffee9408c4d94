"""What a person watching `gaussmem train` sees: the progress bar (step N of the step
budget, time left) and one readable line per validation.

Kept apart from the training loop so the loop only reports numbers; nothing here
changes what a run learns.
"""

from __future__ import annotations

from collections.abc import Mapping

from tqdm import tqdm

from gaussmem.config import BudgetConfig, ValidationConfig

#: Step N of the budget, training time so far and the postfix (loss terms, images/s and
#: the time left, which `time_left_seconds` computes: tqdm's own estimate would count
#: the steps only, not a wall-clock cap).
BAR_FORMAT = "{desc}step {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def training_bar(budget: BudgetConfig, first_step: int, enabled: bool) -> tqdm:
    """The training progress bar, opened at `first_step` (a resumed run's step)."""
    return tqdm(total=budget.max_steps, initial=first_step, disable=not enabled,
                bar_format=BAR_FORMAT, dynamic_ncols=True)


def time_left_seconds(budget: BudgetConfig, step: int, elapsed_seconds: float,
                      seconds_per_step: float | None) -> float | None:
    """Training seconds until the budget ends: the remaining steps at the current pace,
    or the wall-clock cap's remaining seconds where that comes first; None before the
    pace is known in a run without a wall-clock cap."""
    candidates = []
    if seconds_per_step is not None:
        candidates.append(max(0, budget.max_steps - step) * seconds_per_step)
    if budget.max_minutes:
        candidates.append(max(0.0, 60.0 * budget.max_minutes - elapsed_seconds))
    return min(candidates) if candidates else None


def format_left(seconds: float | None) -> str:
    """"12:05" (minutes:seconds, tqdm's format), "?" while unknown."""
    return "?" if seconds is None else tqdm.format_interval(seconds)


def train_postfix(values: Mapping[str, float], terms: tuple[str, ...]) -> dict[str, str]:
    """The bar's loss terms and images/s from a logging window's means."""
    postfix = {term: f"{values[term]:.3f}" for term in terms if term in values}
    postfix["img/s"] = f"{values['images_per_second']:.0f}"
    return postfix


def validation_line(validation: ValidationConfig, budget: BudgetConfig, step: int,
                    values: Mapping[str, float], best_accuracy: float, best_step: int) -> str:
    """One line per validation: the task, its accuracy ± 95% CI, and the best so far
    (the checkpoint kept as best), e.g.
    "step 1,200/30,000 (4.1 min): val 20-way 1-shot 96.12% ± 0.35, best 96.12% (step 1,200)".
    """
    new_best = " (new best)" if best_step == step else ""
    return (f"step {step:,}/{budget.max_steps:,} ({values['minutes']:.1f} min): val "
            f"{validation.n_way}-way {validation.n_shot}-shot {values['val_accuracy']:.2f}% "
            f"± {values['val_ci95']:.2f}, best {best_accuracy:.2f}% (step {best_step:,})"
            f"{new_best}")
