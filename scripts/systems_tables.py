"""The recognizer, service and distributed-training benchmarks as one results section.

Read by `make_results_table.py` (results/README.md). Each line comes from the JSON a
benchmark under benchmarks/ wrote, with the command, machine and load it records; a
benchmark not yet run is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(record: dict[str, Any]) -> str:
    hardware = record.get("hardware", {})
    load = record.get("load_average_before") or record.get("load_average_1min_at_start")
    load_text = (f", load average {load[0] if isinstance(load, list) else load:.1f} at the "
                 "start" if load is not None else "")
    # Native bfloat16 decides how fast a preset's step is (gaussmem.plumbing.precision).
    bfloat16 = hardware.get("cpu_bfloat16")
    bfloat16_text = ("" if bfloat16 is None else
                     f", native bfloat16: {', '.join(bfloat16) if bfloat16 else 'none'}")
    return (f"{hardware.get('cpu', '?')}, {hardware.get('cpu_cores', '?')} cores"
            f"{bfloat16_text}{load_text}")


def _row(measure: str, result: str, target: str | None = None, met: bool = False) -> str:
    """One table row; `target` (None: no target) is followed by whether it is met."""
    verdict = "-" if target is None else f"{target}: {'met' if met else '**not met**'}"
    return f"| {measure} | {result} | {verdict} |"


def recognizer_rows(record: dict[str, Any]) -> list[str]:
    rows = []
    targets = record["targets"]
    latency, rate_target = targets["recognize_median_ms"], targets["enroll_images_per_second"]
    for threads, by_threads in sorted(record["by_threads"].items()):
        recognize = by_threads["recognize_one_image_ms"]["median"]
        enroll = by_threads["enroll_images_per_second"]
        rows.append(_row(f"recognize one image, {record['gallery_entries']:,}-entry gallery, "
                         f"{threads} thread(s)", f"{recognize:.1f} ms median",
                         f"<= {latency:.0f} ms", recognize <= latency))
        for kind in ("new_labels", "known_labels"):
            rate = enroll[kind]["overall"]
            rows.append(_row(f"enroll, batches of {enroll['batch']}, "
                             f"{kind.replace('_', ' ')}, {threads} thread(s)",
                             f"{rate:,.0f} images/s", f">= {rate_target:,.0f}",
                             rate >= rate_target))
    batch = record.get("batch_search")
    if batch:
        how = " (bfloat16 screen)" if batch["screened"] else ""
        for k in (1, 10):
            timing = batch[f"k{k}"]
            rows.append(_row(
                f"search {batch['queries']:,} drawings at once{how}, k = {k}, "
                f"{batch['entries']:,} entries, {batch['threads']} thread(s)",
                f"{timing['median_s']:.3f} s (product in float32: "
                f"{timing['float32_median_s']:.3f} s); "
                + (f"same divergences, same entries in {timing['same_entries']:.0%} of "
                   "rows, the others ties" if timing["agree"]
                   else "**the divergences differ**")))
    return rows


def gallery_rows(record: dict[str, Any]) -> list[str]:
    targets = record["targets"]
    ratio = record["flat_ip"]["exact_time_over_flat_ip"]
    how = " (bfloat16 screen)" if record["exact"].get("bfloat16_screen") else ""
    rows = [_row(f"exact search{how}, {record['entries']:,.0f} entries, {record['queries']} "
                 f"queries, {record['threads']} thread",
                 f"{record['exact']['median_s']:.2f} s = {ratio:.2f}x FAISS IndexFlatIP "
                 f"({record['flat_ip']['median_s']:.2f} s)",
                 f"<= {targets['exact_time_over_flat_ip']:.1f}x",
                 ratio <= targets["exact_time_over_flat_ip"])]
    if "exact_float32" in record:
        float32 = record["exact_float32"]
        rows.append(_row("the same exact search, product in float32",
                         f"{float32['median_s']:.2f} s = {float32['time_over_flat_ip']:.2f}x "
                         "FAISS IndexFlatIP"))
    good = [run for run in record["ivf"]["runs"]
            if run["recall_at_1"] >= targets["ivf_recall_at_1"]]
    if good:
        best = max(good, key=lambda run: run["speedup_over_exact"])
        rows.append(_row(f"IVF over the lift + exact re-rank, nprobe {best['nprobe']}",
                         f"recall@1 {best['recall_at_1']:.2f} at "
                         f"{best['speedup_over_exact']:.1f}x the exact search",
                         f"recall >= {targets['ivf_recall_at_1']}, >= "
                         f"{targets['ivf_speedup_over_exact']:.0f}x",
                         best["speedup_over_exact"] >= targets["ivf_speedup_over_exact"]))
    return rows


def service_rows(record: dict[str, Any]) -> list[str]:
    settings = record["settings"]
    recognize, enroll = record["recognize"], record["enroll"]
    restart = record["after_restart"]
    errors = recognize["errors"] + enroll["errors"]
    exact = restart["exactly_the_answered_enrollments"]
    return [
        _row(f"`gaussmem serve`, {settings['clients']} clients, {settings['seconds']:.0f} s, "
             f"{settings['entries']:,}-entry gallery: recognize",
             f"{recognize['per_second']:.0f}/s, p50 {recognize['p50_ms']:.0f} ms, p99 "
             f"{recognize['p99_ms']:.0f} ms", "p99 <= 100 ms", recognize["p99_ms"] <= 100),
        _row(f"same run: enroll ({settings['enroll_fraction']:.0%} of requests)",
             f"{enroll['per_second']:.0f}/s, p50 {enroll['p50_ms']:.0f} ms, p99 "
             f"{enroll['p99_ms']:.0f} ms"),
        _row("same run: errors; gallery after a restart",
             f"{errors} errors; {restart['labels']:,} labels, exactly the answered "
             f"enrollments: {exact}", "0 errors, exact", errors == 0 and exact)]


def ddp_rows(record: dict[str, Any]) -> list[str]:
    one, two = sorted(record["runs"], key=lambda run: run["ranks"])[:2]
    equal = (abs(one["val_accuracy"] - two["val_accuracy"])
             <= one["val_ci95"] + two["val_ci95"])
    # Medians over rounds where the benchmark repeated them; one round before that.
    rates = record.get("images_per_second", {"single": one["images_per_second_median"],
                                             "ddp": two["images_per_second_median"]})
    rows = [
        _row("DDP on the CPU (gloo), "
             + (f"{record['precision']}, " if "precision" in record else "")
             + f"{record['threads_per_process']} thread per rank, "
             f"global batch {record['global_batch']['classes_per_step']} classes: images/s, "
             "1 vs 2 ranks" + (f", medians of {record['repeats']} rounds"
                               if "repeats" in record else ""),
             f"{rates['single']:.0f} vs {rates['ddp']:.0f} = {record['speedup']:.2f}x",
             f">= {record['target_speedup']}x", record["speedup"] >= record["target_speedup"])]
    if "independent_summed" in rates:
        processes = two["ranks"]
        rows.append(_row(f"same machine, {processes} single processes of one rank's share "
                         f"at once, sharing nothing: images/s summed (what {processes} "
                         "processes can reach)",
                         f"{rates['independent_summed']:.0f} = "
                         f"{record['independent_speedup']:.2f}x one process; DDP reaches "
                         f"{100 * record['ddp_share_of_independent']:.0f}% of it"))
    if "ddp_fixed_per_rank_batch" in rates:
        rows.append(_row(f"same machine, {two['ranks']} ranks each training the single "
                         "process's whole batch (global batch x"
                         f"{two['ranks']}): images/s",
                         f"{rates['single']:.0f} vs {rates['ddp_fixed_per_rank_batch']:.0f}"
                         f" = {record['speedup_fixed_per_rank_batch']:.2f}x"))
    return [
        *rows,
        _row(f"same runs: validation accuracy after {record['global_batch']['steps']} steps",
             f"{one['val_accuracy']:.2f} ± {one['val_ci95']:.2f} vs "
             f"{two['val_accuracy']:.2f} ± {two['val_ci95']:.2f}", "equal within the CI",
             equal)]


def open_set_rows(record: dict[str, Any]) -> list[str]:
    """The issue's open-set target: on Omniglot 5 known + 5 unknown 1-shot, the MA-VAE's
    AUROC at least every baseline's, at the training budget the record names."""
    rows = []
    for setting in record["settings"]:
        if (setting["dataset"], setting["n_way"], setting["n_unknown"], setting["n_shot"]) != (
                "omniglot", 5, 5, 1) or "mavae" not in setting["methods"]:
            continue
        auroc = {method: entry["result"]["auroc"]["mean"]
                 for method, entry in setting["methods"].items()}
        best = max((method for method in auroc if method != "mavae"), key=auroc.get)
        training = setting["methods"]["mavae"]["training"]
        rows.append(_row(
            f"open set, Omniglot 5 known + 5 unknown, 1-shot, {record['episodes']} "
            f"{record['split']} episodes, each method "
            f"{training['max_minutes']:g} min on 1 thread: AUROC %, MA-VAE vs the best "
            "baseline", f"{auroc['mavae']:.2f} vs {auroc[best]:.2f} ({best})",
            ">= every baseline", auroc["mavae"] >= auroc[best]))
    return rows


#: A CPU with native bfloat16 differs from one without in more than the presets'
#: precision (its vector units too), so timings on each kind stand side by side.
ON_BFLOAT16_CPU = " (a CPU with native bfloat16)"

#: (JSON under results/, what it measures, its rows); a what ending in ON_BFLOAT16_CPU
#: also labels each of its rows, which otherwise read like the other CPU's.
BENCHMARKS = (
    ("systems/recognizer_speed.json", "the recognizer", recognizer_rows),
    ("systems/recognizer_speed_bf16cpu.json", f"the recognizer{ON_BFLOAT16_CPU}",
     recognizer_rows),
    ("systems/gallery_search.json", "large galleries", gallery_rows),
    ("systems/gallery_search_bf16cpu.json", f"large galleries{ON_BFLOAT16_CPU}",
     gallery_rows),
    ("open_set/open_set.json", "open set", open_set_rows),
    # The same episodes after the quick start's 15 minutes per method instead of 4.
    ("open_set/open_set_15min.json", "open set, 15 minutes per method", open_set_rows),
    ("service/load.json", "the HTTP service", service_rows),
    ("systems/ddp_scaling.json", "training on several processes", ddp_rows),
    # The same benchmark on a CPU without native bfloat16, where the preset trains float32.
    ("systems/ddp_scaling_float32.json", "training on several processes, float32", ddp_rows),
)


def systems_section(results: Path) -> list[str]:
    """`## Recognizer, service and distributed training`: one table, a row per measure,
    and the command and machine of each benchmark."""
    rows, sources = [], []
    for name, what, render in BENCHMARKS:
        record = _read(results / name)
        if record is None:
            continue
        label = ON_BFLOAT16_CPU if what.endswith(ON_BFLOAT16_CPU) else ""
        # Every row starts "| measure |": the label goes at the end of the measure.
        rows += [row.replace(" |", f"{label} |", 1) for row in render(record)]
        sources.append(f"- {what}: `{record.get('command', '?')}` -> `results/{name}` "
                       f"({_machine(record)})")
    if not rows:
        return []
    return ["## Recognizer, service and distributed training", "",
            "The targets of the recognizer, service and distributed-training work, each "
            "measured by a benchmark under `benchmarks/` on the machine it names; timed runs "
            "on a shared 2-core CPU, so read each beside its load average.", "",
            "| measure | result | target |", "|---|---|---|", *rows, "", *sources]
