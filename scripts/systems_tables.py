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
    return f"{hardware.get('cpu', '?')}, {hardware.get('cpu_cores', '?')} cores{load_text}"


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def recognizer_rows(record: dict[str, Any]) -> list[str]:
    rows = []
    targets = record["targets"]
    for threads, by_threads in sorted(record["by_threads"].items()):
        recognize = by_threads["recognize_one_image_ms"]["median"]
        enroll = by_threads["enroll_images_per_second"]
        rows.append(
            f"| recognize one image, {record['gallery_entries']:,}-entry gallery, {threads} "
            f"thread(s) | {recognize:.1f} ms median | <= {targets['recognize_median_ms']:.0f} "
            f"ms: {_verdict(recognize <= targets['recognize_median_ms'])} |")
        for kind in ("new_labels", "known_labels"):
            rate = enroll[kind]["overall"]
            rows.append(
                f"| enroll, batches of {enroll['batch']}, {kind.replace('_', ' ')}, {threads} "
                f"thread(s) | {rate:,.0f} images/s | >= {targets['enroll_images_per_second']:,.0f}"
                f": {_verdict(rate >= targets['enroll_images_per_second'])} |")
    return rows


def gallery_rows(record: dict[str, Any]) -> list[str]:
    targets = record["targets"]
    ratio = record["flat_ip"]["exact_time_over_flat_ip"]
    rows = [f"| exact search, {record['entries']:,.0f} entries, {record['queries']} queries, "
            f"{record['threads']} thread | {record['exact']['median_s']:.2f} s = {ratio:.2f}x "
            f"FAISS IndexFlatIP ({record['flat_ip']['median_s']:.2f} s) | <= "
            f"{targets['exact_time_over_flat_ip']:.1f}x: "
            f"{_verdict(ratio <= targets['exact_time_over_flat_ip'])} |"]
    good = [run for run in record["ivf"]["runs"]
            if run["recall_at_1"] >= targets["ivf_recall_at_1"]]
    if good:
        best = max(good, key=lambda run: run["speedup_over_exact"])
        rows.append(
            f"| IVF over the lift + exact re-rank, nprobe {best['nprobe']} | recall@1 "
            f"{best['recall_at_1']:.2f} at {best['speedup_over_exact']:.1f}x the exact search | "
            f"recall >= {targets['ivf_recall_at_1']}, >= {targets['ivf_speedup_over_exact']:.0f}x"
            f": {_verdict(best['speedup_over_exact'] >= targets['ivf_speedup_over_exact'])} |")
    return rows


def service_rows(record: dict[str, Any]) -> list[str]:
    settings = record["settings"]
    recognize, enroll = record["recognize"], record["enroll"]
    restart = record["after_restart"]
    errors = recognize["errors"] + enroll["errors"]
    return [
        f"| `gaussmem serve`, {settings['clients']} clients, {settings['seconds']:.0f} s, "
        f"{settings['entries']:,}-entry gallery: recognize | {recognize['per_second']:.0f}/s, "
        f"p50 {recognize['p50_ms']:.0f} ms, p99 {recognize['p99_ms']:.0f} ms | p99 <= 100 ms: "
        f"{_verdict(recognize['p99_ms'] <= 100)} |",
        f"| same run: enroll ({settings['enroll_fraction']:.0%} of requests) | "
        f"{enroll['per_second']:.0f}/s, p50 {enroll['p50_ms']:.0f} ms, p99 "
        f"{enroll['p99_ms']:.0f} ms | - |",
        f"| same run: errors; gallery after a restart | {errors} errors; "
        f"{restart['labels']:,} labels, exactly the answered enrollments: "
        f"{restart['exactly_the_answered_enrollments']} | 0 errors, exact: "
        f"{_verdict(errors == 0 and restart['exactly_the_answered_enrollments'])} |"]


def ddp_rows(record: dict[str, Any]) -> list[str]:
    one, two = sorted(record["runs"], key=lambda run: run["ranks"])[:2]
    equal = (abs(one["val_accuracy"] - two["val_accuracy"])
             <= one["val_ci95"] + two["val_ci95"])
    return [
        f"| DDP on the CPU (gloo), {record['threads_per_process']} thread per rank, global "
        f"batch {record['global_batch']['classes_per_step']} classes: images/s, 1 vs 2 ranks | "
        f"{one['images_per_second_median']:.0f} vs {two['images_per_second_median']:.0f} = "
        f"{record['speedup']:.2f}x | >= {record['target_speedup']}x: "
        f"{_verdict(record['speedup'] >= record['target_speedup'])} |",
        f"| same runs: validation accuracy after {record['global_batch']['steps']} steps | "
        f"{one['val_accuracy']:.2f} ± {one['val_ci95']:.2f} vs {two['val_accuracy']:.2f} ± "
        f"{two['val_ci95']:.2f} | equal within the CI: "
        f"{_verdict(equal)} |"]


#: (JSON under results/, what it measures, its rows).
BENCHMARKS = (
    ("recognizer_speed.json", "the recognizer", recognizer_rows),
    ("gallery_search.json", "large galleries", gallery_rows),
    ("service/load.json", "the HTTP service", service_rows),
    ("ddp_scaling.json", "training on several processes", ddp_rows),
)


def systems_section(results: Path) -> list[str]:
    """`## Recognizer, service and distributed training`: one table, a row per measure,
    and the command and machine of each benchmark."""
    rows, sources = [], []
    for name, what, render in BENCHMARKS:
        record = _read(results / name)
        if record is None:
            continue
        rows += render(record)
        sources.append(f"- {what}: `{record.get('command', '?')}` -> `results/{name}` "
                       f"({_machine(record)})")
    if not rows:
        return []
    return ["## Recognizer, service and distributed training", "",
            "The targets of the recognizer, service and distributed-training work, each "
            "measured by a benchmark under `benchmarks/` on the machine it names; timed runs "
            "on a shared 2-core CPU, so read each beside its load average.", "",
            "| measure | result | target |", "|---|---|---|", *rows, "", *sources]
