"""A gallery of a million Gaussians: FAISS over the symmetric-KL lift against exact search.

Synthetic gallery of `--entries` diagonal Gaussians of `--dim` (the model's content_dim)
in the ranges a trained encoder gives: entries are members of families (a family centre
~ N(0, I), members centre + N(0, 0.5^2 I), as characters of one alphabet or photos of
similar faces), log-variances uniform in [-4, 0]; queries are new views of random
entries (the entry's mean moved by half its spread per dimension, log-variance jittered
by N(0, 0.3^2)). Seeded.

Timed, with one thread by default (the machine is shared), medians over `--repeats`; the
exact searches and FlatIP run in turn, A B C A B C, and their ratios are the medians of
the rounds' ratios, so a change of the machine's load mid-run shifts all alike:
  exact     `GaussianMemory.query` (the library's default exact torch search: blocked
            GEMM over the lift, exact re-scoring; on a CPU with native bfloat16 its
            product runs through the bfloat16 screen, `gaussmem.bfloat16_screen`), the
            ground truth for recall@1;
  exact_float32
            the same search with its product in float32 (`search_screen="off"`);
  flat_ip   `LiftedGaussianIndex(kind="flat")`: FAISS IndexFlatIP over the lift,
            exact float64 re-ranking of its candidates;
  ivf       `LiftedGaussianIndex(kind="ivf")`: IndexIVFFlat over the lift, lists around
            symmetric-KL k-means centroids, `--nprobe` lists scanned, exact re-ranking.
Writes JSON with the hardware, the command and the seed.

    python benchmarks/gallery_search.py                          # 1e6 entries (minutes)
    python benchmarks/gallery_search.py --entries 1e5 --out /tmp/gallery.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gaussmem.memory import GaussianMemory, SearchScreen
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.search_faiss import LiftedGaussianIndex

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Recall@1 and speed-up the IVF should reach, and the largest exact/FlatIP time ratio.
TARGETS = {"ivf_recall_at_1": 0.99, "ivf_speedup_over_exact": 10.0,
           "exact_time_over_flat_ip": 1.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=float, default=1e6, help="gallery size (1e6)")
    parser.add_argument("--families", type=float, default=1e4, help="family centres (1e4)")
    parser.add_argument("--queries", type=int, default=200, help="queries per search (200)")
    parser.add_argument("--dim", type=int, default=64, help="Gaussian dimension (64)")
    parser.add_argument("--n-lists", type=int, default=2048, help="IVF lists (2048)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32],
                        help="IVF lists scanned per query, one run each (4 8 16 32)")
    parser.add_argument("--candidates", type=int, default=32,
                        help="entries per query re-ranked exactly (32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (3)")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "results" / "systems" / "gallery_search.json",
                        help="JSON output (results/systems/gallery_search.json)")
    return parser.parse_args(argv)


def synthetic_gallery(entries: int, families: int, dim: int, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(entries, dim)` means and variances; see the module docstring."""
    centres = torch.randn(families, dim, generator=generator)
    family = torch.randint(families, (entries,), generator=generator)
    means = centres[family] + 0.5 * torch.randn(entries, dim, generator=generator)
    variances = torch.exp(-4 * torch.rand(entries, dim, generator=generator))
    return means, variances


def new_views(means: torch.Tensor, variances: torch.Tensor, count: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` queries, each a new view of a random entry."""
    source = torch.randint(len(means), (count,), generator=generator)
    noise = torch.randn(count, means.shape[1], generator=generator)
    query_means = means[source] + 0.5 * variances[source].sqrt() * noise
    jitter = 0.3 * torch.randn(count, means.shape[1], generator=generator)
    return query_means, variances[source] * torch.exp(jitter)


def full_memory(means: torch.Tensor, variances: torch.Tensor,
                search_screen: SearchScreen = "auto") -> GaussianMemory:
    """A memory holding the gallery, filled by state (one entry per row, label = row)."""
    memory = GaussianMemory(len(means), means.shape[1], seed=0, search_screen=search_screen)
    state = memory.state_dict()
    state.update(means=means, variances=variances, labels=torch.arange(len(means)),
                 counts=torch.ones(len(means), dtype=torch.int64),
                 ages=torch.zeros(len(means), dtype=torch.int64),
                 valid=torch.ones(len(means), dtype=torch.bool))
    memory.load_state_dict(state)
    return memory


def median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time over `repeats` runs after one warm-up, and the last result."""
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def time_exact_and_flat(args: argparse.Namespace, means, variances, query_means,
                        query_variances) -> tuple[float, torch.Tensor, dict[str, Any]]:
    """The exact torch search (its top-1 ids are the ground truth), the same in float32
    and FlatIP, timed in turn after one warm-up each: (exact median seconds, truth, a
    report of the three)."""
    memory = full_memory(means, variances)
    float32_memory = full_memory(means, variances, search_screen="off")
    flat = LiftedGaussianIndex(args.dim, kind="flat", candidates=args.candidates,
                               threads=args.threads)
    start = time.perf_counter()
    flat.add(means, variances, torch.arange(len(means)))
    build_s = time.perf_counter() - start
    searches = {"exact": lambda: memory.query(query_means, query_variances, 1).slots[:, 0],
                "exact_float32": lambda: float32_memory.query(query_means, query_variances,
                                                              1).slots[:, 0],
                "flat_ip": lambda: flat.search(query_means, query_variances, 1).ids[:, 0]}
    found = {name: search() for name, search in searches.items()}   # warm-up
    times: dict[str, list[float]] = {name: [] for name in searches}
    for _ in range(args.repeats):
        for name, search in searches.items():
            start = time.perf_counter()
            found[name] = search()
            times[name].append(time.perf_counter() - start)
    truth = found["exact"]

    def over_flat(name: str) -> list[float]:
        return [a / b for a, b in zip(times[name], times["flat_ip"], strict=True)]

    seconds = {name: statistics.median(values) for name, values in times.items()}
    return seconds["exact"], truth, {
        "screened": memory.screens_search(len(query_means)),
        "exact_float32": {
            "median_s": seconds["exact_float32"],
            "queries_per_s": args.queries / seconds["exact_float32"],
            "time_over_flat_ip": statistics.median(over_flat("exact_float32")),
            "agrees_with_exact": bool(torch.equal(found["exact_float32"], truth))},
        "flat_ip": {
            "median_s": seconds["flat_ip"], "queries_per_s": args.queries / seconds["flat_ip"],
            "build_s": build_s,
            "exact_time_over_flat_ip": statistics.median(over_flat("exact")),
            "exact_time_over_flat_ip_pairs": over_flat("exact"),
            "recall_at_1": (found["flat_ip"] == truth).double().mean().item()}}


def time_ivf(args: argparse.Namespace, means, variances, query_means, query_variances,
             truth: torch.Tensor, exact_s: float) -> dict[str, Any]:
    ivf = LiftedGaussianIndex(args.dim, kind="ivf", n_lists=args.n_lists,
                              candidates=args.candidates, threads=args.threads)
    start = time.perf_counter()
    ivf.add(means, variances, torch.arange(len(means)))
    result: dict[str, Any] = {"n_lists": args.n_lists,
                              "build_s": time.perf_counter() - start, "runs": []}
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        seconds, found = median_seconds(lambda: ivf.search(query_means, query_variances, 1),
                                        args.repeats)
        result["runs"].append({
            "nprobe": nprobe, "median_s": seconds, "queries_per_s": args.queries / seconds,
            "speedup_over_exact": exact_s / seconds,
            "recall_at_1": (found.ids[:, 0] == truth).double().mean().item()})
        print(json.dumps(result["runs"][-1]), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    entries = int(args.entries)
    gallery = synthetic_gallery(entries, int(args.families), args.dim, generator)
    queries = new_views(*gallery, args.queries, generator)
    exact_s, truth, compared = time_exact_and_flat(args, *gallery, *queries)
    print(f"exact: {exact_s:.3f} s; {json.dumps(compared)}", flush=True)
    ivf = time_ivf(args, *gallery, *queries, truth, exact_s)
    report: dict[str, Any] = {
        "benchmark": "gallery search by symmetric KL: FAISS over the lift vs exact torch",
        **provenance(), "seed": args.seed, "entries": entries,
        "families": int(args.families), "dim": args.dim, "queries": args.queries,
        "repeats": args.repeats, "threads": args.threads, "candidates": args.candidates,
        "statistic": "median seconds over repeats after one warm-up", "targets": TARGETS,
        "load_average_1min_at_start": load_at_start,
        "load_average_1min_at_end": os.getloadavg()[0],
        "exact": {"median_s": exact_s, "queries_per_s": args.queries / exact_s,
                  "bfloat16_screen": compared["screened"]},
        "exact_float32": compared["exact_float32"], "flat_ip": compared["flat_ip"],
        "ivf": ivf,
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
