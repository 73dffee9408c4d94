"""The scripts that turn result JSON into the tables of results/*.md and the README:
a figure they print must be the one in the JSON, with the device that measured it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "scripts") -> ModuleType:
    """`folder/name.py` as a module, importing its sibling scripts as running it would
    (Python puts a script's own folder first on its path)."""
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def training_record(device: str, concurrent_runs: int, to_97: float | None) -> dict:
    hardware = ({"gpu": "NVIDIA H100 80GB HBM3"} if device.startswith("cuda")
                else {"cpu": "AMD EPYC", "cores": 2})
    return {"method": "mavae", "device": device, "hardware": hardware,
            "config": {"episodes": {"n_way": 32, "batch_episodes": 16}},
            "images_per_second_overall": 58977.4, "concurrent_runs": concurrent_runs,
            "minutes_to_97_val_5w1s": to_97}


def test_speed_section_reports_each_runs_device_rate_sharing_and_time_to_97() -> None:
    tables = load_script("make_results_table")
    training = {"gpu-run": training_record("cuda:0", 4, 0.2939),
                "cpu-run": training_record("cpu", 0, None),
                "protonet-run": {**training_record("cpu", 0, 1.0), "method": "protonet"}}
    rows = [line for line in tables.speed_section(training) if line.startswith("| `")]
    assert rows == [
        "| `cpu-run` | 2-core CPU (AMD EPYC) | 512 | 58,977 | 0 other runs | not reached |",
        "| `gpu-run` | GPU (NVIDIA H100 80GB HBM3) | 512 | 58,977 | 4 other runs | 0.29 |",
    ]


def test_one_training_run_scored_under_two_tags_is_one_speed_row() -> None:
    tables = load_script("make_results_table")
    command = "gaussmem train --preset cpu-quick --run-dir runs/a"
    training = {"a": {**training_record("cpu", 0, None), "command": command},
                "a-rescored": {**training_record("cpu", 0, None), "command": command},
                "b": {**training_record("cpu", 0, None), "command": command + "b"}}
    rows = [line for line in tables.speed_section(training) if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["a", "b"]


def test_time_to_97_is_an_upper_bound_when_the_first_validation_passed() -> None:
    tables = load_script("make_results_table")
    record = {**training_record("cuda:0", 0, 0.29),
              "validation": [{"minutes": 0.29, "time_to_97_accuracy": 98.3}]}
    assert tables.minutes_to_97(record) == "<= 0.29 (first validation)"
    record["validation"] = [{"minutes": 0.1, "time_to_97_accuracy": 96.5},
                            {"minutes": 0.29, "time_to_97_accuracy": 98.3}]
    assert tables.minutes_to_97(record) == "0.29"


def test_budget_says_when_the_device_was_shared() -> None:
    tables = load_script("make_results_table")
    record = {**training_record("cuda:0", 4, 0.3), "train_minutes": 5.0}
    cell = {"checkpoint": {"train_minutes": 1.5, "step": 2000},
            "train_config": {"precision": "bfloat16"}}
    text = tables.budget("gpu-run", {(5, 1): cell}, record)
    assert text.startswith("5.0-min run; checkpoint (best on validation) at step 2000, 1.5 min;"
                           " 1 GPU (NVIDIA H100 80GB HBM3)")
    assert "(device shared with 4 other trainings)" in text
    alone = tables.budget("gpu-run", {(5, 1): cell}, {**record, "concurrent_runs": 0})
    assert "shared" not in alone


def test_a_run_without_validation_says_what_it_trained_on_and_which_checkpoint() -> None:
    tables = load_script("make_results_table")
    record = {**training_record("cpu", 0, None), "train_minutes": 15.0, "steps": 2100,
              "command": "gaussmem train", "note": "", "images_per_second_median_window": 1.0}
    record["config"]["data"] = {"train_subset": "trainval", "val_subset": None}
    cell = {"checkpoint": {"train_minutes": 15.0, "step": 2100}}
    assert tables.budget("final", {(5, 1): cell}, record).startswith(
        "15.0-min run on train + val, no validation; last checkpoint (step 2100); 2-core CPU")
    assert tables.minutes_to_97(record) == "no validation"
    section = tables.training_sections({"final": record})
    assert ("- trained on train + val, no validation: the last checkpoint (step 2100) is the "
            "one evaluated") in section
    assert not any("best validation" in line for line in section)


def test_step_speed_table_shows_every_variant_and_the_gpu() -> None:
    readme = load_script("update_readme")
    report = {"command": "python benchmarks/train_step_speed.py --device cuda",
              "hardware": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"},
              "training": [{"variant": "float32, NCHW", "classes_per_step": 80,
                            "images_per_step": 160, "images_per_second": {"median": 10294.2}},
                           {"variant": "bfloat16", "classes_per_step": 2048,
                            "images_per_step": 4096,
                            "images_per_second": {"median": 134631.0}}],
              "embedding": [{"embed_batch_size": 512, "images_per_second": {"median": 400610}}]}
    text = readme.render_step_speed(report)
    assert "| 80 (160) | float32, NCHW | 10,294 |" in text
    assert "| 2048 (4096) | bfloat16 | 134,631 |" in text
    assert "batch 512: 400,610" in text
    assert "NVIDIA H100 80GB HBM3" in text and report["command"] in text
    assert "host syncs" not in text, "the report counted none"
    for row, syncs in zip(report["training"], (0.0, 2.0), strict=True):
        row["host_syncs_per_step"] = syncs
    text = readme.render_step_speed(report)
    assert "| 80 (160) | float32, NCHW | 10,294 | 0 |" in text
    assert "| 2048 (4096) | bfloat16 | 134,631 | 2 |" in text


def test_a_training_record_names_the_trainings_threads_not_its_drivers(tmp_path: Path
                                                                      ) -> None:
    import json

    benchmark = load_script("train_cpu_quick", folder="experiments")
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_threads": 1, "episodes": {"n_way": 5, "batch_episodes": 16,
                                        "images_per_class": 2}}))
    (tmp_path / "summary.json").write_text(json.dumps(
        {"step": 100, "elapsed_seconds": 10.0, "best_val_accuracy": 90.0, "best_step": 100,
         "minutes_to_97": None, "images_per_step": 160}))
    (tmp_path / "metrics.jsonl").write_text(json.dumps(
        {"kind": "train", "step": 50, "loss": 1.0, "triplet": 0.5,
         "images_per_second": 800.0}) + "\n")
    record = benchmark.training_record(tmp_path, "t", ["gaussmem", "train"], "")
    assert record["hardware"]["torch_threads"] == 1
    assert record["images_per_second_overall"] == 1600.0


def preset_record(name: str, steps: int, **changes: object) -> dict:
    """A training record of preset `name` after `steps` steps, with top-level or
    "section.field" settings changed."""
    from gaussmem.config import to_dict
    from gaussmem.presets import preset

    config = to_dict(preset(name))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    return {"steps": steps, "config": config}


def test_full_budget_rows_stay_until_a_run_trains_the_presets_whole_step_budget() -> None:
    tables = load_script("make_results_table")
    presets = ("omniglot-5way",)
    assert tables.not_run_rows({}, presets, 4) == [
        "| ours: MA-VAE, omniglot-5way (full budget: 30,000 steps) | – | – | – | – |"
        " not yet run on a GPU |"]
    short = {"5way-gpu": preset_record("omniglot-5way", 5403),
             "5way-longer": preset_record("omniglot-5way", 6848)}
    assert tables.not_run_rows(short, presets, 4)[0].endswith(
        "not yet run (`5way-longer` trained 6,848 steps) |")
    whole = {"5way-cpu": preset_record("omniglot-5way", 30000)}
    assert tables.not_run_rows(whole, presets, 4) == []


def test_a_full_budget_counts_for_every_preset_that_learns_the_same_way() -> None:
    tables = load_script("make_results_table")
    presets = ("omniglot-5way", "omniglot-20way", "omniglot-5way-to-20way")
    # omniglot-5way-to-20way differs from omniglot-5way only in the test it is meant
    # for; seed, device, threads, validation cadence and the precision the device chose
    # for the presets' "auto" do not change what is learned.
    run = preset_record("omniglot-5way-to-20way", 30000, seed=3, device="cuda",
                        num_threads=1, validation__every_steps=1000, precision="float32")
    assert tables.full_budget_presets(run, presets) == ["omniglot-5way",
                                                        "omniglot-5way-to-20way"]
    assert tables.full_budget_presets(preset_record("omniglot-5way", 29999), presets) == []
    # A setting that changes the training (or the classes trained on) is another recipe.
    for changes in ({"loss__latent": 0.1}, {"data__train_subset": "trainval"}):
        assert tables.full_budget_presets(preset_record("omniglot-5way", 30000, **changes),
                                          presets) == [], changes
    # A record from before configs were kept, or with a field this version lacks.
    assert tables.full_budget_presets({"steps": 30000}, presets) == []
    stale = preset_record("omniglot-5way", 30000, loss__retired_weight=1.0)
    assert tables.full_budget_presets(stale, presets) == []


def seed_run(seed: int, accuracies: dict[tuple[int, int], float], max_steps: int = 2200,
             num_threads: int = 2) -> tuple[dict, dict]:
    """A training record and its cells, for a recipe whose config differs only by seed."""
    record = preset_record("cpu-quick", max_steps, seed=seed, num_threads=num_threads,
                           budget__max_steps=max_steps)
    cells = {key: {"result": {"accuracy": {"mean": value}}} for key, value in accuracies.items()}
    return record, cells


def test_seed_summary_averages_only_runs_whose_configs_differ_by_the_seed() -> None:
    tables = load_script("make_results_table")
    runs = {"fit": seed_run(0, {(5, 1): 98.0, (20, 1): 95.0}),
            "fit-seed1": seed_run(1, {(5, 1): 98.5, (20, 1): 94.0}),
            "fit-seed2": seed_run(2, {(5, 1): 98.3, (20, 1): 94.5}, num_threads=1),
            "longer-seed1": seed_run(1, {(5, 1): 99.0, (20, 1): 96.0}, max_steps=5000),
            "code-a": seed_run(0, {(5, 1): 97.0, (20, 1): 93.0}, max_steps=100),
            "code-b": seed_run(0, {(5, 1): 97.5, (20, 1): 93.5}, max_steps=100),
            "code-b-seed1": seed_run(1, {(5, 1): 97.5, (20, 1): 93.5}, max_steps=100)}
    training = {tag: record for tag, (record, _) in runs.items()}
    cells = {tag: by_cell for tag, (_, by_cell) in runs.items()}

    groups = tables.seed_groups(cells, training)

    # "fit-seed2" trained on fewer threads, the same recipe; "longer-seed1" has another
    # budget; the "code-*" runs repeat seed 0, so they differ in something the config
    # does not record and are left out.
    assert groups == {"fit": [(0, "fit"), (1, "fit-seed1"), (2, "fit-seed2")]}
    row = tables.seed_row(groups["fit"], cells, [(5, 1), (20, 1), (20, 5)])
    assert row == ("| `fit` | 3 (0, 1, 2) | 98.27 (98.00–98.50) | 94.50 (94.00–95.00) "
                   "| not run by every seed |")


def test_seed_groups_join_a_recipe_trained_on_a_gpu_and_on_a_cpu() -> None:
    tables = load_script("make_results_table")
    def run(seed: int, steps: int, max_minutes: float | None = None,
            **execution: object) -> dict:
        return preset_record("omniglot-20way", steps, seed=seed,
                             budget__max_minutes=max_minutes, **execution)
    training = {
        # Seed 0 on a GPU: CUDA graphs, a 4.5-minute cap the step budget ended first.
        "preset-gpu": run(0, 30000, device="cuda", cuda_graph=True, num_threads=3,
                          checkpoint_every=5000, max_minutes=4.5),
        "preset-cpu-seed1": run(1, 30000),
        # The cap ended this one at step 20,000: fewer steps, another budget.
        "preset-capped-seed2": run(2, 20000, max_minutes=60.0),
    }
    cells = {tag: {(5, 1): {"result": {"accuracy": {"mean": 98.0}}}} for tag in training}

    assert tables.seed_groups(cells, training) == {
        "preset-gpu": [(0, "preset-gpu"), (1, "preset-cpu-seed1")]}
    # Seed 0 again on the CPU: another sample of the recipe (a GPU run is not bitwise
    # repeatable), so it joins; seed 1 again on the CPU would be a code change.
    training["preset-cpu"] = run(0, 30000)
    cells["preset-cpu"] = cells["preset-gpu"]
    assert tables.seed_groups(cells, training) == {
        "preset-cpu": [(0, "preset-cpu"), (0, "preset-gpu"), (1, "preset-cpu-seed1")]}
    training["preset-cpu-seed1-again"] = run(1, 30000)
    cells["preset-cpu-seed1-again"] = cells["preset-gpu"]
    assert tables.seed_groups(cells, training) == {}


def test_runs_on_kaisers_split_get_their_own_table_beside_kaisers_figures() -> None:
    tables = load_script("make_results_table")
    def cells(scheme: str, accuracy: float) -> dict:
        return {(way, shot): {"dataset": f"omniglot/{scheme}/test", "protocol": "support-query",
                              "result": {"accuracy": {"mean": accuracy, "ci95": 0.2,
                                                      "episodes": 1000}},
                              "checkpoint": {"method": "mavae", "train_minutes": 12.0,
                                             "step": 2200}}
                for way, shot in tables.TABLE1}
    markdown = tables.render({"on-vinyals": cells("vinyals", 91.0),
                              "on-lake": cells("lake", 97.0)}, {}, {})
    table1 = markdown[markdown.index("## Table 1"):markdown.index("## Table 2")]
    lake = markdown[markdown.index("## Kaiser et al.'s split"):]
    assert "`on-vinyals`" in table1 and "`on-lake`" not in table1
    assert "| ours: MA-VAE, `on-lake` | 97.0 ± 0.2 (1000 ep.)" in lake
    assert "| Kaiser et al. 2017 memory | 98.4 | 99.6 | 95.0 | 98.6 | paper |" in lake
    assert "Tseran & Harada" not in lake.split("## Training runs")[0]
    on_lake = {"config": {"data": {"scheme": "lake", "train_subset": "train",
                                   "val_subset": None}}}
    assert tables.training_classes(on_lake) == ("the lake split's train classes "
                                                "(background alphabets)")
    def online(tag: str, n_way: int, scheme: str = "lake") -> dict:
        return {"dataset": f"omniglot/{scheme}/test", "n_way": n_way, "n_shot": 5,
                "episodes": 1000, "seed": 0, "run": {"tag": tag},
                "result": {"per_shot": {str(shot): {"mean": 90.0 + n_way / 10 + shot,
                                                    "ci95": 0.3} for shot in range(6)}}}
    reports = [online("on-lake", 5), online("on-lake", 20),
               online("half", 5),  # no 20-way stream: no row
               online("on-vinyals", 5, "vinyals")]
    streams = {f"{r['run']['tag']}, {r['n_way']}-class stream": r for r in reports}
    with_online = tables.render({"on-vinyals": cells("vinyals", 91.0),
                                 "on-lake": cells("lake", 97.0)}, {}, streams)
    start = with_online.index("## Kaiser et al.'s split")
    lake = with_online[start:with_online.index("\n## ", start)]
    assert ("| ours: MA-VAE, `on-lake`, online protocol | 91.5 ± 0.3 | 95.5 ± 0.3 | "
            "93.0 ± 0.3 | 97.0 ± 0.3 |") in lake
    assert "`half`" not in lake and "on-vinyals-online" not in lake
    assert "1,000 streams, seed 0" in lake
    assert "`on-vinyals`: 5-way stream" in with_online
    assert "`on-lake`: 5-way stream" not in with_online
    readme = load_script("update_readme")
    assert readme.render_omniglot_lake(markdown).startswith("### Kaiser et al.'s split")
    without = tables.render({"on-vinyals": cells("vinyals", 91.0)}, {}, {})
    assert "Kaiser et al.'s split" not in without
    assert readme.render_omniglot_lake(without) == "Not yet run."


def test_cpu_contention_table_shows_each_condition_from_the_json() -> None:
    readme = load_script("update_readme")
    def condition(competing: int, threads: int, mean: float) -> dict:
        return {"competing_threads": competing, "num_threads": threads,
                "step_ms": {"median": 700.0, "mean": mean, "max": 12345.6},
                "memory_ms": {"median": 41.0, "mean": 41.0, "max": 50.0}}
    result = {"command": "python benchmarks/cpu_contention.py", "steps": 30,
              "hardware": {"cpu": "AMD EPYC", "cpu_cores": 2, "torch": "2.13.0+cpu",
                           "torch_threads": 2},
              "conditions": [condition(0, 2, 400.0), condition(2, 2, 2094.4)]}
    text = readme.render_cpu_contention(result)
    assert "| 2 | 2 | 700 ms | 2,094 ms | 12,346 ms | 41 ms |" in text
    assert "30 per condition" in text and "AMD EPYC, 2 cores" in text
    assert "seed" not in text


def test_tables_read_a_runs_identity_from_its_records_not_their_file_names(
        tmp_path: Path) -> None:
    import json

    tables = load_script("make_results_table")
    run = tmp_path / "omniglot" / "renamed-folder"
    run.mkdir(parents=True)
    identity = {"dataset": "omniglot", "tag": "my-run", "method": "mavae", "seed": 0}
    (run / "training.json").write_text(json.dumps({"kind": "training", "run": identity}))
    cell = {"protocol": "support-query", "n_way": 20, "n_shot": 5, "run": identity}
    (run / "anything.json").write_text(json.dumps(cell))
    stream = {"protocol": "online", "n_way": 5, "n_shot": 5, "run": identity}
    (run / "stream.json").write_text(json.dumps(stream))
    cells, training, online = tables.load(tmp_path, "omniglot")
    assert list(training) == ["my-run"]
    assert cells == {"my-run": {(20, 5): cell}}
    assert list(online.values()) == [stream]
    assert tables.load(tmp_path, "lfw") == ({}, {}, {})


def headline_record(method: str, minutes: float, hardware: str) -> dict:
    return {"images_per_second_overall": 1000.0, "concurrent_runs": 0,
            "run": {"method": method, "recipe": {"preset": f"{method}-cpu"},
                    "budget": {"train_minutes": minutes, "steps": 100},
                    "hardware": hardware}}


def test_the_headline_says_plainly_whether_its_rows_share_a_budget() -> None:
    tables = load_script("make_results_table")
    cpu = "2-core CPU (AMD EPYC)"
    same = {"a": headline_record("mavae", 15.0, cpu), "b": headline_record("protonet", 15.02, cpu)}
    assert tables.budget_sentence(("a", "b"), same).startswith(
        f"These rows share one budget (MA-VAE, Prototypical Networks: 15 min on a {cpu}). "
        "Their presets were not tuned with equal effort")
    unequal = {**same, "b": headline_record("protonet", 5.0, cpu)}
    sentence = tables.budget_sentence(("a", "b"), unequal)
    assert sentence.startswith("These rows are not at equal budgets (")
    assert f"Prototypical Networks: 5 min on a {cpu}" in sentence
    assert f"MA-VAE: 15 min on a {cpu}" in sentence


def test_a_headline_row_names_its_preset_run_cells_and_budget() -> None:
    tables = load_script("make_results_table")
    cell = {"dataset": "omniglot/vinyals/test",
            "result": {"accuracy": {"mean": 98.21, "ci95": 0.19, "episodes": 1000}}}
    training = {"run-a": headline_record("mavae", 15.0, "2-core CPU (AMD EPYC)")}
    (row,) = tables.headline_rows("omniglot", ("run-a", "missing"), {"run-a": {(5, 1): cell}},
                                  training, label=", longer run")
    assert row.startswith("| MA-VAE, longer run | `mavae-cpu` (`run-a`) | 98.2 ± 0.2 | – |")
    assert row.endswith("| 15 min (100 steps), 2-core CPU (AMD EPYC), 1,000 images/s |")


def test_generated_blocks_are_filled_in_whichever_page_holds_their_markers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = load_script("update_readme")
    pages = (tmp_path / "README.md", tmp_path / "experiments.md")
    pages[0].write_text("<!-- BEGIN GENERATED: headline -->\nold\n"
                        "<!-- END GENERATED: headline -->\n")
    pages[1].write_text("<!-- BEGIN GENERATED: omniglot_seeds -->\n"
                        "<!-- END GENERATED: omniglot_seeds -->\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text("## Headline\n\nthe table\n\n## Next\n")
    (tmp_path / "results" / "omniglot.md").write_text(
        "## Across training seeds\n\nseed rows\n\n## Training speed\n")
    monkeypatch.setattr(readme, "PAGES", pages)
    monkeypatch.setattr(readme, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    monkeypatch.setattr(readme, "RENDERERS", {
        name: readme.RENDERERS[name] for name in ("headline", "omniglot_seeds")})
    readme.main()
    assert "\nthe table\n" in pages[0].read_text() and "old" not in pages[0].read_text()
    assert "### Across training seeds\n\nseed rows\n" in pages[1].read_text()


def test_open_set_table_prints_the_json_figures_and_names_better_baselines() -> None:
    script = load_script("open_set", "experiments")

    def entry(auroc: float) -> dict:
        summary = {"mean": auroc, "ci95": 1.25, "episodes": 600}
        return {"result": {"accuracy": summary, "auroc": summary, "fpr_at_95_tpr": summary}}

    report = {"command": "python experiments/open_set.py", "episodes": 600, "seed": 0,
              "training_note": "4 min each",
              "settings": [{"dataset": "omniglot", "n_way": 5, "n_unknown": 5, "n_shot": 1,
                            "n_query": 15, "methods": {"mavae": entry(81.5),
                                                       "protonet": entry(83.25)},
                            "baselines_with_auroc_above_mavae": ["protonet"]}]}
    table = script.markdown(report)
    assert "| omniglot 5+5, 1-shot, 15 queries | protonet | 83.25 ± 1.25 |" in table
    assert "- omniglot 1-shot: protonet" in table


def headline_run(method: str, preset: str, minutes: float, accuracy: float
                 ) -> tuple[dict, dict]:
    """A training record and its Omniglot headline cells, all at `accuracy`."""
    record = {"run": {"method": method, "recipe": {"preset": preset},
                      "budget": {"train_minutes": minutes, "steps": 100},
                      "hardware": "2-core CPU (test)"},
              "images_per_second_overall": 1000.0}
    cells = {key: {"result": {"accuracy": {"mean": accuracy, "ci95": 0.1, "episodes": 1000}}}
             for key in [(5, 1), (5, 5), (20, 1), (20, 5), (100, 1), (400, 1)]}
    return record, cells


def test_the_headline_holds_one_budget_and_the_longer_runs_go_beyond_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tables = load_script("make_results_table")
    monkeypatch.setattr(tables, "HEADLINE", {"omniglot": ("mavae-5", "protonet-5")})
    monkeypatch.setattr(tables, "BEYOND_HEADLINE",
                        {"omniglot": ((", the quick start's 15 minutes", ("mavae-15",)),)})
    runs = {"mavae-5": headline_run("mavae", "cpu-quick", 5.0, 97.0),
            "protonet-5": headline_run("protonet", "protonet-cpu", 5.0, 96.0),
            "mavae-15": headline_run("mavae", "cpu-quick", 15.0, 98.0)}
    data = {"omniglot": ({tag: cells for tag, (_, cells) in runs.items()},
                         {tag: record for tag, (record, _) in runs.items()})}

    headline = "\n".join(tables.headline_section(data))
    beyond = "\n".join(tables.beyond_headline_section(data))

    assert "`mavae-5`" in headline and "`protonet-5`" in headline
    assert "`mavae-15`" not in headline
    assert "These rows share one budget" in headline
    assert "| MA-VAE, the quick start's 15 minutes | `cpu-quick` (`mavae-15`) |" in beyond
    assert "`mavae-5`" not in beyond
    assert "at its own budget" not in headline     # no preset-budget run named

    monkeypatch.setattr(tables, "PRESET_BUDGET_RUNS", {"omniglot": ("mavae-15", "absent")})
    headline = "\n".join(tables.headline_section(data))
    assert "These rows share one budget" in headline
    assert ("The MA-VAE's `cpu-quick` preset at its own budget (not comparable with the "
            "rows above; cells in the table's order): `mavae-15` (15 min (100 steps), 2-core "
            "CPU (test), 1,000 images/s): 98.0 ± 0.1, 98.0 ± 0.1,") in headline

    # A second run of the preset, on a CPU with native bfloat16, joins the same sentence
    # and says its precision.
    faster, faster_cells = headline_run("mavae", "cpu-quick", 15.0, 99.0)
    faster["config"] = {"precision": "bfloat16"}
    data["omniglot"][0]["mavae-15-bf16"] = faster_cells
    data["omniglot"][1]["mavae-15-bf16"] = faster
    monkeypatch.setattr(tables, "PRESET_BUDGET_RUNS",
                        {"omniglot": ("mavae-15-bf16", "mavae-15")})
    headline = "\n".join(tables.headline_section(data))
    assert ("`mavae-15-bf16` (15 min (100 steps), 2-core CPU (test), bfloat16, 1,000 "
            "images/s): 99.0 ± 0.1, 99.0 ± 0.1, 99.0 ± 0.1, 99.0 ± 0.1, 99.0 ± 0.1, 99.0 ± 0.1; "
            "`mavae-15` (15 min (100 steps), 2-core CPU (test), 1,000 images/s): 98.0 ± 0.1,"
            ) in headline


def test_systems_section_reads_each_benchmark_and_judges_its_target(tmp_path: Path) -> None:
    import json

    systems = load_script("systems_tables")
    assert systems.systems_section(tmp_path) == []          # nothing run yet: no section
    load = {"command": "python benchmarks/service_load.py", "hardware": {"cpu": "X"},
            "settings": {"clients": 8, "seconds": 30.0, "entries": 10000,
                         "enroll_fraction": 0.1},
            "recognize": {"per_second": 150.0, "p50_ms": 40.0, "p99_ms": 99.0, "errors": 0},
            "enroll": {"per_second": 15.0, "p50_ms": 50.0, "p99_ms": 120.0, "errors": 0},
            "after_restart": {"labels": 10100, "exactly_the_answered_enrollments": True}}
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "load.json").write_text(json.dumps(load))
    section = "\n".join(systems.systems_section(tmp_path))
    assert "p99 99 ms | p99 <= 100 ms: met" in section
    assert "0 errors; 10,100 labels" in section and "recognizer_speed" not in section
    load["recognize"]["p99_ms"] = 101.0
    load["enroll"]["errors"] = 1
    (tmp_path / "service" / "load.json").write_text(json.dumps(load))
    section = "\n".join(systems.systems_section(tmp_path))
    assert "p99 <= 100 ms: **not met**" in section
    assert "1 errors" in section and "0 errors, exact: **not met**" in section


def test_ddp_rows_give_the_rounds_medians_and_the_independent_ceiling(tmp_path: Path) -> None:
    import json

    systems = load_script("systems_tables")
    runs = [{"ranks": 1, "images_per_second_median": 1000.0, "val_accuracy": 80.0,
             "val_ci95": 0.3},
            {"ranks": 2, "images_per_second_median": 1500.0, "val_accuracy": 80.2,
             "val_ci95": 0.3}]
    record = {"command": "python benchmarks/ddp_scaling.py", "hardware": {"cpu": "X"},
              "threads_per_process": 1, "global_batch": {"classes_per_step": 128,
                                                         "steps": 150},
              "runs": runs, "repeats": 2, "speedup": 1.7, "target_speedup": 1.8,
              "images_per_second": {"single": 1100.0, "ddp": 1870.0,
                                    "independent_summed": 2090.0,
                                    "ddp_fixed_per_rank_batch": 2035.0},
              "independent_speedup": 1.9, "ddp_share_of_independent": 0.8947,
              "speedup_fixed_per_rank_batch": 1.85}
    (tmp_path / "systems").mkdir()
    (tmp_path / "systems" / "ddp_scaling.json").write_text(json.dumps(record))
    section = "\n".join(systems.systems_section(tmp_path))
    assert "medians of 2 rounds | 1100 vs 1870 = 1.70x | >= 1.8x: **not met**" in section
    assert "2090 = 1.90x one process; DDP reaches 89% of it" in section
    assert "80.00 ± 0.30 vs 80.20 ± 0.30 | equal within the CI: met" in section
    assert "(global batch x2): images/s | 1100 vs 2035 = 1.85x" in section
    # A record from before the rounds: its one run per side, no ceiling row.
    for key in ("repeats", "images_per_second", "independent_speedup",
                "ddp_share_of_independent", "speedup_fixed_per_rank_batch"):
        del record[key]
    record["speedup"] = 1.5
    (tmp_path / "systems" / "ddp_scaling.json").write_text(json.dumps(record))
    section = "\n".join(systems.systems_section(tmp_path))
    assert "1 vs 2 ranks | 1000 vs 1500 = 1.50x" in section
    assert "sharing nothing" not in section and "whole batch" not in section


def test_reconstruction_cell_falls_back_to_squared_error_without_an_nll_ratio() -> None:
    tables = load_script("make_results_table")
    strokes = {"mean_nll": 143.4, "mean_image_nll": 178.1, "ratio": 0.8052,
               "mean_squared_error": 20.0, "mean_image_squared_error": 40.0,
               "squared_error_ratio": 0.5}
    assert tables.reconstruction_cell(strokes) == "143.4 / 178.1 = 0.805"
    faces = {**strokes, "mean_nll": -2220.0, "mean_image_nll": 1057.8, "ratio": None}
    assert tables.reconstruction_cell(faces) == "squared error 20.0 / 40.0 = 0.500"


def test_open_set_rerun_of_one_dataset_keeps_the_others_rows(tmp_path: Path) -> None:
    import argparse
    import json

    script = load_script("open_set", "experiments")
    previous = {"command": "python experiments/open_set.py", "episodes": 600, "seed": 0,
                "settings": [{"dataset": "omniglot", "n_shot": 1},
                             {"dataset": "lfw", "n_shot": 1}]}
    path = tmp_path / "open_set.json"
    assert script.kept_settings(path, ["lfw"], argparse.Namespace(episodes=600, seed=0)) == []
    path.write_text(json.dumps(previous))
    kept = script.kept_settings(path, ["lfw"], argparse.Namespace(episodes=600, seed=0))
    assert kept == [{"command": "python experiments/open_set.py", "dataset": "omniglot",
                     "n_shot": 1}]
    # Other episodes or seed: nothing is comparable, nothing kept.
    assert script.kept_settings(path, ["lfw"], argparse.Namespace(episodes=50, seed=0)) == []


def test_open_set_row_compares_the_mavae_with_the_best_baseline_on_omniglot_1_shot() -> None:
    systems = load_script("systems_tables")

    def entry(auroc: float) -> dict:
        return {"result": {"auroc": {"mean": auroc}},
                "training": {"max_minutes": 15.0}}

    omniglot = {"dataset": "omniglot", "n_way": 5, "n_unknown": 5, "n_shot": 1,
                "methods": {"mavae": entry(97.0), "protonet": entry(96.0),
                            "matching": entry(97.5)}}
    five_shot = {**omniglot, "n_shot": 5}
    record = {"episodes": 600, "split": "test", "settings": [five_shot, omniglot]}
    [row] = systems.open_set_rows(record)
    assert "each method 15 min" in row
    assert "97.00 vs 97.50 (matching) | >= every baseline: **not met**" in row
    omniglot["methods"]["matching"] = entry(96.9)
    [row] = systems.open_set_rows(record)
    assert "97.00 vs 96.90 (matching) | >= every baseline: met" in row


def test_a_run_scored_only_for_its_generative_side_shows_among_the_longer_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tables = load_script("make_results_table")
    monkeypatch.setattr(tables, "BEYOND_HEADLINE",
                        {"omniglot": ((", the quick start's 15 minutes", ("mavae-15",)),)})
    record, cells = headline_run("mavae", "cpu-quick", 15.0, 98.0)
    data = {"omniglot": ({"mavae-15": cells}, {"mavae-15": record})}

    def generative(ratio: float) -> dict:
        return {"reconstruction": {"ratio": ratio, "mean_nll": 100 * ratio,
                                   "mean_image_nll": 100.0},
                "decoder_sensitivity": {"content_swap": 0.07, "style_swap": 0.06}}

    records = {"omniglot": {"mavae-15": generative(0.65), "generation-only": generative(0.6)}}
    beyond = "\n".join(tables.beyond_headline_section(data, records))
    rows = [line for line in beyond.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `mavae-15` | 65.0 / 100.0 = 0.650 |")
    assert rows[1].startswith("| `generation-only` | 60.0 / 100.0 = 0.600 |")
    assert "| generation-only |" not in beyond     # not an accuracy row


def test_face_style_points_read_the_runs_validation_at_the_reported_step(tmp_path) -> None:
    script = load_script("face_style_weight", folder="experiments")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"model": {"content_to_decoder": "mean"}}')
    (run_dir / "metrics.jsonl").write_text(
        '{"kind": "val", "step": 50, "val_accuracy": 18.5, "val_ci95": 0.3, "minutes": 9.0}\n'
        '{"kind": "val", "step": 100, "val_accuracy": 27.8, "val_ci95": 0.4, "minutes": 20}\n')
    report = tmp_path / "report.json"
    report.write_text(json.dumps({
        "checkpoint": {"step": 100},
        "decoder_sensitivity": {"content_swap": 0.03, "style_swap": 0.02},
        "reconstruction": {"squared_error_ratio": 0.9},
        "posterior_spread": {"style": {"signal_to_noise": 5.0}},
        "hardware": {"cpu": "AMD EPYC", "cpu_cores": 2, "torch_threads": 2}}))
    point = script.collect(f"128:60 minutes:{run_dir}:{report}")
    assert point["validation_20way_1shot"]["accuracy"] == 27.8
    assert point["latent_style"] == 128.0 and point["budget"] == "60 minutes"
    row = script.table([point]).splitlines()[-1]
    assert "| 128 | mean | 60 minutes | 100 | 27.8 ± 0.4 |" in row
    assert "| 1.50 |" in row  # swap z_c / swap z_s
    with pytest.raises(SystemExit, match="no validation record at step 75"):
        script.validation_at(run_dir, 75)
    with pytest.raises(SystemExit, match="config.json: no model.content_to_decoder"):
        script.decoder_reads(tmp_path)


def test_style_prior_diversity_is_the_mean_difference_between_two_drawings_of_a_class(
) -> None:
    """Class 0: one of its three drawings differs from the other two in half its pixels;
    class 1: three equal drawings. No drawing is compared with itself."""
    import torch

    style_prior = load_script("style_prior", "experiments")
    half = torch.zeros(4)
    half[:2] = 1
    first_class = torch.stack([torch.zeros(4), half, torch.zeros(4)])
    # Pairs of class 0: (0, half) 0.5, (0, 0) 0, (half, 0) 0.5 -> mean over 6 ordered
    # pairs 1/3.
    same = torch.ones(3, 4)
    drawings = torch.stack([first_class, same]).reshape(2, 3, 1, 2, 2)
    assert style_prior.mean_pairwise_difference(drawings) == pytest.approx((1 / 3 + 0) / 2)


def test_a_benchmark_on_a_cpu_with_native_bfloat16_labels_its_rows(tmp_path: Path) -> None:
    import json

    systems = load_script("systems_tables")
    gallery = {"command": "python benchmarks/gallery_search.py", "hardware": {"cpu": "X"},
               "entries": 1e6, "queries": 200, "threads": 1,
               "targets": {"exact_time_over_flat_ip": 1.0, "ivf_recall_at_1": 0.99,
                           "ivf_speedup_over_exact": 10.0},
               "exact": {"median_s": 1.0}, "flat_ip": {"median_s": 1.1,
                                                       "exact_time_over_flat_ip": 0.91},
               "ivf": {"runs": []}}
    (tmp_path / "systems").mkdir()
    (tmp_path / "systems" / "gallery_search.json").write_text(json.dumps(gallery))
    gallery["flat_ip"]["exact_time_over_flat_ip"] = 1.2
    (tmp_path / "systems" / "gallery_search_bf16cpu.json").write_text(json.dumps(gallery))
    rows = [line for line in systems.systems_section(tmp_path) if "exact search" in line]
    assert rows == [
        "| exact search, 1,000,000 entries, 200 queries, 1 thread | 1.00 s = 0.91x FAISS "
        "IndexFlatIP (1.10 s) | <= 1.0x: met |",
        "| exact search, 1,000,000 entries, 200 queries, 1 thread (a CPU with native "
        "bfloat16) | 1.00 s = 1.20x FAISS IndexFlatIP (1.10 s) | <= 1.0x: **not met** |"]
    # A search through the bfloat16 screen says so, with its float32 counterpart below.
    gallery["exact"]["bfloat16_screen"] = True
    gallery["exact_float32"] = {"median_s": 1.5, "time_over_flat_ip": 1.36}
    (tmp_path / "systems" / "gallery_search_bf16cpu.json").write_text(json.dumps(gallery))
    rows = [line for line in systems.systems_section(tmp_path) if "exact search" in line]
    assert rows[1:] == [
        "| exact search (bfloat16 screen), 1,000,000 entries, 200 queries, 1 thread (a CPU "
        "with native bfloat16) | 1.00 s = 1.20x FAISS IndexFlatIP (1.10 s) | <= 1.0x: "
        "**not met** |",
        "| the same exact search, product in float32 (a CPU with native bfloat16) | 1.50 s "
        "= 1.36x FAISS IndexFlatIP | - |"]


def test_the_recognizer_table_shows_batch_searches_against_float32() -> None:
    systems = load_script("systems_tables")
    record = {"targets": {"recognize_median_ms": 20.0, "enroll_images_per_second": 1000.0},
              "gallery_entries": 100000, "by_threads": {},
              "batch_search": {"queries": 2048, "entries": 104096, "screened": True,
                               "threads": 2,
                               "k1": {"median_s": 0.5, "float32_median_s": 1.0, "agree": True,
                                      "same_entries": 0.5},
                               "k10": {"median_s": 0.7, "float32_median_s": 1.1,
                                       "agree": False, "same_entries": 0.25}}}
    assert systems.recognizer_rows(record) == [
        "| search 2,048 drawings at once (bfloat16 screen), k = 1, 104,096 entries, 2 "
        "thread(s) | 0.500 s (product in float32: 1.000 s); same divergences, same entries "
        "in 50% of rows, the others ties | - |",
        "| search 2,048 drawings at once (bfloat16 screen), k = 10, 104,096 entries, 2 "
        "thread(s) | 0.700 s (product in float32: 1.100 s); **the divergences differ** | - |"]


def test_the_recognizer_benchmark_gallery_repeats_embeddings_jittered() -> None:
    """Its gallery cycles through the encoded drawings: the first copy of each as it is,
    every repeat moved (exact copies would tie in the search)."""
    import torch

    speed = load_script("recognizer_speed", "benchmarks")
    mean, var = torch.randn(3, 4), torch.rand(3, 4) + 0.1
    mu, repeated_var = speed.repeated_with_jitter(mean, var, 8, torch.Generator().manual_seed(0))
    assert mu.shape == (8, 4) and torch.equal(repeated_var, var[torch.arange(8) % 3])
    assert torch.equal(mu[:3], mean)
    moved = (mu[3:] - mean[torch.arange(3, 8) % 3]).abs()
    assert (moved > 0).all() and moved.max() < 0.5


def test_scale_curves_keep_every_nth_training_step_and_the_last_with_validation(
        tmp_path: Path) -> None:
    curves = load_script("face_scale_curves", folder="experiments")
    lines = []
    for step in (50, 100, 150, 200, 230):
        lines.append({"kind": "train", "step": step, "latent_content": step * 10.0})
        if step % 100 == 0:
            lines.append({"kind": "val", "step": step, "val_accuracy": step / 10})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = curves.curve(tmp_path, every=100)
    assert [(r["step"], r["val"]) for r in rows] == [(100, 10.0), (200, 20.0), (230, None)]
    assert rows[-1]["latent_content"] == 2300.0
    with pytest.raises(SystemExit, match="no such file"):
        curves.curve(tmp_path / "absent", every=100)
