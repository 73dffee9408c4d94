"""Omniglot loading and episode-sampling speed; writes results/speed/data_loading.json.

Measures (1) the cold build of the preprocessed cache from the release zips, (2) a warm
load of the whole dataset (all 1,623 characters from the cache, plus assembling the
rotated vinyals train/val/test subsets), and (3) sampling a fixed set of 20-way 5-shot
15-query episodes from the cached arrays, as model-ready tensors.

    python benchmarks/bench_data.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from gaussmem.data.episodes import EpisodeSampler
from gaussmem.data.omniglot import load_omniglot, load_omniglot_characters
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.plumbing.settings import resolve_data_dir


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def load_everything(data_dir: Path, cache_dir: Path) -> None:
    load_omniglot_characters(data_dir, cache_dir)
    for subset in ("train", "val", "test"):
        load_omniglot("vinyals", subset, data_dir=data_dir, cache_dir=cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="default: $GAUSSMEM_DATA")
    parser.add_argument("--repeats", type=int, default=5, help="warm loads / sampling runs")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/speed/data_loading.json")
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir)

    with tempfile.TemporaryDirectory(prefix="gaussmem-bench-cache-") as cache:
        cache_dir = Path(cache)
        cold_seconds = timed(lambda: load_omniglot_characters(data_dir, cache_dir))
        warm_all = [timed(lambda: load_everything(data_dir, cache_dir))
                    for _ in range(args.repeats)]
        warm_characters = [timed(lambda: load_omniglot_characters(data_dir, cache_dir))
                           for _ in range(args.repeats)]
        test_set = load_omniglot("vinyals", "test", data_dir=data_dir, cache_dir=cache_dir)

    def sample_all() -> None:
        for _ in EpisodeSampler(test_set, 20, 5, 15, seed=args.seed).episodes(args.episodes):
            pass

    sampling = [timed(sample_all) for _ in range(args.repeats)]
    result = {
        **provenance(),
        "seed": args.seed,
        "repeats": args.repeats,
        "cold_cache_build_s": round(cold_seconds, 3),
        "warm_load_all_characters_median_s": round(statistics.median(warm_characters), 4),
        "warm_load_characters_and_vinyals_splits_median_s": round(statistics.median(warm_all), 4),
        "episodes": {"n_way": 20, "n_shot": 5, "n_query": 15, "count": args.episodes,
                     "split": "vinyals/test",
                     "total_median_s": round(statistics.median(sampling), 4),
                     "per_episode_median_ms": round(1e3 * statistics.median(sampling)
                                                    / args.episodes, 4)},
    }
    write_json(args.out, result, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
