"""Generate results/README.md (the headline and full tables), results/omniglot.md and
results/lfw.md (every run in detail) from the result JSON files in results/.

    python scripts/make_results_table.py [--results results]

Reads every run's records under `results/<dataset>/<run>/` (written by
experiments/train_cpu_quick.py: a training record and one `gaussmem evaluate` report per
cell, each with the run's identity under "run"), and lays them out as
the paper's tables, grouped by method (the figure its paper reports, then our runs of
it, each cell mean ± 95% CI with its episode count, and each row's budget and
hardware), followed by each run's validation accuracy per minute of training. Omniglot:
Table 1 (5/20-way) and Table 2 (100/400-way) on the vinyals split, and Table 1's layout
again for runs on Kaiser et al.'s (lake) split. LFW-a: Table 3 (5/20/80-way).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from collections import defaultdict
from pathlib import Path

from systems_tables import systems_section

from gaussmem.config import TrainConfig, from_dict, to_dict
from gaussmem.errors import ConfigError
from gaussmem.plumbing.atomic import write_text_atomic
from gaussmem.plumbing.hardware import cpu_in_words
from gaussmem.presets import preset

ROOT = Path(__file__).resolve().parents[1]

TABLE1 = [(5, 1), (5, 5), (20, 1), (20, 5)]
TABLE2 = [(100, 1), (100, 5), (400, 1), (400, 5)]
#: Methods in table order, with the names rows use.
METHODS = {"protonet": "Prototypical Networks", "matching": "Matching Networks",
           "kaiser": "Kaiser et al. memory", "mavae": "MA-VAE"}
#: Published figures by method (the numbers in Tseran & Harada's Table 1, from each
#: method's own paper).
PAPER_TABLE1 = {
    "protonet": {"Prototypical Networks (Snell et al. 2017)": [98.8, 99.7, 96.0, 98.9]},
    "matching": {"Matching Networks (Vinyals et al. 2016)": [98.1, 98.9, 93.8, 98.5]},
    "kaiser": {"Kaiser et al. 2017 memory": [98.4, 99.6, 95.0, 98.6]},
    "mavae": {"Tseran & Harada, n_train = n_test": [97.4, 98.9, 92.3, 98.4],
              "Tseran & Harada, n_train < n_test": [None, None, 92.6, 97.9]},
}
PAPER_TABLE2 = {"mavae": {"Tseran & Harada": [82.2, 92.8, 71.4, 87.1]}}
TABLE3 = [(5, 1), (5, 5), (20, 1), (20, 5), (80, 1), (80, 5)]
PAPER_TABLE3 = {"mavae": {"Tseran & Harada": [64.4, 84.0, 39.9, 63.4, 22.7, 44.0]}}
#: The paper's presets with a fixed step budget (30,000 steps; a GPU's work, or hours on
#: a CPU): a row says "not yet run" until a training record has trained one of them whole.
#: Table 2's caption: 100-way from 5-way tasks, 400-way from 20-way tasks, batch 20.
TABLE1_FULL_BUDGET_PRESETS = ("omniglot-5way", "omniglot-20way", "omniglot-5way-to-20way")
TABLE2_FULL_BUDGET_PRESETS = ("omniglot-parallel", "omniglot-parallel-20way")
#: The settings that decide what a run learns. The rest (device, threads, precision,
#: logging and checkpoint cadence, budget, validation, the test shape a preset is meant
#: for) do not, so omniglot-5way and omniglot-5way-to-20way, which differ only in
#: `eval_n_way`, train the same model: one run of either serves both rows of Table 1.
#: Precision is the device's choice under the presets' "auto", as the device is.
LEARNING_SETTINGS = ("method", "model", "loss", "episodes", "similarity", "optim", "augment")


def learning_settings(config: dict) -> dict | None:
    """A saved config's settings that decide what it learns (`LEARNING_SETTINGS`, plus
    the classes it trains on), with the defaults of fields added since it was saved;
    None for a config this version can no longer read."""
    try:
        config = to_dict(from_dict(TrainConfig, config))
    except ConfigError:
        return None
    data = config["data"]
    return {**{key: config[key] for key in LEARNING_SETTINGS},
            "train_classes": (data["dataset"], data["scheme"], data["train_subset"])}


@functools.cache
def preset_learning_settings(name: str) -> dict:
    """`learning_settings` of preset `name` (asked for every record and table row)."""
    return learning_settings(to_dict(preset(name)))


def trains_like(record: dict, name: str) -> bool:
    """Whether the record's run learned with preset `name`'s settings (any seed, device,
    budget or validation cadence)."""
    if "config" not in record:  # a record from before configs were kept
        return False
    settings = learning_settings(record["config"])
    return settings is not None and settings == preset_learning_settings(name)


def full_budget_presets(record: dict, presets: tuple[str, ...]) -> list[str]:
    """The presets of `presets` whose whole step budget the record's run trained."""
    return [name for name in presets if trains_like(record, name)
            and record["steps"] >= preset(name).budget.max_steps]


def not_run_rows(training: dict[str, dict], presets: tuple[str, ...], n_cells: int
                 ) -> list[str]:
    """A "not yet run" row per preset no record has trained whole, naming the longest
    shorter run of its settings."""
    rows = []
    for name in presets:
        runs = sorted((record["steps"], tag) for tag, record in training.items()
                      if trains_like(record, name))
        full_steps = preset(name).budget.max_steps
        if runs and runs[-1][0] >= full_steps:
            continue
        status = ("not yet run on a GPU" if not runs else
                  f"not yet run (`{runs[-1][1]}` trained {runs[-1][0]:,} steps)")
        rows.append(f"| ours: MA-VAE, {name} (full budget: {full_steps:,} steps) |"
                    f"{' – |' * n_cells} {status} |")
    return rows


Cells = dict[str, dict[tuple[int, int], dict]]


def load(results: Path, dataset: str = "omniglot"
         ) -> tuple[Cells, dict[str, dict], dict[str, dict]]:
    """(support-query cells by tag, training records by tag, online reports by tag and
    stream) of `dataset`'s runs, `results/<dataset>/<run>/*.json`. A record says what it
    is and which run made it (its "run" identity); its file name is never read."""
    cells: Cells = defaultdict(dict)
    training: dict[str, dict] = {}
    online: dict[str, dict] = {}
    for path in sorted((results / dataset).glob("*/*.json")):
        data = json.loads(path.read_text())
        tag = data["run"]["tag"]
        if data.get("kind") == "training":
            training[tag] = data
        elif data.get("protocol") == "support-query":
            cells[tag][(data["n_way"], data["n_shot"])] = data
        elif data.get("protocol") == "online":
            online[f"{tag}, {data['n_way']}-class stream"] = data
    return cells, training, online


def paper_row(name: str, values: list[float | None]) -> str:
    shown = ["–" if v is None else f"{v:.1f}" for v in values]
    return f"| {name} | " + " | ".join(shown) + " | paper |"


def method_of(cells: dict[tuple[int, int], dict]) -> str:
    """The method a tag's checkpoint was trained as (reports before baselines: mavae)."""
    return next(iter(cells.values()))["checkpoint"].get("method", "mavae")


def our_row(tag: str, cells: dict[tuple[int, int], dict], layout: list[tuple[int, int]],
            training: dict | None) -> str:
    shown = []
    for key in layout:
        if key not in cells:
            shown.append("not run")
            continue
        accuracy = cells[key]["result"]["accuracy"]
        shown.append(f"{accuracy['mean']:.1f} ± {accuracy['ci95']:.1f} "
                     f"({accuracy['episodes']} ep.)")
    name = METHODS.get(method_of(cells), method_of(cells))
    return (f"| ours: {name}, `{tag}` | " + " | ".join(shown)
            + f" | {budget(tag, cells, training)} |")


def budget(tag: str, cells: dict[tuple[int, int], dict], training: dict | None) -> str:
    any_cell = next(iter(cells.values()))
    # The training record names the training threads; a cell's, its evaluation's.
    hardware = (training or {}).get("hardware") or any_cell.get("hardware", {})
    if (training or {}).get("device", "cpu").startswith("cuda"):
        device = f"1 GPU ({hardware.get('gpu', '?')})"
    else:
        device = (f"{cpu_in_words(hardware)}, "
                  f"{counted(hardware.get('torch_threads', '?'), 'training thread')}")
    minutes = any_cell["checkpoint"]["train_minutes"]
    step = any_cell["checkpoint"]["step"]
    if training and not validated(training):
        text = (f"{training['train_minutes']:.1f}-min run on {training_classes(training)}, "
                f"no validation; last checkpoint (step {step}); {device}")
    elif training:
        text = (f"{training['train_minutes']:.1f}-min run; checkpoint (best on validation) "
                f"at step {step}, {minutes:.1f} min; {device}")
    else:
        text = f"checkpoint at step {step}, {minutes:.1f} training minutes; {device}"
    full = full_budget_presets(training or {}, TABLE1_FULL_BUDGET_PRESETS
                               + TABLE2_FULL_BUDGET_PRESETS)
    if full:
        names = " and ".join(f"`{name}`" for name in full)
        text = f"full budget of {names} ({training['steps']:,} steps); {text}"
    if training and training.get("images_per_second_overall"):
        text += f", {training['images_per_second_overall']:.0f} images/s overall"
    if training and training.get("concurrent_runs"):
        text += (f" (device shared with "
                 f"{counted(training['concurrent_runs'], 'other training')})")
    precision = any_cell.get("train_config", {}).get("precision", "float32")
    if precision != "float32":
        text += f", {precision} autocast"
    return text


def counted(number: object, noun: str) -> str:
    """"1 other run", "4 other runs" ("?" where a record does not say)."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def validated(record: dict) -> bool:
    """Whether the run validated (and so picked its best checkpoint on validation)."""
    return record.get("config", {}).get("data", {}).get("val_subset", "val") is not None


def training_classes(record: dict) -> str:
    """What a run trained on, in words: the final fits train on train + val."""
    data = record.get("config", {}).get("data", {})
    subset = data.get("train_subset", "train")
    if data.get("scheme") == "lake":
        return "the lake split's train classes (background alphabets)"
    return {"trainval": "train + val"}.get(subset, subset)


def method_rows(cells: Cells, training: dict[str, dict], layout: list[tuple[int, int]],
                paper: dict[str, dict[str, list[float | None]]]) -> list[str]:
    """Per method in `METHODS` order: its paper's row(s), then our runs of it."""
    rows = []
    for method in METHODS:
        rows += [paper_row(name, values) for name, values in paper.get(method, {}).items()]
        rows += [our_row(tag, by_cell, layout, training.get(tag))
                 for tag, by_cell in sorted(cells.items())
                 if set(layout) & set(by_cell) and method_of(by_cell) == method]
    return rows


def progress_lines(record: dict) -> list[str]:
    """Validation accuracy per minute of training (what each minute of the budget buys)."""
    points = record.get("validation") or []
    if not points:
        return []
    stride = max(1, len(points) // 10)  # about ten points; always the last
    points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    shown = ", ".join(f"{p['minutes']:.1f} min: {p['accuracy']:.1f}" for p in points)
    return [f"- validation {selection_task(record)} by training minute: {shown}"]


def selection_task(record: dict) -> str:
    """The validation task that picked the record's best checkpoint, from its config
    (5-way 1-shot over 200 episodes was the default before 20-way 1-shot over 1,000)."""
    validation = record.get("config", {}).get("validation", {})
    return (f"{validation.get('n_way', 5)}-way {validation.get('n_shot', 1)}-shot "
            f"({validation.get('episodes', 200)} episodes)")


def render_lfw(cells: Cells, training: dict[str, dict]) -> str:
    """results/lfw.md: the paper's Table 3 layout, then the training runs."""
    lines = ["# LFW-a results", "",
             "Generated by `python scripts/make_results_table.py` from `results/lfw/*/*.json`; "
             "do not edit by hand. Test people of the committed paper split (80 people with "
             ">= 5 photos, photos mirrored, 84x84), support-query protocol, a photo and its "
             "mirror never on both sides of an episode, queries per person = as many as "
             "every person has room for (8 for 1-shot, 4 for 5-shot), sampler seed 0; ours "
             "are mean ± 95% CI (1.96 std / sqrt(episodes)). Checkpoints are selected on "
             "the 43 validation people only (cut from the paper's 343 training people; the "
             "other 300 train).", "",
             "## Table 3: 5-, 20- and 80-way", "",
             "| model | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | "
             "80-way 1-shot | 80-way 5-shot | budget / hardware |",
             "|---|---|---|---|---|---|---|---|"]
    lines += method_rows(cells, training, TABLE3, PAPER_TABLE3)
    lines += not_run_rows(training, ("lfw-5way",), 6)
    lines += ["", "The baselines' papers report no LFW-a results; theirs here are ours only."]
    lines += training_sections(training, time_to_97=False)
    lines += evaluation_commands(cells)
    return "\n".join(lines)


def split_scheme(by_cell: dict[tuple[int, int], dict]) -> str:
    """The class split a tag's cells were tested on: "vinyals" or "lake" (the scheme in
    an evaluation's `dataset`, e.g. "omniglot/lake/test")."""
    return next(iter(by_cell.values())).get("dataset", "omniglot/vinyals/test").split("/")[1]


def lake_section(cells: Cells, training: dict[str, dict], online: dict[str, dict]
                 ) -> list[str]:
    """Runs trained and tested on Kaiser et al.'s own split, beside their figures, in the
    support-query protocol and (where evaluated) the online one."""
    if not cells:
        return []
    lines = ["", "## Kaiser et al.'s split (lake)", "",
             "Kaiser et al. 2017 train on the background alphabets (964 characters, each "
             "rotation its own class: 3,856 classes) and test on the evaluation alphabets' "
             "659 characters, unrotated (Lake et al.'s split; "
             "`research/learning_to_remember_rare_events/data_utils.py` in "
             "tensorflow/models), so their figures in Table 1 are not on the vinyals test "
             "classes. The rows here were trained and tested on their split "
             "(`--set data.scheme=lake --set data.val_subset=none`: the split has no "
             "validation classes, so a recipe and step budget chosen on vinyals validation, "
             "and the last checkpoint), with the support-query protocol above.", "",
             "| model | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | "
             "budget / hardware |", "|---|---|---|---|---|---|"]
    lines += method_rows(cells, training, TABLE1, {"kaiser": PAPER_TABLE1["kaiser"]})
    return lines + online_rows(online)


def online_rows(online: dict[str, dict]) -> list[str]:
    """Table 1's cells in the online protocol: k-shot = accuracy on a class's (k+1)-th
    showing in a stream of N classes (`gaussmem evaluate --protocol online`), one row per
    run that has both the 5- and the 20-class stream."""
    streams: dict[str, dict[int, dict]] = defaultdict(dict)
    for report in online.values():
        streams[report["run"]["tag"]][report["n_way"]] = report["result"]["per_shot"]
    rows = []
    for tag, by_way in sorted(streams.items()):
        if not all(n_way in by_way and str(n_shot) in by_way[n_way]
                   for n_way, n_shot in TABLE1):
            continue
        shown = [f"{by_way[n_way][str(n_shot)]['mean']:.1f} ± "
                 f"{by_way[n_way][str(n_shot)]['ci95']:.1f}" for n_way, n_shot in TABLE1]
        rows.append(f"| ours: MA-VAE, `{tag}`, online protocol | " + " | ".join(shown) + " |")
    if not rows:
        return []
    (kaiser,) = PAPER_TABLE1["kaiser"].values()
    streams_and_seeds = "; ".join(f"{episodes:,} streams, seed {seed}" for episodes, seed in
                                  sorted({(report["episodes"], report["seed"])
                                          for report in online.values()}))
    return ["", "The same checkpoints in the online protocol, the one Kaiser et al.'s code "
            "reports (a stream of N classes; k-shot = accuracy on a class's (k+1)-th "
            f"showing; {streams_and_seeds}):", "",
            "| model | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot |",
            "|---|---|---|---|---|",
            "| Kaiser et al. 2017 memory | " + " | ".join(f"{v:.1f}" for v in kaiser) + " |",
            *rows]


def render(cells: Cells, training: dict[str, dict], online: dict[str, dict]) -> str:
    lake = {tag: by_cell for tag, by_cell in cells.items() if split_scheme(by_cell) == "lake"}
    cells = {tag: by_cell for tag, by_cell in cells.items() if tag not in lake}
    lake_online = {key: report for key, report in online.items()
                   if report.get("dataset") == "omniglot/lake/test"}
    online = {key: report for key, report in online.items() if key not in lake_online}
    lines = ["# Omniglot results", "",
             "Generated by `python scripts/make_results_table.py` from `results/omniglot/*/*.json`;"
             " do not edit by hand. Test split (vinyals: 1,692 classes incl. rotations), "
             "support-query protocol, 15 queries per class, sampler seed 0; ours are mean "
             "± 95% CI (1.96 std / sqrt(episodes)). Checkpoints are selected on the "
             "validation split only. Rows trained on train + val (the 1,200 characters, "
             "4,800 classes, that the paper and Matching Networks train on) "
             "use a recipe and budget chosen on validation with the train split, and "
             "their last checkpoint.", "",
             "## Table 1: 5-way and 20-way", "",
             "| model | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | "
             "budget / hardware |", "|---|---|---|---|---|---|"]
    lines += method_rows(cells, training, TABLE1, PAPER_TABLE1)
    lines += not_run_rows(training, TABLE1_FULL_BUDGET_PRESETS, 4)
    lines += ["", "## Table 2: 100-way and 400-way", "",
              "| model | 100-way 1-shot | 100-way 5-shot | 400-way 1-shot | 400-way 5-shot | "
              "budget / hardware |", "|---|---|---|---|---|---|"]
    lines += method_rows(cells, training, TABLE2, PAPER_TABLE2)
    lines += not_run_rows(training, TABLE2_FULL_BUDGET_PRESETS, 4)
    lines += ["", "The baselines' papers report no 100- or 400-way results."]
    lines += lake_section(lake, training, lake_online)
    lines += seed_section(cells, training)
    lines += speed_section(training)
    if online:
        lines += ["", "## Online protocol (Kaiser et al.): accuracy on a class's (k+1)-th "
                  "showing", ""]
        # Ordered as "<tag>-online-<N>w<K>s" sorts, the order of the files before runs
        # had folders.
        for report in sorted(online.values(), key=lambda r: f"{r['run']['tag']}-online-"
                             f"{r['n_way']}w{r['n_shot']}s"):
            per_shot = report["result"]["per_shot"]
            shots = sorted(per_shot, key=int)
            lines += [f"`{report['run']['tag']}`: {report['n_way']}-way stream, "
                      f"{report['episodes']} episodes, "
                      f"seed {report['seed']}", "",
                      "| " + " | ".join(f"{k}-shot" for k in shots) + " |",
                      "|" + "---|" * len(shots),
                      "| " + " | ".join(f"{per_shot[k]['mean']:.1f} ± {per_shot[k]['ci95']:.1f}"
                                        for k in shots) + " |", ""]
    lines += training_sections(training)
    lines += evaluation_commands({**cells, **lake})
    return "\n".join(lines)


def recipe_key(record: dict) -> str:
    """What a run learned and how its checkpoint was picked, as a comparable string: its
    `learning_settings`, its validation and its budget, but not its seed or where it ran
    (device, threads, CUDA graphs change the speed, not the arithmetic).

    The wall-clock cap counts only when it ended the run: a run that reached its step
    budget first trained the same steps whatever its cap was."""
    config = record["config"]
    budget = dict(config["budget"])
    if record.get("steps", 0) >= budget["max_steps"]:
        budget["max_minutes"] = None
    return json.dumps({"learning": learning_settings(config), "budget": budget,
                       "validation": config["validation"],
                       "val_subset": config["data"]["val_subset"]}, sort_keys=True)


def seed_groups(cells: Cells, training: dict[str, dict]) -> dict[str, list[tuple[int, str]]]:
    """Runs of one recipe under different training seeds: `(seed, tag)` lists, seed order,
    keyed by the tag of the lowest seed; only recipes run with two seeds or more.

    Two runs share a recipe when they have one `recipe_key`, so a group never mixes
    budgets, splits or overrides whatever the tags say. A seed trained again on another
    device ("cpu", "cuda") is a run of its own: training on a GPU is not bitwise
    repeatable, so the rerun is another sample of the recipe. A group in which a seed
    repeats on one device is left out: its runs differ in something the config does not
    hold (the code, e.g. `cpu-quick-512-style4` and `-relu-after-pool`)."""
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for tag, record in training.items():
        if tag not in cells or "config" not in record:
            continue
        groups[recipe_key(record)].append((record["config"]["seed"], tag))
    def distinct(runs: list[tuple[int, str]]) -> bool:
        """No seed twice on one device (the record's, else the config's setting)."""
        devices = {tag: training[tag].get("device") or training[tag]["config"].get("device")
                   for _, tag in runs}
        return len({(seed, devices[tag]) for seed, tag in runs}) == len(runs)
    return {min(runs)[1]: sorted(runs) for runs in groups.values()
            if len(runs) > 1 and distinct(runs)}


def seed_row(runs: list[tuple[int, str]], cells: Cells, layout: list[tuple[int, int]]
             ) -> str:
    """Mean over seeds of each cell's accuracy, with the lowest and highest seed."""
    shown = []
    for key in layout:
        scores = [cells[tag][key]["result"]["accuracy"]["mean"]
                  for _, tag in runs if key in cells[tag]]
        if len(scores) < len(runs):
            shown.append("not run by every seed")
            continue
        shown.append(f"{statistics.fmean(scores):.2f} ({min(scores):.2f}–{max(scores):.2f})")
    seeds = ", ".join(str(seed) for seed, _ in runs)
    return (f"| `{runs[0][1]}` | {len(runs)} ({seeds}) | " + " | ".join(shown) + " |")


def seed_section(cells: Cells, training: dict[str, dict]) -> list[str]:
    """How far a recipe's test scores move with the training seed alone: one seed's CI
    covers the evaluation episodes, not the training run."""
    groups = seed_groups(cells, training)
    if not groups:
        return []
    def figures(values: list[float | None]) -> str:
        return " / ".join(f"{value:.1f}" for value in values if value is not None)

    (kaiser,) = PAPER_TABLE1["kaiser"].values()
    paper = PAPER_TABLE1["mavae"]["Tseran & Harada, n_train = n_test"]
    (paper_large_way,) = PAPER_TABLE2["mavae"].values()
    lines = ["", "## Across training seeds", "",
             "Recipes trained with more than one seed (the same model, loss, optimizer, "
             "episodes, training classes, validation and budget, on any device; a "
             "wall-clock cap counts only where it ended the run): each cell is the mean "
             "over the "
             "seeds of the test accuracy above, with the lowest and highest seed in "
             "brackets. A seed trained again on another device counts as a run of its "
             "own (its number repeats in the seeds column): GPU training is not bitwise "
             "repeatable. Kaiser et al.: "
             f"{figures(kaiser)}; Tseran & Harada: {figures(paper)} and "
             f"{figures(paper_large_way)}.", ""]
    for layout, title in ((TABLE1, "Table 1"), (TABLE2, "Table 2")):
        header = " | ".join(f"{way}-way {shot}-shot" for way, shot in layout)
        lines += [f"{title} cells:", "", f"| recipe (lowest seed's tag) | seeds | {header} |",
                  "|---|---|" + "---|" * len(layout)]
        lines += [seed_row(runs, cells, layout) for _, runs in sorted(groups.items())]
        lines += [""]
    return lines[:-1]


def speed_section(training: dict[str, dict]) -> list[str]:
    """Throughput and minutes to 97% validation 5-way 1-shot of every MA-VAE run, CPU and
    GPU side by side (the issue's speed figures; the training sections below have more)."""
    runs, commands = [], set()
    for tag, record in sorted(training.items()):
        # One training run scored under a second tag (its generations drawn another way)
        # trained once: one row.
        command = record.get("command")
        if record.get("method", "mavae") != "mavae" or (command and command in commands):
            continue
        commands.add(command)
        runs.append((tag, record))
    if not runs:
        return []
    lines = ["", "## Training speed", "",
             "Images/s = all training images / training seconds (validation excluded); "
             "minutes to 97% = training minutes until validation 5-way 1-shot (200 "
             "episodes) first reached 97%, at the resolution of the run's validation "
             "interval. A run that shared its device with other trainings is slower than "
             "the device alone.", "",
             "| run | device | classes per step | images/s | device shared with | "
             "minutes to 97% |", "|---|---|---:|---:|---:|---:|"]
    for tag, record in runs:
        episodes = record["config"]["episodes"]
        hardware = record.get("hardware", {})
        if record.get("device", "cpu").startswith("cuda"):
            device = f"GPU ({hardware.get('gpu', '?')})"
        else:
            device = cpu_in_words(hardware)
        lines.append(f"| `{tag}` | {device} | {episodes['n_way'] * episodes['batch_episodes']} "
                     f"| {record['images_per_second_overall']:,.0f} "
                     f"| {counted(record.get('concurrent_runs', 0), 'other run')} "
                     f"| {minutes_to_97(record)} |")
    return lines


def minutes_to_97(record: dict) -> str:
    """The run's minutes to 97%; an upper bound ("<=") when its first validation was
    already past 97% (it got there sooner, unobserved)."""
    to_97 = record.get("minutes_to_97_val_5w1s")
    if not validated(record):
        return "no validation"
    if to_97 is None:
        return "not reached"
    first = (record.get("validation") or [{}])[0]
    if first.get("time_to_97_accuracy", 0.0) >= 97.0:
        return f"<= {to_97:.2f} (first validation)"
    return f"{to_97:.2f}"


def training_sections(training: dict[str, dict], time_to_97: bool = True) -> list[str]:
    """One section per training run: command, hardware, throughput, validation curve
    (and, on Omniglot, the minutes to 97% validation 5-way 1-shot)."""
    lines = ["", "## Training runs", ""]
    for tag, record in sorted(training.items()):
        method = METHODS.get(record.get("method", "mavae"), record.get("method"))
        lines += [f"### {tag} ({method})", "", f"- command: `{record['command']}`",
                  f"- hardware: {record['hardware']}",
                  f"- steps: {record['steps']}, training minutes: "
                  f"{record['train_minutes']:.1f}, images/s: "
                  f"{record['images_per_second_overall']:.0f} overall (all images / "
                  f"training seconds), {record['images_per_second_median_window']:.0f} "
                  "median over logging windows",
                  f"- note: {record.get('note') or '-'}",
                  *(checkpoint_lines(record, time_to_97) if validated(record) else [
                      f"- trained on {training_classes(record)}, no validation: the last "
                      f"checkpoint (step {record['steps']}) is the one evaluated"]),
                  *progress_lines(record), ""]
    return lines


def checkpoint_lines(record: dict, time_to_97: bool) -> list[str]:
    """Minutes to 97% (optional) and the best validation score of a validated run."""
    to_97 = record.get("minutes_to_97_val_5w1s")
    return [*([f"- minutes to 97% validation 5-way 1-shot: "
               f"{'not reached' if to_97 is None else f'{to_97:.1f}'}"] if time_to_97 else []),
            f"- best validation {selection_task(record)}: {record['best_val_accuracy']:.2f}% "
            f"at step {record['best_step']} (the checkpoint evaluated)"]


def evaluation_commands(cells: Cells) -> list[str]:
    commands = sorted({cell.get("command") or "" for by_cell in cells.values()
                       for cell in by_cell.values()} - {""})
    if not commands:
        return []
    return ["## Evaluation commands", ""] + [f"- `{c}`" for c in commands] + [""]


#: The README's headline rows: every method's CPU preset trained for the same minutes on
#: the same 2-core CPU (`gaussmem train --preset <method's CPU preset> --max-minutes 5`).
#: Every other run is in the full tables of results/omniglot.md and results/lfw.md.
HEADLINE = {"omniglot": ("mavae-cpu5-decodemean", "protonet-cpu5", "matching-cpu5",
                         "kaiser-cpu5"),
            "lfw": ("mavae-cpu5-style2048", "protonet-cpu5", "matching-cpu5", "kaiser-cpu5")}
#: The MA-VAE preset's runs at its own budget where that is not the headline's: what a user
#: of the preset gets, shown under the equal-budget rows. At most one run per kind of
#: CPU: with native bfloat16 the preset trains about three times the steps it trains in
#: float32 (the current face preset has been run only with bfloat16).
PRESET_BUDGET_RUNS = {"lfw": ("mavae-cpu60-kl27",)}
#: The run behind the README's quick start: the `cpu-quick` preset's whole 15 minutes.
QUICKSTART_RUN = "cpu-quick-decodemean"
#: results/README.md's rows beyond the headline, each labelled: the quick start's run,
#: the MA-VAE under earlier objectives and networks, and longer runs of the paper presets.
BEYOND_HEADLINE = {
    "omniglot": ((", the quick start's 15 minutes", (QUICKSTART_RUN,)),
                 (", decoder reads a sample of z_c (the presets before 2026-12-04)",
                  ("cpu-quick-trunk3",)),
                 # Generative row only: the same network trained as a plain VAE for the
                 # quick start's steps, the reference its reconstructions are held to.
                 (", plain VAE reference", ("plain-vae-trunk3",)),
                 (", per-image objective, first network", ("cpu-quick-objective",)),
                 (", earlier objective (per-pixel means)", ("cpu-quick-latent1",)),
                 (", longer run", ("20way-tuned-gpu", "parallel-20way-tuned-gpu",
                                   "cpu-quick-lake-2200steps"))),
    "lfw": ((", the preset's 60 minutes", PRESET_BUDGET_RUNS["lfw"]),
            (", z_c's KL weight 9 a nat (the presets before the weight of 27), 60 minutes",
             ("mavae-cpu60-kl9",)),
            (", z_c's KL weight 1 a nat (the presets before 2026-12-06), 60 minutes with "
             "bfloat16 and float32", ("mavae-cpu60-style2048-bf16", "mavae-cpu60-style2048")),
            (", z_s closed (KL weight 16384: the presets before this one), 60 and 5 minutes",
             ("mavae-cpu60-closedstyle", "mavae-cpu5-closedstyle")),
            (", z_s open, decoder reads a sample of z_c (the presets before 2026-12-05), "
             "60 and 5 minutes", ("mavae-cpu60", "mavae-cpu5-softmax")),
            (", triplet, 20 minutes", ("mavae-cpu20-objective",)),
            (", triplet, 5 minutes", ("mavae-cpu5-objective",)),
            (", earlier objective (per-pixel means)", ("mavae-cpu15",))),
}
HEADLINE_CELLS = {"omniglot": [*TABLE1, (100, 1), (400, 1)], "lfw": TABLE3}
HEADLINE_PAPER = {"omniglot": [*PAPER_TABLE1["mavae"]["Tseran & Harada, n_train = n_test"],
                               PAPER_TABLE2["mavae"]["Tseran & Harada"][0],
                               PAPER_TABLE2["mavae"]["Tseran & Harada"][2]],
                  "lfw": PAPER_TABLE3["mavae"]["Tseran & Harada"]}


def trained_on(record: dict) -> str:
    """A run's budget and hardware in words, from its identity and training record:
    "15 min (2,222 steps), 2-core CPU (AMD EPYC), bfloat16, 1,788 images/s"."""
    run = record["run"]
    # The MA-VAE's networks train in bfloat16 where the CPU has it natively and in float32
    # elsewhere (precision "auto"), at very different speeds: say which a run had.
    precision = record.get("config", {}).get("precision")
    text = (f"{run['budget']['train_minutes']:.0f} min ({run['budget']['steps']:,} steps), "
            f"{run['hardware']}{f', {precision}' if precision else ''}, "
            f"{record['images_per_second_overall']:,.0f} images/s")
    if record.get("concurrent_runs"):
        text += f" (device shared with {counted(record['concurrent_runs'], 'other run')})"
    return text


def headline_rows(dataset: str, tags: tuple[str, ...], cells: Cells,
                  training: dict[str, dict], label: str = "") -> list[str]:
    """One row per run: its cells' accuracy ± 95% CI and what it trained with."""
    rows = []
    for tag in tags:
        if tag not in cells or tag not in training:
            continue
        record = training[tag]
        shown = [f"{cells[tag][key]['result']['accuracy']['mean']:.1f} ± "
                 f"{cells[tag][key]['result']['accuracy']['ci95']:.1f}"
                 if key in cells[tag] else "–" for key in HEADLINE_CELLS[dataset]]
        name = METHODS.get(record["run"]["method"], record["run"]["method"])
        split = " (lake split)" if split_scheme(cells[tag]) == "lake" else ""
        rows.append(f"| {name}{label}{split} | `{record['run']['recipe']['preset']}` "
                    f"(`{tag}`) | " + " | ".join(shown) + f" | {trained_on(record)} |")
    return rows


def budget_sentence(tags: tuple[str, ...], training: dict[str, dict]) -> str:
    """Which headline rows share a training budget and hardware, said plainly."""
    groups: dict[tuple[float, str], list[str]] = defaultdict(list)
    for tag in tags:
        if tag in training:
            run = training[tag]["run"]
            groups[(round(run["budget"]["train_minutes"]), run["hardware"])].append(
                METHODS.get(run["method"], run["method"]))
    described = "; ".join(f"{', '.join(names)}: {minutes:.0f} min on a {hardware}"
                          for (minutes, hardware), names in sorted(groups.items()))
    if len(groups) == 1:
        return (f"These rows share one budget ({described}). Their presets were not tuned "
                "with equal effort: the MA-VAE's recipe was chosen over many more validation "
                "runs (results/tuning/, results/objective/) than each baseline's.")
    return (f"These rows are not at equal budgets ({described}), and their presets were "
            "not tuned with equal effort: read the gaps between methods with that in mind.")


def load_generative(results: Path, dataset: str) -> dict[str, dict]:
    """`gaussmem generative-report` records of `dataset`'s runs by tag
    (`results/<dataset>/<run>/generative.json`, identified by their "run")."""
    records = {}
    for path in sorted((results / dataset).glob("*/generative.json")):
        data = json.loads(path.read_text())
        records[data["run"]["tag"]] = data
    return records


def reconstruction_cell(reconstruction: dict) -> str:
    """NLL per image against the mean image's, as a ratio; for a density whose NLL is
    negative (faces' Gaussian: no NLL ratio), the squared error's instead."""
    if reconstruction["ratio"] is not None:
        return (f"{reconstruction['mean_nll']:.1f} / {reconstruction['mean_image_nll']:.1f}"
                f" = {reconstruction['ratio']:.3f}")
    return (f"squared error {reconstruction['mean_squared_error']:.1f} / "
            f"{reconstruction['mean_image_squared_error']:.1f} = "
            f"{reconstruction['squared_error_ratio']:.3f}")


def judge_run(checkpoint_path: str) -> str:
    """The run a judge checkpoint came from: `runs/<run>/checkpoints/best.ckpt` -> run."""
    parts = Path(checkpoint_path).parts
    return parts[-3] if len(parts) >= 3 and parts[-2] == "checkpoints" else parts[-1]


def generative_runs(tags: list[str], generative: dict[str, dict]) -> list[tuple[str, dict]]:
    """`(tag, record)` of those `tags` that have a generative report, in order."""
    return [(tag, generative[tag]) for tag in tags if tag in generative]


def generative_rows(runs: list[tuple[str, dict]]) -> list[str]:
    """The generative side of MA-VAE runs `(tag, report)`, beside their accuracy: one
    table, whichever datasets the runs trained on."""
    rows = []
    for tag, record in runs:
        reconstruction, swap = record["reconstruction"], record["decoder_sensitivity"]
        generation = record.get("generation")
        judged = ("–" if generation is None else
                  f"{generation['generated']['mean']:.1f} ± {generation['generated']['ci95']:.1f}"
                  f" (judge on real images {generation['real_images']['mean']:.1f}"
                  + (f", on reconstructions of the stored examples "
                     f"{generation['reconstructions']['mean']:.1f}"
                     if "reconstructions" in generation else "")
                  + (f", on real images blurred 3x3 "
                     f"{generation['blurred_real_images']['mean']:.1f}"
                     if "blurred_real_images" in generation else "")
                  + f", chance {generation['chance']:.1f}; z_s from "
                  + ("the conditional style prior"
                     if generation.get("style_prior") == "conditional" else "N(0, I)")
                  + (f" at temperature {generation['temperature']:g}"
                     if generation.get("temperature", 1.0) != 1.0 else "")
                  + "; judge view "
                  f"{generation.get('judge_view', 'none')}"
                  + (f", judge `{judge_run(generation['judge']['path'])}`"
                     if "judge" in generation else "") + ")"
                  + (f"; {generation['generated_against_reconstructions']['mean']:.1f} with "
                     "the reconstructions as the judge's support"
                     if "generated_against_reconstructions" in generation else ""))
        rows.append(f"| `{tag}` | {reconstruction_cell(reconstruction)} | "
                    f"{swap['content_swap']:.4f} / {swap['style_swap']:.4f} | {judged} |")
    if not rows:
        return []
    return ["", "Generative side of these MA-VAE runs, test split (`gaussmem generative-report`): "
            "reconstruction NLL per image (nats) against the split's mean image's (100-way "
            "episodes on Omniglot, 80-way on LFW-a); pixel change from swapping z_c vs z_s; % "
            "of images generated from one-shot memory entries that an independent classifier "
            "(the judge) assigns to their class, 20-way (z_s from N(0, I) or the conditional "
            "style prior; judge view strokes: images smoothed and thresholded to ink, none: "
            "raw pixels; docs/generative.md):", "",
            "| run | reconstruction / mean image = ratio | swap z_c / swap z_s | generations "
            "judged as their class (%) |", "|---|---|---|---|", *rows]


def headline_table(dataset: str, groups: tuple[tuple[str, tuple[str, ...]], ...],
                   cells: Cells, training: dict[str, dict]) -> list[str]:
    """One accuracy table of `dataset`: the paper's row, then each group's runs with its
    label."""
    tags = [tag for _label, group in groups for tag in group]
    header = " | ".join(f"{way}-way {shot}-shot" for way, shot in HEADLINE_CELLS[dataset])
    episodes = sorted({cell["result"]["accuracy"]["episodes"] for tag in tags
                       for cell in cells.get(tag, {}).values()})
    counts = " or ".join(f"{count:,}" for count in episodes)
    lines = [f"accuracy % ± 95% CI over {counts} test episodes:", "",
             f"| method | preset (run) | {header} | trained |",
             "|---|---|" + "---|" * len(HEADLINE_CELLS[dataset]) + "---|",
             "| MA-VAE, Tseran & Harada (paper) | | " + " | ".join(
                 "–" if value is None else f"{value:.1f}"
                 for value in HEADLINE_PAPER[dataset]) + " | paper |"]
    for label, group in groups:
        lines += headline_rows(dataset, group, cells, training, label=label)
    return lines


DATASET_TITLES = (("omniglot", "Omniglot, test classes (Tables 1 and 2)"),
                  ("lfw", "LFW-a, test people (Table 3)"))


def headline_section(data: dict[str, tuple[Cells, dict[str, dict]]],
                     generative: dict[str, dict[str, dict]] | None = None) -> list[str]:
    """The README's headline: each method's CPU preset on Omniglot (vinyals test split)
    and LFW-a at one budget, the paper's figures, whether the rows share a budget, and
    the generative side of the MA-VAE rows where `generative` has their reports."""
    lines = ["## Headline", ""]
    runs: list[tuple[str, dict]] = []
    for dataset, title in DATASET_TITLES:
        if dataset not in data:
            continue
        cells, training = data[dataset]
        table = headline_table(dataset, (("", HEADLINE[dataset]),), cells, training)
        lines += [f"{title}; {table[0]}", *table[1:], "",
                  budget_sentence(HEADLINE[dataset], training)]
        lines += preset_budget_rows(dataset, cells, training)
        lines += [""]
        runs += generative_runs(list(HEADLINE[dataset]), (generative or {}).get(dataset, {}))
    return lines[:-1] + generative_rows(runs)


def preset_budget_rows(dataset: str, cells: Cells, training: dict[str, dict]) -> list[str]:
    """One sentence under the equal-budget rows: the MA-VAE preset at its own (longer)
    budget, each run's headline cells' accuracy ± 95% CI; nothing without those runs.
    Their table rows and generative side are in results/README.md's longer runs."""
    tags = [tag for tag in PRESET_BUDGET_RUNS.get(dataset, ())
            if tag in cells and tag in training]
    if not tags:
        return []
    preset = training[tags[0]]["run"]["recipe"]["preset"]
    shown_cells = [key for key in HEADLINE_CELLS[dataset] if key in cells[tags[0]]]
    runs = "; ".join(
        f"`{tag}` ({trained_on(training[tag])}): " + ", ".join(
            f"{cells[tag][key]['result']['accuracy']['mean']:.1f} ± "
            f"{cells[tag][key]['result']['accuracy']['ci95']:.1f}"
            if key in cells[tag] else "–" for key in shown_cells)
        for tag in tags)
    return ["", f"The MA-VAE's `{preset}` preset at its own budget (not comparable with the "
            f"rows above; cells in the table's order): {runs}."]


def beyond_headline_section(data: dict[str, tuple[Cells, dict[str, dict]]],
                            generative: dict[str, dict[str, dict]] | None = None
                            ) -> list[str]:
    """results/README.md's runs beyond the headline's budget: the quick start's whole
    preset, earlier objectives and networks, longer runs; each row labelled."""
    lines = ["## Longer and earlier runs", "",
             "Not at the headline's budget: each row says what it trained.", ""]
    for dataset, title in DATASET_TITLES:
        if dataset not in data or dataset not in BEYOND_HEADLINE:
            continue
        cells, training = data[dataset]
        groups = BEYOND_HEADLINE[dataset]
        table = headline_table(dataset, groups, cells, training)
        lines += [f"{title}; {table[0]}", *table[1:]]
        records = (generative or {}).get(dataset, {})
        tags = [tag for _label, group in groups for tag in group]
        # A run scored for its generative side alone (no accuracy cells) shows here too.
        tags += sorted(tag for tag in records if tag not in cells)
        lines += generative_rows(generative_runs(tags, records))
        lines += [""]
    return lines[:-1]


def render_index(data: dict[str, tuple[Cells, dict[str, dict]]], omniglot_md: str,
                 lfw_md: str | None, generative: dict[str, dict[str, dict]] | None = None,
                 systems: list[str] | None = None) -> str:
    """results/README.md: what is where, the headline, then the full tables."""
    def tables(markdown: str) -> str:
        body = markdown.split("\n## Training runs")[0]
        return body.split("\n", 2)[2].replace("\n## ", "\n### ").strip()

    lines = ["# Results", "",
             "Generated by `python scripts/make_results_table.py`; do not edit by hand. "
             "Every number comes from a JSON record written by a command in this "
             "repository; each record carries its run's identity under `\"run\"` "
             "(dataset, tag, method, recipe, budget, seed, hardware, commit where known), so "
             "the tables never read file names.", "",
             "| where | what |", "|---|---|",
             "| `omniglot/<run>/`, `lfw/<run>/` | one folder per training run: "
             "`training.json` (command, config, validation curve, speed) and one "
             "`gaussmem evaluate` report per test cell (`5w1s.json`, `online-5w5s.json`, ...) "
             "|",
             "| [omniglot.md](omniglot.md), [lfw.md](lfw.md) | every run's row and training "
             "details |",
             "| `ensemble_views/`, [ensemble_views.md](ensemble_views.md) | seed ensembles "
             "and test-time views |",
             "| `tuning/` | how the presets were chosen, on validation only "
             "([mavae_tuning.md](tuning/mavae_tuning.md), "
             "[five_shot_sweep.md](five_shot_sweep.md)) |",
             "| `episode_errors/`, `online_streams/`, `diagnostics/` | per-checkpoint error "
             "analyses, long online streams, diagnostics of the generative side "
             "(`generative/`, `latent_check/`, `lfw/`) |",
             "| `speed/` | timing benchmarks (training steps, data loading, memory search) |",
             "| `objective/` | the objective sweep (`experiments/objective_sweep.py`) |",
             "| `systems/`, `service/` | the recognizer, gallery-search, service and "
             "distributed-training benchmarks (section below) |",
             "| `open_set/` | open-set evaluation and the choice of unknown score "
             "([open_set.md](open_set/open_set.md)) |", "",
             "The narrative of the runs (why each was made) is in "
             "[docs/experiments.md](../docs/experiments.md).", ""]
    lines += headline_section(data, generative)
    lines += ["", *beyond_headline_section(data, generative)]
    if systems:
        lines += ["", *systems]
    lines += ["", "## Omniglot: all runs", "", tables(omniglot_md)]
    if lfw_md is not None:
        lines += ["", "## LFW-a: all runs", "", tables(lfw_md)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args()
    results = Path(args.results)
    cells, training, online = load(results, "omniglot")
    data = {"omniglot": (cells, training)}
    omniglot_md = render(cells, training, online)
    write_text_atomic(results / "omniglot.md", omniglot_md)
    print(f"wrote {results / 'omniglot.md'}")
    cells, training, _ = load(results, "lfw")
    lfw_md = None
    if cells or training:
        data["lfw"] = (cells, training)
        lfw_md = render_lfw(cells, training)
        write_text_atomic(results / "lfw.md", lfw_md)
        print(f"wrote {results / 'lfw.md'}")
    generative = {dataset: load_generative(results, dataset) for dataset in data}
    write_text_atomic(results / "README.md",
                      render_index(data, omniglot_md, lfw_md, generative,
                                   systems_section(results)))
    print(f"wrote {results / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
