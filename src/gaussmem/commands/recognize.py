"""`gaussmem enroll`, `gaussmem recognize` and `gaussmem gallery list|remove|calibrate`:
the recognizer (gaussmem.recognizer) on the user's own image files.

A gallery directory records its checkpoint's path and SHA-256, so only `enroll` into a
new gallery needs `--checkpoint`; elsewhere it is for a checkpoint that moved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gaussmem.commands import DefaultsHelpFormatter
from gaussmem.commands.arguments import finite_float, positive_int

#: Preprocessing polarity choices (gaussmem.preprocess.POLARITIES; kept here so building
#: the parser does not import torch).
_POLARITIES = ("auto", "as-is", "invert")
_SCORES = ("similarity", "margin", "mahalanobis")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_enroll(subparsers)
    _register_recognize(subparsers)
    _register_gallery(subparsers)


def _common(parser: argparse.ArgumentParser, *, checkpoint_help: str) -> None:
    parser.add_argument("--gallery", required=True, type=Path, help="gallery directory")
    parser.add_argument("--checkpoint", type=Path, default=None, help=checkpoint_help)
    parser.add_argument("--polarity", choices=_POLARITIES, default="auto",
                        help="stroke models: invert dark-on-light drawings (auto detects "
                        "them from the border), always (invert) or never (as-is)")


_MOVED = "the gallery's checkpoint, if it moved (default: the path the gallery records)"


def _register_enroll(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "enroll", help="add labelled images to a gallery (created if new)",
        description="Encode images with an MA-VAE checkpoint and add them to a gallery "
        "with the paper's memory rule. Either every image is enrolled or none (an "
        "unreadable file stops the command before the gallery changes).",
        formatter_class=DefaultsHelpFormatter)
    _common(parser, checkpoint_help="MA-VAE checkpoint (needed for a new gallery; "
            "otherwise " + _MOVED + ")")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--label", help="label of every FILE")
    source.add_argument("--from-folder", type=Path, default=None, metavar="ROOT",
                        help="one subfolder per label, named by it, holding its images")
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="images (--label)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_enroll)


def _register_recognize(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recognize", help="label images with a gallery, or say unknown",
        description="For each image: the gallery's nearest label and its similarity "
        "exp(-SKL), or unknown when the unknown score is below the threshold (the "
        "gallery's, set by `gaussmem gallery calibrate`, or --threshold).",
        formatter_class=DefaultsHelpFormatter)
    _common(parser, checkpoint_help=_MOVED)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="images")
    parser.add_argument("--k", type=positive_int, default=3, help="nearest labels to show")
    parser.add_argument("--threshold", type=finite_float, default=None,
                        help="accept when the unknown score is at least this (default: the "
                        "gallery's; none: always the nearest label)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_recognize)


def _register_gallery(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gallery", help="list, remove or calibrate a gallery's labels",
        description="Inspect and edit a gallery made by `gaussmem enroll`.",
        formatter_class=DefaultsHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="labels and their example counts",
                                 formatter_class=DefaultsHelpFormatter)
    _common(listing, checkpoint_help=_MOVED)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)
    remove = actions.add_parser("remove", help="forget labels",
                                formatter_class=DefaultsHelpFormatter)
    _common(remove, checkpoint_help=_MOVED)
    remove.add_argument("labels", nargs="+", metavar="LABEL")
    remove.set_defaults(handler=_remove)
    calibrate = actions.add_parser(
        "calibrate", help="set the unknown threshold for a target false-accept rate",
        description="Pick the lowest threshold that accepts at most --target-far of the "
        "unknown images, and store it (and the score) in the gallery. Use images that "
        "were not enrolled: known ones of enrolled labels, unknown ones of anyone else.",
        formatter_class=DefaultsHelpFormatter)
    _common(calibrate, checkpoint_help=_MOVED)
    calibrate.add_argument("--known-folder", type=Path, required=True, metavar="ROOT",
                           help="held-out images of enrolled labels, one subfolder per label")
    calibrate.add_argument("--unknown-folder", type=Path, required=True, metavar="ROOT",
                           help="images of labels not in the gallery (any layout)")
    calibrate.add_argument("--target-far", type=_rate, default=0.05,
                           help="largest fraction of unknown images to accept")
    calibrate.add_argument("--score", choices=_SCORES, default=None,
                           help="unknown score (default: the gallery's)")
    calibrate.add_argument("--json", action="store_true", help="print JSON")
    calibrate.set_defaults(handler=_calibrate)


def _rate(value: str) -> float:
    number = finite_float(value)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not in [0, 1)")
    return number


# --- handlers -------------------------------------------------------------------------
def _open(args: argparse.Namespace, *, create: bool = False) -> Any:
    from gaussmem.errors import GalleryError
    from gaussmem.gallery_file import MANIFEST_NAME
    from gaussmem.recognizer import Recognizer

    if create and not (args.gallery / MANIFEST_NAME).is_file():
        if args.checkpoint is None:
            raise GalleryError(f"{args.gallery} is a new gallery: give the MA-VAE "
                               "--checkpoint to enroll with")
        return Recognizer.from_checkpoint(args.checkpoint, polarity=args.polarity)
    return Recognizer.load(args.gallery, checkpoint=args.checkpoint, polarity=args.polarity)


def _enroll(args: argparse.Namespace) -> int:
    from gaussmem.errors import GalleryError

    if args.from_folder is not None:
        if args.files:
            raise GalleryError("give FILEs with --label, or --from-folder alone")
        labelled = labelled_folder(args.from_folder)
    else:
        if not args.files:
            raise GalleryError("--label needs at least one FILE")
        labelled = [(args.label, path) for path in args.files]
    recognizer = _open(args, create=True)
    report = recognizer.enroll_many([label for label, _ in labelled],
                                    [path for _, path in labelled])
    recognizer.save(args.gallery)
    labels = sorted({label for label, _ in labelled})
    if args.json:
        print(json.dumps({"gallery": str(args.gallery), "labels": labels,
                          "images": report.n_images, "merged": report.n_merged,
                          "new_entries": report.n_new_entries,
                          "gallery_labels": len(recognizer.labels())}))
    else:
        print(f"enrolled {report.n_images} image(s) of {len(labels)} label(s) "
              f"({report.n_merged} merged into existing entries, {report.n_new_entries} "
              f"new); {args.gallery} now holds {len(recognizer.labels())} label(s)")
    return 0


def _recognize(args: argparse.Namespace) -> int:
    recognizer = _open(args)
    results = recognizer.recognize(args.files, k=args.k, threshold=args.threshold)
    if args.json:
        print(json.dumps([{"image": str(path), **result.to_dict()}
                          for path, result in zip(args.files, results, strict=True)], indent=2))
        return 0
    for path, result in zip(args.files, results, strict=True):
        others = ", ".join(f"{match.label} {match.similarity:.3f}" for match in result.top_k)
        if result.label is not None:
            verdict = f"{result.label} (similarity {result.similarity:.3f})"
        elif result.nearest is None:
            verdict = "unknown (empty gallery)"
        else:
            verdict = (f"unknown ({result.score_name} {result.score:.3g} < threshold "
                       f"{result.threshold:.3g})")
        print(f"{path}: {verdict}  [nearest: {others}]")
    return 0


def _list(args: argparse.Namespace) -> int:
    recognizer = _open(args)
    labels = recognizer.labels()
    if args.json:
        print(json.dumps({"gallery": str(args.gallery), "labels": labels,
                          "checkpoint": str(recognizer.checkpoint_path),
                          "unknown_score": recognizer.unknown_score,
                          "threshold": recognizer.threshold}, indent=2))
        return 0
    threshold = ("none (every image gets its nearest label)" if recognizer.threshold is None
                 else f"{recognizer.threshold:.4g}")
    print(f"{args.gallery}: {len(labels)} label(s), checkpoint {recognizer.checkpoint_path}, "
          f"unknown score {recognizer.unknown_score}, threshold {threshold}")
    for label, count in labels.items():
        print(f"  {label}: {count} example(s)")
    return 0


def _remove(args: argparse.Namespace) -> int:
    recognizer = _open(args)
    for label in args.labels:
        recognizer.remove(label)
    recognizer.save(args.gallery)
    print(f"removed {len(args.labels)} label(s); {args.gallery} now holds "
          f"{len(recognizer.labels())}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    recognizer = _open(args)
    known = labelled_folder(args.known_folder)
    unknown = folder_images(args.unknown_folder)
    calibration = recognizer.calibrate([path for _, path in known],
                                       [label for label, _ in known], unknown,
                                       args.target_far, score=args.score)
    recognizer.save(args.gallery)
    if args.json:
        print(json.dumps(vars(calibration) | {"gallery": str(args.gallery)}, indent=2))
    else:
        print(f"threshold {calibration.threshold:.4g} on {calibration.score}: accepts "
              f"{calibration.false_accept_rate:.1%} of {calibration.n_unknown} unknown and "
              f"{calibration.true_accept_rate:.1%} of {calibration.n_known} known image(s) "
              f"({calibration.correct_accept_rate:.1%} with the right label); saved to "
              f"{args.gallery}")
    return 0


# --- folders --------------------------------------------------------------------------
def labelled_folder(root: Path) -> list[tuple[str, Path]]:
    """`(label, image path)` for every file of every subfolder of `root` (the label is
    the subfolder's name), sorted; hidden entries are skipped."""
    from gaussmem.errors import GalleryError

    if not root.is_dir():
        raise GalleryError(f"{root} is not a directory")
    labelled = [(folder.name, path)
                for folder in sorted(root.iterdir())
                if folder.is_dir() and not folder.name.startswith(".")
                for path in _files(folder)]
    if not labelled:
        raise GalleryError(f"{root} has no subfolders with images (one per label)")
    return labelled


def folder_images(root: Path) -> list[Path]:
    """Every non-hidden file under `root`, sorted."""
    from gaussmem.errors import GalleryError

    if not root.is_dir():
        raise GalleryError(f"{root} is not a directory")
    files = _files(root)
    if not files:
        raise GalleryError(f"{root} holds no images")
    return files


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))
