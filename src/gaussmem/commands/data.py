"""`gaussmem data check`, `gaussmem data download` and `gaussmem data pack-lfw`."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from gaussmem.commands import DefaultsHelpFormatter, add_data_location_arguments
from gaussmem.commands.arguments import output_file
from gaussmem.errors import DataError
from gaussmem.plumbing.atomic import write_text_atomic
from gaussmem.plumbing.settings import (
    LFW_PACK_NAME,
    OMNIGLOT_BASE_URL,
    resolve_cache_dir,
    resolve_data_dir,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data check`, `data download` and `data pack-lfw`."""
    data = subparsers.add_parser("data", help="verify or fetch the datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = data_commands.add_parser(
        "check", formatter_class=DefaultsHelpFormatter,
        help="verify the datasets found and print a summary",
        description="Verify Omniglot by content (alphabets, characters, 20 drawers each, "
        "105x105 images), and LFW-a if present (layout, numbering, 250x250 photos); build "
        "or reuse their caches, and print counts per split.")
    add_data_location_arguments(check)
    check.add_argument("--json", dest="json_path", type=output_file, default=None,
                       help="also write the summary as JSON to this file")
    check.set_defaults(handler=run_check)

    download = data_commands.add_parser(
        "download", formatter_class=DefaultsHelpFormatter,
        help="download the official Omniglot zips (needs internet), verified by MD5",
        description="Fetch images_background.zip and images_evaluation.zip into "
        "<data dir>/omniglot/, each checked against the official MD5 before it is kept.")
    download.add_argument("dataset", choices=["omniglot"], help="which dataset to fetch")
    add_data_location_arguments(download, cache=False)
    download.add_argument("--base-url", default=OMNIGLOT_BASE_URL, help="where to fetch from")
    download.add_argument("--overwrite", action="store_true",
                          help="fetch again even if a file is already there")
    download.set_defaults(handler=run_download)

    pack = data_commands.add_parser(
        "pack-lfw", formatter_class=DefaultsHelpFormatter,
        help="write LFW-a's preprocessed faces to a small verifiable pack",
        description="Write the 84x84 faces of everyone with >= 5 photos (what the presets "
        "use; ~40 MB instead of the 97 MB archive) with their checksums to OUT. Put it at "
        f"<data dir>/lfw/{LFW_PACK_NAME} on a machine without the archive: it is used in its "
        "place, and gives the same arrays.")
    pack.add_argument("--out", required=True, type=output_file,
                      help=f"file to write (name it {LFW_PACK_NAME})")
    add_data_location_arguments(pack)
    pack.set_defaults(handler=run_pack_lfw)


def run_pack_lfw(args: argparse.Namespace) -> int:
    from gaussmem.data.lfw import pack_faces  # imports torch: not for `--help`

    path = pack_faces(args.out, data_dir=resolve_data_dir(args.data_dir),
                      cache_dir=resolve_cache_dir(args.cache_dir))
    print(f"ok  {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    # Imported here: they import tqdm and torch, which `--help` does without.
    from gaussmem.data.download import download_omniglot
    from gaussmem.data.omniglot import OMNIGLOT_FOLDER

    destination = resolve_data_dir(args.data_dir) / OMNIGLOT_FOLDER
    for path in download_omniglot(destination, args.base_url, overwrite=args.overwrite):
        print(f"ok  {path}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from gaussmem.data.omniglot import load_omniglot_characters  # imports torch

    data_dir = resolve_data_dir(args.data_dir)
    cache_dir = resolve_cache_dir(args.cache_dir)
    started = time.perf_counter()
    cached = load_omniglot_characters(data_dir, cache_dir)
    seconds = time.perf_counter() - started
    collections = Counter(cached.metadata["collections"])
    alphabets = Counter({(c, name.split("/")[0]) for name, c in
                         zip(cached.metadata["characters"], cached.metadata["collections"],
                             strict=True)})
    n_samples, height, width = cached.array.shape[1:]
    summary = {
        "data_dir": str(data_dir), "cache": str(cached.directory),
        "cache_status": cached.status, "load_seconds": round(seconds, 3),
        "image_size": [int(height), int(width)], "samples_per_character": int(n_samples),
        "collections": {c: {"alphabets": sum(1 for cc, _ in alphabets if cc == c),
                            "characters": count, "images": count * int(n_samples)}
                        for c, count in collections.items()},
        "splits": _split_summary(data_dir, cache_dir),
        "lfw": _lfw_status(data_dir, cache_dir),
    }
    _print_summary(summary)
    if args.json_path:
        write_text_atomic(args.json_path, json.dumps(summary, indent=1))
    return 0


def _split_summary(data_dir: Path, cache_dir: Path) -> dict[str, dict]:
    from gaussmem.data.omniglot import load_omniglot  # imports torch
    from gaussmem.data.omniglot_splits import SCHEME_SUBSETS

    summary: dict[str, dict] = {}
    for scheme, subsets in SCHEME_SUBSETS.items():
        characters_by_subset = {}
        for subset in subsets:
            dataset = load_omniglot(scheme, subset, data_dir=data_dir, cache_dir=cache_dir)
            characters_by_subset[subset] = {n.rsplit("/", 1)[0] for n in dataset.class_names}
            summary[f"{scheme}/{subset}"] = {"classes": dataset.n_classes,
                                             "images": dataset.n_classes
                                             * dataset.n_samples_per_class,
                                             "characters": len(characters_by_subset[subset])}
        evaluation_subsets = [s for s in subsets if s not in ("trainval",)]
        overlap = [(a, b) for i, a in enumerate(evaluation_subsets)
                   for b in evaluation_subsets[i + 1:]
                   if characters_by_subset[a] & characters_by_subset[b]]
        summary[f"{scheme}/disjoint"] = {"ok": not overlap, "overlapping": overlap}
    return summary


def _lfw_status(data_dir: Path, cache_dir: Path) -> dict | None:
    """Counts and the paper split's cache for LFW-a, or None when it is absent."""
    from gaussmem.data.lfw import (  # imports torch: not for `--help`
        LFW_SUBSETS,
        lfw_source,
        load_lfw_faces,
        paper_split,
        people_counts,
    )

    try:
        source = lfw_source(data_dir)
    except DataError:
        return None
    cached = load_lfw_faces(5, data_dir=data_dir, cache_dir=cache_dir)
    counts = people_counts(data_dir)
    return {"source": str(source), "people": len(counts), "images": sum(counts.values()),
            "people_with_3_or_more": sum(n >= 3 for n in counts.values()),
            "people_with_5_or_more": sum(n >= 5 for n in counts.values()),
            "paper_split": {s: len(paper_split(s)) for s in LFW_SUBSETS},
            "cache": str(cached.directory), "cache_status": cached.status,
            "image_size": list(cached.array.shape[1:])}


def _print_summary(summary: dict) -> None:
    height, width = summary["image_size"]
    print(f"Omniglot  data: {summary['data_dir']}/omniglot")
    print(f"  cache: {summary['cache']}  [{summary['cache_status']}, "
          f"{summary['load_seconds']:.2f} s]")
    print(f"  images: 105x105 release -> {height}x{width} uint8, strokes = 255, "
          f"{summary['samples_per_character']} drawers per character")
    print(f"  {'collection':<20}{'alphabets':>10}{'characters':>12}{'images':>9}")
    for name, counts in summary["collections"].items():
        print(f"  {name:<20}{counts['alphabets']:>10}{counts['characters']:>12}"
              f"{counts['images']:>9}")
    print(f"  {'split':<20}{'classes':>10}{'characters':>12}{'images':>9}")
    for name, counts in summary["splits"].items():
        if name.endswith("/disjoint"):
            verdict = "yes" if counts["ok"] else f"NO {counts['overlapping']}"
            print(f"  {name:<20}{verdict:>10}")
        else:
            print(f"  {name:<20}{counts['classes']:>10}{counts['characters']:>12}"
                  f"{counts['images']:>9}")
    lfw = summary["lfw"]
    if lfw is None:
        print(f"LFW-a  not found under {summary['data_dir']}/lfw (optional)")
        return
    print(f"LFW-a  data: {lfw['source']}")
    print(f"  cache: {lfw['cache']}  [{lfw['cache_status']}]")
    print(f"  {lfw['images']} photos of {lfw['people']} people; "
          f"{lfw['people_with_3_or_more']} people have >= 3, "
          f"{lfw['people_with_5_or_more']} have >= 5")
    print(f"  paper split (>= 5 photos, {lfw['image_size'][0]}x{lfw['image_size'][1]}): "
          f"{lfw['paper_split']['train']} train / {lfw['paper_split']['test']} test people; "
          f"the train people cut into {lfw['paper_split']['fit']} fit + "
          f"{lfw['paper_split']['val']} val for model selection")
