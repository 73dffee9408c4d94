"""Write the committed LFW-a `paper` person split (343 train / 80 test people).

The people with at least 5 photos (423), sorted by name, permuted with seed 0; the last
80 are the test people. Run once; the output is package data and a test checks that it
still equals what `split_people` computes from the data.

    python scripts/make_lfw_split.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gaussmem.data.lfw import PAPER_TEST_PEOPLE, people_counts, split_people
from gaussmem.plumbing.atomic import write_text_atomic

OUT = Path(__file__).resolve().parent.parent / "src" / "gaussmem" / "data" / "splits" / "lfw"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=None, help="default: $GAUSSMEM_DATA")
    args = parser.parse_args()
    people = [p for p, n in people_counts(args.data_dir).items() if n >= 5]
    train, test = split_people(people, PAPER_TEST_PEOPLE, seed=0)
    for subset, names in (("train", train), ("test", test)):
        write_text_atomic(OUT / f"{subset}.txt", "\n".join(names) + "\n")
        print(f"{subset}: {len(names)} people -> {OUT / f'{subset}.txt'}")


if __name__ == "__main__":
    main()
