"""Training throughput with and without `gaussmem.plumbing.allocator.keep_freed_memory()`.

    python benchmarks/allocator_speed.py [--presets cpu-quick protonet-cpu matching-cpu]
        [--repeats 3] [--steps 150] [--json results/speed/allocator_speed.json]

glibc's allocator settings can only be raised, not restored, inside a process, so each
measurement is a fresh child process (`--child on|off PRESET`), alternating off/on to
spread machine noise over both. Each child times `--steps` training steps after 20
warm-up steps on random uint8 28x28 data (throughput does not depend on the pixels).
Reports the median images/s per setting and the ratio on/off.
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


def child(setting: str, preset_name: str, steps: int) -> float:
    """Images/s of `steps` training steps of `preset_name` in this process."""
    import numpy as np

    from gaussmem.data.class_images import ClassImageSet
    from gaussmem.plumbing.allocator import keep_freed_memory
    from gaussmem.presets import preset
    from gaussmem.train import build_trainer, train_step

    if setting == "on" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() is not available here (not glibc)")
    config = preset(preset_name)
    # As many random classes as one step draws (512 for today's cpu-quick), at least 200.
    n_classes = max(200, config.episodes.n_classes)
    rng = np.random.default_rng(0)
    images = (rng.random((n_classes, 20, 28, 28)) < 0.15).astype(np.uint8) * 255
    dataset = ClassImageSet(images, [str(i) for i in range(n_classes)], "random")
    trainer = build_trainer(config, Path("/tmp/gaussmem-allocator"), dataset, None)
    for _ in range(20):
        train_step(trainer)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(trainer)
    return steps * trainer.method.images_per_step / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+",
                        default=["cpu-quick", "protonet-cpu", "matching-cpu"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json", default=str(ROOT / "results" / "speed" / "allocator_speed.json"))
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child[0], args.child[1], args.steps))
        return 0
    hardware = describe_hardware()
    rows = []
    for name in args.presets:
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeats):
            for setting in ("off", "on"):
                output = subprocess.run(
                    [sys.executable, __file__, "--child", setting, name, "--steps",
                     str(args.steps)], check=True, capture_output=True, text=True).stdout
                rates[setting].append(float(output.split()[-1]))
        medians = {setting: statistics.median(values) for setting, values in rates.items()}
        rows.append({"preset": name, "images_per_second": rates, "median": medians,
                     "ratio_on_to_off": medians["on"] / medians["off"]})
        print(f"{name}: off {medians['off']:.0f} img/s, on {medians['on']:.0f} img/s, "
              f"x{rows[-1]['ratio_on_to_off']:.2f}")
    report = {**provenance(hardware), "steps": args.steps, "repeats": args.repeats,
              "seed": 0, "results": rows}
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
