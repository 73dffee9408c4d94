"""Training throughput under `gaussmem.plumbing.allocator.keep_freed_memory()` settings.

    python benchmarks/allocator_speed.py [--presets cpu-quick protonet-cpu matching-cpu]
        [--settings off on] [--repeats 3] [--steps 150] [--warmup 20]
        [--json results/speed/allocator_speed.json]

Settings: `off` (glibc's defaults), `on` (`keep_freed_memory()`, what `gaussmem train`
applies: the mmap and trim thresholds raised) and `heap` (`keep_freed_memory(heap_only=
True)`, `gaussmem train --heap-allocator`: also no mmap at all).
glibc's allocator settings can only be raised, not restored, inside a process, so each
measurement is a fresh child process (`--child SETTING PRESET`), the settings in turn to
spread machine noise over all. Each child times `--steps` training steps after
`--warmup` steps on random uint8 data at the preset's image size (throughput does not
depend on the pixels), and reports its images/s and its peak resident memory.
Reports the median images/s per setting and the ratio of the last setting to the first.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gaussmem.plumbing.hardware import describe_hardware
from gaussmem.plumbing.script_record import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]


#: What each setting calls before training (None: glibc's defaults).
SETTINGS = {"off": None, "on": {"heap_only": False}, "heap": {"heap_only": True}}


def child(setting: str, preset_name: str, steps: int, warmup: int) -> tuple[float, float]:
    """Images/s of `steps` training steps of `preset_name` in this process, and the
    process's peak resident memory in GiB."""
    import resource

    import numpy as np

    from gaussmem.data.class_images import ClassImageSet
    from gaussmem.plumbing.allocator import keep_freed_memory
    from gaussmem.presets import preset
    from gaussmem.train import build_trainer, train_step

    options = SETTINGS[setting]
    if options is not None and not keep_freed_memory(**options):
        raise SystemExit("keep_freed_memory() is not available here (not glibc)")
    config = preset(preset_name)
    # As many random classes as one step draws (512 for today's cpu-quick), at least 200.
    n_classes = max(200, config.episodes.n_classes)
    size = config.model.image_size
    rng = np.random.default_rng(0)
    images = (rng.random((n_classes, 20, size, size)) < 0.15).astype(np.uint8) * 255
    dataset = ClassImageSet(images, [str(i) for i in range(n_classes)], "random")
    trainer = build_trainer(config, Path("/tmp/gaussmem-allocator"), dataset, None)
    for _ in range(warmup):
        train_step(trainer)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(trainer)
    rate = steps * trainer.method.images_per_step / (time.perf_counter() - start)
    return rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+",
                        default=["cpu-quick", "protonet-cpu", "matching-cpu"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["off", "on"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", default=str(ROOT / "results" / "speed" / "allocator_speed.json"))
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rate, peak_gib = child(args.child[0], args.child[1], args.steps, args.warmup)
        print(rate, peak_gib)
        return 0
    hardware = describe_hardware()
    first, last = args.settings[0], args.settings[-1]
    rows = []
    for name in args.presets:
        rates: dict[str, list[float]] = {setting: [] for setting in args.settings}
        peaks: dict[str, list[float]] = {setting: [] for setting in args.settings}
        for _ in range(args.repeats):
            for setting in args.settings:
                output = subprocess.run(
                    [sys.executable, __file__, "--child", setting, name, "--steps",
                     str(args.steps), "--warmup", str(args.warmup)],
                    check=True, capture_output=True, text=True).stdout
                rate, peak_gib = output.split()[-2:]
                rates[setting].append(float(rate))
                peaks[setting].append(float(peak_gib))
        medians = {setting: statistics.median(values) for setting, values in rates.items()}
        rows.append({"preset": name, "images_per_second": rates, "median": medians,
                     "peak_resident_gib": peaks,
                     f"ratio_{last}_to_{first}": medians[last] / medians[first]})
        print(f"{name}: " + ", ".join(f"{setting} {rate:.0f} img/s"
                                      for setting, rate in medians.items())
              + f", x{medians[last] / medians[first]:.2f}")
    report = {**provenance(hardware), "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "settings": {s: SETTINGS[s] for s in args.settings},
              "seed": 0, "results": rows}
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
