"""Write results/ensemble_views.md from every results/ensemble_views/<split>/*.json.

    python scripts/make_ensemble_views_table.py

Each JSON is one call of experiments/ensemble_views.py: checkpoints alone, over fixed
test-time views, and together (a seed ensemble), on the same seeded episodes. The
validation files come first: they are where the views and the ensemble were chosen;
the test files only score that choice.
"""

from __future__ import annotations

import json
from pathlib import Path

from make_results_table import PAPER_TABLE1, PAPER_TABLE2

from gaussmem.plumbing.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "results"
SPLIT_ORDER = {"val": 0, "test": 1}
#: The summary's tables: Table 1's and Table 2's cells in the paper's order, each beside
#: the published figures it is measured against.
SUMMARY_TABLES = {
    "Table 1": (("5w1s", "5w5s", "20w1s", "20w5s"), PAPER_TABLE1["kaiser"]),
    "Table 2": (("100w1s", "100w5s", "400w1s", "400w5s"), PAPER_TABLE2["mavae"]),
}
#: Summary rows: label -> combination prefix; a prefix naming one combination per
#: checkpoint shows the range over them.
SUMMARY_ROWS = {"each checkpoint alone": "plain/", "each with the views": "views/",
                "ensemble": "ensemble/plain", "ensemble with the views": "ensemble/views"}


def hardware(report: dict) -> str:
    machine = report["hardware"]
    return machine.get("gpu") or f"{machine['cpu']}, {machine['cpu_cores']} cores"


def percent(summary: dict, signed: bool = False) -> str:
    sign = "+" if signed else ""
    digits = 3 if signed else 2
    return f"{summary['mean']:{sign}.{digits}f} ± {summary['ci95']:.{digits}f}"


def render_report(name: str, report: dict) -> list[str]:
    """One call's section: every combination but the single views, then what each single
    view scores on its own, as a range over the checkpoints."""
    views = [view for view in report["views"] if view != "plain"]
    lines = [f"### {report['split']}: {', '.join(report['checkpoints'])}", "",
             f"`{name}`: `{report['command']}`; {report['dataset']}, seed {report['seed']}, "
             f"views: {', '.join(views) or 'none'}; {hardware(report)}.", "",
             "| cell | combination | episodes | accuracy | paired gain over plain |",
             "|---|---|---:|---:|---:|"]
    for cell, rows in report["cells"].items():
        for combination, row in rows.items():
            if combination.startswith("single_view/"):
                continue
            gain = row.get("gain_over_plain")
            lines.append(f"| {cell} | {combination} | {row['accuracy']['episodes']} | "
                         f"{percent(row['accuracy'])} | "
                         f"{percent(gain, signed=True) if gain else '-'} |")
    for cell, rows in report["cells"].items():
        singles: dict[str, list[float]] = {}
        for combination, row in rows.items():
            if combination.startswith("single_view/"):
                view = combination.rsplit("/", 1)[1]
                singles.setdefault(view, []).append(row["gain_over_plain"]["mean"])
        if singles:
            spans = ", ".join(f"{view} {min(gains):+.3f} to {max(gains):+.3f}"
                              if len(gains) > 1 else f"{view} {gains[0]:+.3f}"
                              for view, gains in singles.items())
            lines += ["", f"{cell}, each view alone (gain over plain): {spans}."]
    return [*lines, ""]


def summary_cell(rows: dict | None, prefix: str) -> str:
    """One summary cell: the combination's accuracy, or the lowest to highest over the
    checkpoints when `prefix` names one combination per checkpoint."""
    matches = [row["accuracy"] for name, row in (rows or {}).items()
               if name.startswith(prefix)]
    if not matches:
        return "-"
    if len(matches) == 1:
        return percent(matches[0])
    means = [accuracy["mean"] for accuracy in matches]
    low, high = f"{min(means):.2f}", f"{max(means):.2f}"
    return low if low == high else f"{low}–{high}"


def column_title(cell: str) -> str:
    """`"20w5s"` -> `"20-way 5-shot"`."""
    way, _, shot = cell.removesuffix("s").partition("w")
    return f"{way}-way {shot}-shot"


def render_summary(reports: dict[str, dict]) -> list[str]:
    """The test calls side by side in the paper's table layouts, beside the published
    figures each is measured against (Kaiser et al.'s for Table 1, the paper's own for
    Table 2); a call appears in each table whose cells it scored."""
    tests = {name: report for name, report in reports.items() if report["split"] == "test"}
    if not tests:
        return []
    machines = ", ".join(sorted({hardware(report) for report in tests.values()}))
    lines = ["## Summary: test split", "",
             "A range is the lowest to the highest checkpoint alone (each ± about the CI "
             f"of the rows below). Scored on {machines}; each call's command is in "
             "`results/ensemble_views.md`."]
    for table, (cells, papers) in SUMMARY_TABLES.items():
        scored = [report for report in tests.values()
                  if any(cell in report["cells"] for cell in cells)]
        if not scored:
            continue
        lines += ["", f"{table}'s cells:", "",
                  "| checkpoints | combination | "
                  + " | ".join(column_title(cell) for cell in cells) + " |",
                  "|---|---|" + "---|" * len(cells)]
        lines += [f"| {paper} | paper | " + " | ".join(f"{value}" for value in figures) + " |"
                  for paper, figures in papers.items()]
        for report in scored:
            runs = ", ".join(f"`{run}`" for run in report["checkpoints"])
            views = ", ".join(view for view in report["views"] if view != "plain")
            for index, (label, prefix) in enumerate(SUMMARY_ROWS.items()):
                shown = label.replace("the views", views)
                row = [summary_cell(report["cells"].get(cell), prefix) for cell in cells]
                # The checkpoints are named once, on their group's first row.
                lines.append(f"| {runs if index == 0 else ''} | {shown} | "
                             + " | ".join(row) + " |")
    return [*lines, ""]


def render(reports: dict[str, dict]) -> str:
    lines = ["# Seed ensembles and test-time views (beyond the paper)", "",
             "Generated by `python scripts/make_ensemble_views_table.py` from "
             "`results/ensemble_views/<split>/*.json` (each written by "
             "`experiments/ensemble_views.py`, whose docstring defines every combination); "
             "do not edit by hand. A member is one checkpoint looking at one view of the "
             "images; a combination adds its members' scores (-SKL to each label's nearest "
             "memory entry), so it multiplies their similarities. `plain/<run>` is "
             "`gaussmem evaluate` on the same episodes. The paired gain is the mean "
             "per-episode accuracy difference from the plain images on the same episodes "
             "(for an ensemble, from the mean of its checkpoints alone), ± its 95% CI. "
             "Validation sections first: the choices were made there; the test sections "
             "score only what validation chose.", ""]
    lines += render_summary(reports)
    for name, report in sorted(reports.items(),
                               key=lambda item: (SPLIT_ORDER.get(item[1]["split"], 2),
                                                 item[0])):
        lines += render_report(name, report)
    return "\n".join(lines)


def main() -> None:
    reports = {path.name: json.loads(path.read_text())
               for path in sorted((RESULTS / "ensemble_views").glob("*/*.json"))}
    if not reports:
        raise SystemExit(f"no *.json under {RESULTS / 'ensemble_views'}: run "
                         "experiments/ensemble_views.py first")
    out = RESULTS / "ensemble_views.md"
    write_text_atomic(out, render(reports))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
