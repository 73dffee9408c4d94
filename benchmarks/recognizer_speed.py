"""Recognizer speed on the CPU: one image end to end against a large gallery, and
enrollment throughput in batches.

    python benchmarks/recognizer_speed.py --checkpoint runs/x/checkpoints/best.ckpt \
        [--entries 100000] [--threads 2] [--json results/systems/recognizer_speed.json]

Gallery: `--entries` entries, each its own label, from the content posteriors of the
Omniglot validation drawings (encoded once; repeated with a small seeded jitter of the
means to fill the gallery), written with `enroll_encoded`. Recognize: one
105x105 release PNG file (black on white, as a user has it) through `recognize`
(decode, polarity detection, resize, encode, exact search, unknown score), timed
`--runs` times after warm-up; median and percentiles. Enroll: batches of `--batch` PNG
files through `enroll_many` into that gallery (decode to memory write), images per
second: first of new labels (a label's first example is written without a lookup),
then as further examples of labels in the gallery (one search of all entries per batch,
then the memory rule image by image, `gaussmem.memory_in_order`). Batch search, one thread: the
enrollment drawings' posteriors searched against the gallery at once, k = 1 and k = 10
(what `recognize(k=5)` asks of the memory), by the default exact search (through the
bfloat16 screen on a CPU with native bfloat16) and with its product in float32
(`search_screen="off"`), in turn: median seconds, whether the two found entries at the
same divergences, and the share of rows naming the same entries (the gallery holds each
enrolled drawing twice by then, once per timed thread count, and exact ties may come
back in either order).
The machine is shared: the load average at the start and end is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from gaussmem.checkpoint import file_sha256
from gaussmem.data.omniglot import load_omniglot, omniglot_dir
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.recognizer import Recognizer


def release_pngs(folder: Path, count: int) -> list[Path]:
    """The first `count` drawings of the evaluation collection, written as PNG files."""
    paths = []
    with zipfile.ZipFile(omniglot_dir() / "images_evaluation.zip") as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".png"))
        for index, member in enumerate(members[:count]):
            path = folder / f"{index:06d}.png"
            path.write_bytes(archive.read(member))
            paths.append(path)
    return paths


def build_gallery(recognizer: Recognizer, entries: int, seed: int) -> float:
    """Fill the gallery with `entries` one-entry labels; returns the seconds it took."""
    drawings = load_omniglot("vinyals", "val")
    with torch.no_grad():
        rows = recognizer.classifier.embed(drawings.sample_tensor(
            np.arange(drawings.n_classes * drawings.n_samples_per_class)))
    content = recognizer.classifier.content_posterior(rows)
    mu, var = repeated_with_jitter(content.mean, content.var, entries,
                                   torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    recognizer.enroll_encoded([f"entry{i}" for i in range(entries)], mu, var)
    return time.perf_counter() - start


def repeated_with_jitter(mean: torch.Tensor, var: torch.Tensor, entries: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`entries` Gaussians cycling through `mean`, `var` `(n, dim)`: the first n as they
    are, every repeat with its mean moved by N(0, 0.05^2) per dimension. Exact copies
    would tie in the search, which no gallery of real photos or drawings does."""
    position = torch.arange(entries)
    index = position % len(mean)
    jitter = 0.05 * torch.randn(entries, mean.shape[1], generator=generator)
    return mean[index] + jitter * (position >= len(mean))[:, None], var[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--threads", default="1,2",
                        help="torch CPU thread counts to time, comma-separated")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of each batch search (5)")
    parser.add_argument("--json", default="results/systems/recognizer_speed.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    recognizer = Recognizer.from_checkpoint(args.checkpoint)
    build_seconds = build_gallery(recognizer, args.entries, args.seed)
    timings = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = release_pngs(Path(folder), 1 + args.batch * args.batches)
        for threads in (int(value) for value in args.threads.split(",")):
            torch.set_num_threads(threads)
            timings[threads] = time_recognizer(recognizer, paths, args, f"t{threads}")
        # One thread, as the float32 product always runs (`single_blas_thread`).
        torch.set_num_threads(1)
        batch_search = time_batch_search(recognizer, paths[1:], args.repeats)
    document = {
        "benchmark": "recognizer_speed",
        "gallery_entries": args.entries,
        "content_dim": recognizer.content_dim,
        "by_threads": timings,
        "batch_search": batch_search,
        "targets": {"recognize_median_ms": 20.0, "enroll_images_per_second": 1000.0},
        "build_gallery_from_embeddings_seconds": build_seconds,
        "checkpoint": {"path": str(args.checkpoint), "sha256": file_sha256(args.checkpoint)},
        "seed": args.seed,
        "load_average_1min_at_start": load_at_start,
        "load_average_1min_at_end": os.getloadavg()[0],
        **provenance(),
    }
    write_json(args.json, document)
    print(json.dumps(timings, indent=2))
    return 0


def time_recognizer(recognizer: Recognizer, paths: list[Path], args: argparse.Namespace,
                    tag: str) -> dict:
    """Recognize latency and enroll throughput with the current thread count; enrolled
    labels carry `tag` so each timing enrolls labels new to the gallery."""
    query, enroll_paths = paths[0], paths[1:]
    for _ in range(10):
        recognizer.recognize([query], k=5)
    latencies = []
    for _ in range(args.runs):
        start = time.perf_counter()
        recognizer.recognize([query], k=5)
        latencies.append(time.perf_counter() - start)
    # New labels (a first example: no lookup needed), then further examples of those
    # labels (each looked up against all entries).
    batch_seconds: dict[str, list[float]] = {"new_labels": [], "known_labels": []}
    for seconds in batch_seconds.values():
        for batch in range(args.batches):
            chunk = enroll_paths[batch * args.batch:(batch + 1) * args.batch]
            labels = [f"{tag}-{batch}-{i}" for i in range(len(chunk))]
            start = time.perf_counter()
            recognizer.enroll_many(labels, chunk)
            seconds.append(time.perf_counter() - start)
    milliseconds = np.array(latencies) * 1000
    return {
        "recognize_one_image_ms": {
            "median": float(np.median(milliseconds)),
            "p10": float(np.percentile(milliseconds, 10)),
            "p90": float(np.percentile(milliseconds, 90)),
            "runs": args.runs},
        "enroll_images_per_second": {
            **{kind: {"overall": args.batch * args.batches / sum(seconds),
                      "median_batch": args.batch / statistics.median(seconds)}
               for kind, seconds in batch_seconds.items()},
            "batch": args.batch, "batches": args.batches},
    }


def time_batch_search(recognizer: Recognizer, paths: list[Path], repeats: int) -> dict:
    """The drawings at `paths` searched against the gallery at once, screened (the
    default) and in float32, alternating, with the torch threads last set."""
    mu, var = recognizer.encode(paths)
    memory = recognizer.memory
    default = memory.search_screen
    report: dict = {"queries": len(paths), "entries": len(memory),
                    "screened": memory.screens_search(len(mu)), "threads": torch.get_num_threads()}
    for k in (1, 10):
        seconds: dict[str, list[float]] = {default: [], "off": []}
        found = {}
        for _ in range(repeats + 1):   # the first round warms up
            for setting, times in seconds.items():
                memory.search_screen = setting
                start = time.perf_counter()
                found[setting] = memory.query(mu, var, k)
                times.append(time.perf_counter() - start)
        memory.search_screen = default
        screened, plain = found[default], found["off"]
        report[f"k{k}"] = {
            "median_s": statistics.median(seconds[default][1:]),
            "float32_median_s": statistics.median(seconds["off"][1:]),
            "agree": bool(torch.equal(screened.divergence, plain.divergence)),
            "same_entries": (screened.slots == plain.slots).all(dim=1).double().mean().item()}
    return report


if __name__ == "__main__":
    raise SystemExit(main())
