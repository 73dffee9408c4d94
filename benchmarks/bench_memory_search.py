"""Exact top-1 symmetric-KL search in a GaussianMemory, against the alternatives.

For each memory size m, with n queries of dimension d (seeded, CPU), times:
  gemm         the memory's own query path (blocked GEMM of lifted features, exact re-score)
  naive        the (n, m, d) broadcast of `symmetric_kl_diag` (chunked over queries); above
               --naive-full-max entries it runs on a slice of queries and is extrapolated
  faiss        the memory's query path with search_backend="faiss" (flat inner product over
               the (4d + 1)-dim lifted vectors; index build timed separately)
  plain_matmul the practical limit: one float32 (n, 4d) @ (4d, m) matmul and an argmin
and the throughput of `update_` on the full memory. Reports medians over --repeats runs
(after one warm-up), the ratio to the plain matmul and GFLOP/s = 2 n (4d) m / t, and writes
JSON with the hardware and the exact command.

    python benchmarks/bench_memory_search.py                      # the full run (minutes)
    python benchmarks/bench_memory_search.py --sizes 1e3 1e4 --repeats 1 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gaussmem.gaussian import symmetric_kl_diag
from gaussmem.memory import GaussianMemory
from gaussmem.plumbing.hardware import describe_hardware
from gaussmem.plumbing.script_record import provenance, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        default=[1e3, 1e4, 1e5, 1e6],
        help="memory sizes (entries) (default: 1e3 1e4 1e5 1e6)",
    )
    parser.add_argument("--queries", type=int, default=1000, help="queries (default: 1000)")
    parser.add_argument("--dim", type=int, default=64, help="embedding dim (default: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--naive-full-max",
        type=float,
        default=1e4,
        help="largest size where the naive form runs on all queries (1e4)",
    )
    parser.add_argument(
        "--naive-pairs",
        type=float,
        default=1e7,
        help="query x entry pairs the naive slice covers above that (1e7)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and FAISS threads (default: torch's default)",
    )
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS backend")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "results" / "speed" / "memory_search.json",
        help="JSON output (default: results/speed/memory_search.json)",
    )
    return parser.parse_args(argv)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` runs after one untimed warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_gaussians(count: int, dim: int, generator: torch.Generator):
    """Embedding-like Gaussians: means N(0, 1), log-variances uniform in [-1, 1]."""
    mu = torch.randn(count, dim, generator=generator)
    var = torch.exp(2 * torch.rand(count, dim, generator=generator) - 1)
    return mu, var


def full_memory(size: int, dim: int, generator: torch.Generator, seed: int) -> GaussianMemory:
    """A memory with every slot valid, filled by state (writing 1e6 entries would time it)."""
    memory = GaussianMemory(size, dim, seed=seed)
    state = memory.state_dict()
    state["means"], state["variances"] = random_gaussians(size, dim, generator)
    state["labels"] = torch.randint(max(1, size // 4), (size,), generator=generator)
    state["counts"] = torch.ones(size, dtype=torch.int64)
    state["ages"] = torch.randint(100, (size,), generator=generator)
    state["valid"] = torch.ones(size, dtype=torch.bool)
    memory.load_state_dict(state)
    return memory


def naive_top1(memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Top-1 slots by the (n, m, d) broadcast, in query chunks of ~2**18 elements.

    Small chunks are the naive form's best case here: 64 MiB temporaries ran 2.6x slower
    (page faults on every fresh allocation).
    """
    chunk = max(1, 2**18 // (len(memory.means) * memory.dim))
    return torch.cat(
        [
            symmetric_kl_diag(
                mu_block[:, None], var_block[:, None], memory.means, memory.variances
            ).argmin(1)
            for mu_block, var_block in zip(mu.split(chunk), var.split(chunk), strict=True)
        ]
    )


def method_row(seconds: float, plain_seconds: float, flops: float, **extra) -> dict:
    return {
        "median_s": seconds,
        "ratio_to_plain_matmul": seconds / plain_seconds,
        "gflops": flops / seconds / 1e9,
        **extra,
    }


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time per method; one warm-up each, then `repeats` rounds of all methods.

    Interleaving rounds (rather than timing each method's repeats back to back) keeps a
    change in machine load from biasing one method: the machine here is shared.
    """
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_size(size: int, args: argparse.Namespace, generator: torch.Generator) -> dict:
    memory = full_memory(size, args.dim, generator, args.seed)
    mu, var = random_gaussians(args.queries, args.dim, generator)
    flops = 2 * args.queries * 4 * args.dim * size
    query_features = torch.randn(args.queries, 4 * args.dim, generator=generator)
    entry_features = memory.entry_features

    runs: dict[str, Callable[[], object]] = {
        "plain_matmul": lambda: (query_features @ entry_features).argmin(1),
        "gemm": lambda: memory.query(mu, var),
    }
    gemm_slots = memory.query(mu, var).slots[:, 0]
    extra: dict[str, dict] = {"plain_matmul": {}, "gemm": {}}
    if not args.no_faiss:
        faiss_memory = copy.copy(memory)  # shares the buffers; owns its FAISS index
        faiss_memory.search_backend = "faiss"
        start = time.perf_counter()
        faiss_slots = faiss_memory.query(mu[:1], var[:1]).slots  # builds the index
        build = time.perf_counter() - start
        faiss_slots = faiss_memory.query(mu, var).slots[:, 0]
        runs["faiss"] = lambda: faiss_memory.query(mu, var)
        extra["faiss"] = {
            "index_build_s": build,
            "top1_agreement_with_gemm": float((faiss_slots == gemm_slots).float().mean()),
        }
    seconds = interleaved_medians(runs, args.repeats)
    row: dict = {"size": size, "methods": {}}
    for name, median in seconds.items():
        row["methods"][name] = method_row(median, seconds["plain_matmul"], flops, **extra[name])

    naive_queries = args.queries
    if size > args.naive_full_max:
        naive_queries = max(1, min(args.queries, int(args.naive_pairs // size)))
    # One timed run, no warm-up: the naive form takes tens of seconds per size.
    start = time.perf_counter()
    naive_slots = naive_top1(memory, mu[:naive_queries], var[:naive_queries])
    naive_slice = time.perf_counter() - start
    naive = naive_slice * args.queries / naive_queries
    row["methods"]["naive"] = method_row(
        naive,
        seconds["plain_matmul"],
        flops,
        timed_queries=naive_queries,
        timed_runs=1,
        extrapolated=naive_queries != args.queries,
        top1_agreement_with_gemm=float((naive_slots == gemm_slots[:naive_queries]).float().mean()),
    )

    update_mu, update_var = random_gaussians(args.queries, args.dim, generator)
    update_labels = torch.randint(size, (args.queries,), generator=generator)
    update = median_seconds(
        lambda: memory.update_(update_mu, update_var, update_labels), args.repeats
    )
    row["update"] = {
        "batch": args.queries,
        "median_s": update,
        "entries_per_s": args.queries / update,
    }
    return row


def hardware() -> dict:
    """The shared hardware description plus the FAISS build this run used."""
    info = describe_hardware()
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        info["faiss"] = None
    return info


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| entries | method | median s | x plain matmul | GFLOP/s | note |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in results:
        for name in ("plain_matmul", "gemm", "faiss", "naive"):
            if name not in row["methods"]:
                continue
            method = row["methods"][name]
            note = ""
            if method.get("extrapolated"):
                note = f"extrapolated from {method['timed_queries']} queries"
            lines.append(
                f"| {row['size']:.0e} | {name} | {method['median_s']:.3g} | "
                f"{method['ratio_to_plain_matmul']:.2f} | {method['gflops']:.1f} | {note} |"
            )
        lines.append(
            f"| {row['size']:.0e} | update_ | {row['update']['median_s']:.3g} | | | "
            f"{row['update']['entries_per_s']:.0f} entries/s (batch {row['update']['batch']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    generator = torch.Generator().manual_seed(args.seed)
    info = hardware()
    results = []
    for size in args.sizes:
        results.append(bench_size(int(size), args, generator))
        print(f"done m={int(size):.0e}", file=sys.stderr, flush=True)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "benchmark": "exact top-1 symmetric-KL search, GaussianMemory",
        **provenance(info),
        "seed": args.seed,
        "queries": args.queries,
        "dim": args.dim,
        "repeats": args.repeats,
        "statistic": "median seconds over repeats after one warm-up",
        "gflops_definition": "2 * queries * 4 * dim * entries / seconds (naive: equivalent)",
        "results": results,
        "not_run": [
            {"entries": 1e7, "device": "GPU", "reason": "no GPU was available in this session"}
        ],
    }
    write_json(args.out, report)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
