"""Regenerate the measured tables of README.md and docs/experiments.md from results/.

Figures in those pages are never typed: each table sits between
`<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->` markers and is
rewritten from the JSON that a benchmark command wrote (which records the hardware, the
command and the seed), or from the markdown `scripts/make_results_table.py` generated
from such JSON. Run after any benchmark (and after make_results_table.py):

    python scripts/update_readme.py
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from make_results_table import QUICKSTART_RUN

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
#: The quick start's recipe with generation drawing z_s from the conditional style prior
#: (`gaussmem generative-report`'s default), when its record exists.
CONDITIONAL_STYLE_RUN = "cpu-quick-f32-style-conditional"
#: The pages with generated blocks; each block's markers sit in one of them.
PAGES = (ROOT / "README.md", ROOT / "docs" / "experiments.md")


def _hardware_line(result: dict) -> str:
    hardware = result["hardware"]
    device = hardware.get("gpu") or f"{hardware['cpu']}, {hardware['cpu_cores']} cores"
    load = hardware.get("load_average")
    load_note = f", load average {load[0]:.1f} at the start" if load else ""
    # A benchmark without randomness (random pixels aside) records no seed.
    seed = f", seed {result['seed']}" if "seed" in result else ""
    return (f"Measured on {device} (torch {hardware['torch']}, "
            f"{hardware['torch_threads']} threads{load_note}) with `{result['command']}`"
            f"{seed}.")


def render_data_loading(result: dict) -> str:
    episodes = result["episodes"]
    rows = [
        ("First load: verify the release and build the cache",
         f"{result['cold_cache_build_s']:.2f} s"),
        ("Later load of all 1,623 characters (memory-mapped cache, checksum verified)",
         f"{result['warm_load_all_characters_median_s']:.3f} s"),
        ("Later load of the characters plus the rotated vinyals train/val/test subsets",
         f"{result['warm_load_characters_and_vinyals_splits_median_s']:.3f} s"),
        (f"Sampling {episodes['count']} {episodes['n_way']}-way {episodes['n_shot']}-shot "
         f"{episodes['n_query']}-query episodes ({episodes['split']})",
         f"{episodes['total_median_s']:.3f} s ({episodes['per_episode_median_ms']:.2f} ms "
         "per episode)"),
    ]
    lines = ["| what | median time |", "| --- | --- |"]
    lines += [f"| {what} | {time} |" for what, time in rows]
    return "\n".join(lines) + f"\n\n{_hardware_line(result)} Medians of {result['repeats']} runs."


def _seconds_and_ratio(method: dict | None) -> str:
    if method is None:
        return "not run"
    note = " (extrapolated)" if method.get("extrapolated") else ""
    return f"{method['median_s']:.3g} s ({method['ratio_to_plain_matmul']:.2f}x){note}"


def render_memory_search(result: dict) -> str:
    lines = ["| entries | plain matmul + argmin | GaussianMemory.query (GEMM form) | FAISS flat IP "
             "| naive broadcast | update_ entries/s |", "|---:|---:|---:|---:|---:|---:|"]
    for row in result["results"]:
        methods = row["methods"]
        lines.append(
            f"| {row['size']:.0e} | {methods['plain_matmul']['median_s']:.3g} s "
            f"| {_seconds_and_ratio(methods.get('gemm'))} "
            f"| {_seconds_and_ratio(methods.get('faiss'))} "
            f"| {_seconds_and_ratio(methods.get('naive'))} "
            f"| {row['update']['entries_per_s']:,.0f} |")
    not_run = "; ".join(f"{item['entries']:.0e} entries on a {item['device']}: {item['reason']}"
                        for item in result.get("not_run", []))
    return ("\n".join(lines) + f"\n\n{result['queries']} queries, d = {result['dim']}, "
            f"{result['statistic']} ({result['repeats']} repeats); ratios are to the plain "
            f"matmul. {_hardware_line(result)}" + (f" Not run: {not_run}." if not_run else ""))


def render_omniglot_tables(markdown: str) -> str:
    """Tables 1 and 2 of results/omniglot.md (itself generated from results JSON)."""
    start = markdown.index("## Table 1")
    end = markdown.index("\n## ", markdown.index("## Table 2"))
    return markdown[start:end].strip().replace("## Table", "### Table")


def _section(markdown: str, heading: str, readme_heading: str) -> str:
    """The `## heading` section of a generated markdown file, up to the next `## `,
    under `readme_heading` (the README nests it one level deeper)."""
    start = markdown.index(f"## {heading}")
    end = markdown.index("\n## ", start + 1)
    return markdown[start:end].strip().replace(f"## {heading}", readme_heading, 1)


def render_omniglot_seeds(markdown: str) -> str:
    """The across-training-seeds section of results/omniglot.md."""
    return _section(markdown, "Across training seeds", "### Across training seeds")


def render_omniglot_lake(markdown: str) -> str:
    """The Kaiser et al. split section of results/omniglot.md (empty until a run)."""
    heading = "Kaiser et al.'s split (lake)"
    if f"## {heading}" not in markdown:
        return "Not yet run."
    return _section(markdown, heading, f"### {heading}")


def render_omniglot_speed(markdown: str) -> str:
    """The training-speed section of results/omniglot.md."""
    return _section(markdown, "Training speed", "### Whole runs")


def render_headline(markdown: str) -> str:
    """The headline section of results/README.md (each method's CPU preset, the paper,
    the longer runs, and whether the rows share a budget), without its heading."""
    start = markdown.index("## Headline") + len("## Headline")
    return markdown[start:markdown.index("\n## ", start)].strip()


def render_quickstart(record: dict) -> str:
    """What the quick start's first command reaches: the `cpu-quick` preset's run
    `QUICKSTART_RUN` (its training record, 5-way 1-shot cell and generative report)."""
    run_results = RESULTS / "omniglot" / QUICKSTART_RUN
    accuracy = json.loads((run_results / "5w1s.json").read_text())["result"]["accuracy"]
    run = record["run"]
    last = record["validation"][-1]
    precision = record["config"].get("precision", "float32")
    text = (f"Expect, from the `cpu-quick` run in `results/omniglot/{QUICKSTART_RUN}/` "
            f"({run['budget']['train_minutes']:.0f} minutes, {run['budget']['steps']:,} "
            f"steps on a {run['hardware']}, in {precision}): a last validation line near "
            f"`val {record['config']['validation']['n_way']}-way "
            f"{record['config']['validation']['n_shot']}-shot {last['accuracy']:.2f}%` and "
            f"a test line near `5-way 1-shot (support-query, test, {accuracy['episodes']} "
            f"episodes, seed 0): {accuracy['mean']:.2f}% ± {accuracy['ci95']:.2f}`. A "
            "slower CPU trains fewer steps, and one without native bfloat16 (float32) far "
            "fewer (docs/training.md).")
    generative_path = run_results / "generative.json"
    if generative_path.is_file():
        report = json.loads(generative_path.read_text())
        reconstruction, swap = report["reconstruction"], report["decoder_sensitivity"]
        text += (f" Its reconstructions (test, 100-way) have {reconstruction['ratio']:.2f}x "
                 f"the NLL of the split's mean image; swapping z_c changes them by "
                 f"{swap['content_swap']:.3f}, swapping z_s by {swap['style_swap']:.3f}")
        generation = report.get("generation")
        if generation:
            view = ("the judge seeing strokes" if generation.get("judge_view") == "strokes"
                    else "the judge seeing raw pixels")
            text += (f"; {generation['generated']['mean']:.0f}% of one-shot generations "
                     f"with z_s from N(0, I) are judged as their class ({view}; chance "
                     f"{generation['chance']:.0f}%, real drawings "
                     f"{generation['real_images']['mean']:.0f}%)")
        text += "."
    conditional_path = RESULTS / "omniglot" / CONDITIONAL_STYLE_RUN / "generative.json"
    if conditional_path.is_file():
        generation = json.loads(conditional_path.read_text())["generation"]
        text += (" With the conditional style prior generation now uses, "
                 f"{generation['generated']['mean']:.0f}% (`{CONDITIONAL_STYLE_RUN}`, "
                 f"real drawings {generation['real_images']['mean']:.0f}%).")
    return text


def render_step_speed(result: dict) -> str:
    """benchmarks/train_step_speed.py's training-step throughput, one row per variant and
    step size, and the evaluation encoder's; with the host syncs per step where the
    report counted them (on CUDA, since the sync-free memory: a sync stalls the queue)."""
    syncs = all(row.get("host_syncs_per_step") is not None for row in result["training"])
    lines = ["| classes per step (images) | variant | images/s, median |"
             + (" host syncs per step |" if syncs else ""),
             "|---:|---|---:|" + ("---:|" if syncs else "")]
    for row in result["training"]:
        lines.append(f"| {row['classes_per_step']} ({row['images_per_step']}) | {row['variant']} "
                     f"| {row['images_per_second']['median']:,.0f} |"
                     + (f" {row['host_syncs_per_step']:g} |" if syncs else ""))
    embedding = ", ".join(f"batch {row['embed_batch_size']}: "
                          f"{row['images_per_second']['median']:,.0f}"
                          for row in result["embedding"])
    hardware = result["hardware"]
    device = hardware.get("gpu") or f"{hardware['cpu']}, {hardware['cpu_cores']} cores"
    return ("\n".join(lines) + f"\n\nEvaluation encoder, images/s: {embedding}. Measured on "
            f"{device} (torch {hardware['torch']}) with `{result['command']}`; random "
            f"pixels, medians over steps after {result.get('warmup_steps', 3)} warm-up "
            "steps.")


def render_cpu_contention(result: dict) -> str:
    """benchmarks/cpu_contention.py: training threads alone and beside a busy process."""
    lines = ["| other process's busy threads | training threads | step, median | step, mean "
             "| step, largest | memory calls, median |", "|---:|---:|---:|---:|---:|---:|"]
    for row in result["conditions"]:
        step, memory = row["step_ms"], row["memory_ms"]
        lines.append(f"| {row['competing_threads']} | {row['num_threads']} "
                     f"| {step['median']:,.0f} ms | {step['mean']:,.0f} ms "
                     f"| {step['max']:,.0f} ms | {memory['median']:,.0f} ms |")
    return ("\n".join(lines) + f"\n\ncpu-quick steps (512 classes x 2 drawings, random "
            f"pixels), {result['steps']} per condition after 3 warm-up steps. "
            + _hardware_line(result))


def render_lfw_table(markdown: str) -> str:
    """Table 3 of results/lfw.md (itself generated from results JSON)."""
    start = markdown.index("## Table 3")
    end = markdown.index("\n## ", start)
    return markdown[start:end].strip().replace("## Table", "### Table")


def render_ensemble_views(markdown: str) -> str:
    """The test-split summary of results/ensemble_views.md (validation chose what it
    scores; the validation sections and every combination stay in that file)."""
    heading = "## Summary: test split"
    if heading not in markdown:
        return "Not yet run on the test split."
    summary = markdown[markdown.index(heading) + len(heading):]
    return summary.split("\n#")[0].strip()


RENDERERS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "headline": ("README.md", render_headline),
    "quickstart": (f"omniglot/{QUICKSTART_RUN}/training.json", render_quickstart),
    "data_loading": ("speed/data_loading.json", render_data_loading),
    "memory_search": ("speed/memory_search.json", render_memory_search),
    "omniglot_tables": ("omniglot.md", render_omniglot_tables),
    "omniglot_seeds": ("omniglot.md", render_omniglot_seeds),
    "omniglot_lake": ("omniglot.md", render_omniglot_lake),
    "omniglot_ensemble_views": ("ensemble_views.md", render_ensemble_views),
    "lfw_table": ("lfw.md", render_lfw_table),
    "omniglot_speed": ("omniglot.md", render_omniglot_speed),
    "step_speed_cpu": ("speed/speed-cpu.json", render_step_speed),
    "step_speed_gpu": ("speed/speed-gpu.json", render_step_speed),
    "step_speed_gpu_graph": ("speed/speed-gpu-cuda-graph.json", render_step_speed),
    "step_speed_gpu_graph_small": ("speed/speed-gpu-cuda-graph-80-512.json", render_step_speed),
    "cpu_contention": ("speed/cpu_contention.json", render_cpu_contention),
}


def main() -> None:
    pages = {path: path.read_text() for path in PAGES}
    for name, (file_name, render) in RENDERERS.items():
        source = RESULTS / file_name
        if not source.exists():
            continue
        pattern = re.compile(rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: "
                             rf"{name} -->)", re.S)
        text = source.read_text()
        table = render(json.loads(text) if file_name.endswith(".json") else text)
        found = 0
        for path, page in pages.items():
            pages[path], count = pattern.subn(lambda m, t=table: f"{m[1]}{t}\n{m[2]}", page)
            found += count
        if found == 0:
            names = ", ".join(str(path.relative_to(ROOT)) for path in PAGES)
            raise SystemExit(f"no page ({names}) has markers for {name!r}")
    for path, page in pages.items():
        path.write_text(page)


if __name__ == "__main__":
    main()
