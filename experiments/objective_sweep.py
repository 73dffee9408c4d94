"""The MA-VAE objective's trade-off between recognition and generation, on validation.

    python experiments/objective_sweep.py --judge runs/judge-protonet/checkpoints/best.ckpt \
        [--steps 500] [--only NAME ...] [--seed 0] [--preset cpu-quick] \
        [--base-set SECTION.FIELD=VALUE ...] [--json results/objective/sweep.json]

Each variant is `gaussmem train --preset PRESET` with its `--set` overrides, for a fixed
number of steps (no wall clock, so that a busy machine changes the time, not the
result), validated once at the end. `--base-set` overrides apply to every variant (for
a cheaper shape of the preset, say fewer classes per step) and name the run. Its last
checkpoint is then scored on the validation classes only:

* recognition: `gaussmem evaluate` 20-way 1-shot and 5-way 1-shot, 1,000 episodes;
* generation: `gaussmem generative-report` (reconstruction NLL against the mean image,
  pixel change from swapping z_c vs z_s, and one-shot generations judged by `--judge`,
  a few-shot classifier trained apart from the model).

Every variant spells out the weights it sets, so it means the same thing whatever the
preset's defaults become. Finished runs and reports are reused, not redone. Results
merge into one JSON (one record per variant, steps and seed) with the hardware and the
command; `experiments/objective_table.py` turns it into a table and a plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gaussmem.checkpoint import file_sha256
from gaussmem.plumbing.script_record import merge_by_identity, provenance, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]

#: The network the first objectives were chosen on: the Conv4 trunk's four
#: blocks and a decoder with BatchNorm (pinned, so a variant keeps its meaning when the
#: preset's architecture changes).
FIRST_ARCHITECTURE = ["model.n_blocks=4", "model.decoder_norm=batch"]
#: Three trunk blocks (a 3x3 map into the heads keeps where the strokes are) and a
#: GroupNorm decoder (it decodes posterior means at evaluation as it decoded samples in
#: training).
TRUNK3_GROUPNORM = ["model.n_blocks=3", "model.decoder_norm=group"]

#: Objective name -> loss `--set` overrides. c1 = loss.triplet, c2 = loss.latent (z_c's
#: KL), loss.latent_style = z_s's KL, c3 = loss.generative; all in nats per image.
OBJECTIVES: dict[str, list[str]] = {
    "c1-300": ["loss.triplet=300", "loss.latent=1", "loss.latent_style=none"],
    "c1-1000": ["loss.triplet=1000", "loss.latent=1", "loss.latent_style=none"],
    "c1-100-style4": ["loss.triplet=100", "loss.latent=1", "loss.latent_style=4"],
    "c1-300-style4": ["loss.triplet=300", "loss.latent=1", "loss.latent_style=4"],
    "c1-1000-style4": ["loss.triplet=1000", "loss.latent=1", "loss.latent_style=4"],
    "c1-3000-style4": ["loss.triplet=3000", "loss.latent=1", "loss.latent_style=4"],
    # A cheap z_c (its KL at 0.1) and a costly z_s: the class is cheaper to carry in z_c.
    "c1-1000-content0.1-style4": ["loss.triplet=1000", "loss.latent=0.1",
                                  "loss.latent_style=4"],
    # The objective before per-image units, restated in them: the mean over 784 pixels
    # and 68 latent dimensions weighed the triplet 784x and the KL 784 / 68 = 11.5x
    # against one nat of reconstruction, and clipped the gradient at 5 x 784.
    "old-balance": ["loss.triplet=784", "loss.latent=11.5", "loss.latent_style=none",
                    "optim.grad_clip=3920"],
    # exp(-SKL / T): the triplet is invariant to scaling the posteriors' means and
    # standard deviations together, so T sets how many standard deviations apart it
    # wants the classes, and with it how much a sample of z_c says about its class.
    "c1-300-style4-T16": ["loss.triplet=300", "loss.latent=1", "loss.latent_style=4",
                          "similarity.temperature=16"],
    "c1-300-style4-T64": ["loss.triplet=300", "loss.latent=1", "loss.latent_style=4",
                          "similarity.temperature=64"],
    # The reference row: the same network trained as a plain VAE (ELBO only).
    "plain-vae": ["loss.triplet=0", "loss.latent=1", "loss.latent_style=none",
                  "loss.generative_cross=0"],
}

#: Variant name -> `--set` overrides: every objective on the first network, then the
#: chosen objective on three trunk blocks with the decoder's BatchNorm and with
#: GroupNorm, and the plain VAE on that network (the reference row).
VARIANTS: dict[str, list[str]] = {
    **{name: [*FIRST_ARCHITECTURE, *weights] for name, weights in OBJECTIVES.items()},
    "c1-300-style4-T16-trunk3": ["model.n_blocks=3", "model.decoder_norm=batch",
                                 *OBJECTIVES["c1-300-style4-T16"]],
    "c1-300-style4-T16-trunk3-groupnorm": [*TRUNK3_GROUPNORM,
                                           *OBJECTIVES["c1-300-style4-T16"]],
    "plain-vae-trunk3-groupnorm": [*TRUNK3_GROUPNORM, *OBJECTIVES["plain-vae"]],
    # How the drawing divides between z_c and z_s on that network: the cross term
    # (decode x from z_c of another drawing of its class) lighter or off, or z_s dearer.
    **{f"c1-300-style4-T16-trunk3-groupnorm-{suffix}": [
        *TRUNK3_GROUPNORM, *OBJECTIVES["c1-300-style4-T16"], *extra]
       for suffix, extra in {"cross0": ["loss.generative_cross=0"],
                             "cross0.25": ["loss.generative_cross=0.25"],
                             "style16": ["loss.latent_style=16"],
                             "T64": ["similarity.temperature=64"],
                             "T64-cross0.25": ["similarity.temperature=64",
                                               "loss.generative_cross=0.25"],
                             # The cross term's z_s from a drawing of another class: a
                             # decoder reading the class from z_s is wrong there.
                             "swapstyle": ["loss.cross_style=other_class"],
                             "swapstyle-style1": ["loss.cross_style=other_class",
                                                  "loss.latent_style=1"],
                             # With z_s kept from the class, room for the drawing: a
                             # wider z_s, or a wider decoder.
                             "swapstyle-style1-zs16": ["loss.cross_style=other_class",
                                                       "loss.latent_style=1",
                                                       "model.style_dim=16"],
                             "swapstyle-style1-decoder64": ["loss.cross_style=other_class",
                                                            "loss.latent_style=1",
                                                            "model.decoder_hidden_channels=64"],
                             # z_s keeps its own place in the cross term, but a drawing
                             # decoded from z_c and a prior z_s must encode back to z_c.
                             "consistency1": ["loss.content_consistency=1"],
                             "consistency3": ["loss.content_consistency=3"],
                             "consistency10": ["loss.content_consistency=10"],
                             # The other-class cross term at a quarter of the weight.
                             "swapstyle-cross0.25": ["loss.cross_style=other_class",
                                                     "loss.generative_cross=0.25"],
                             # Between exp(-SKL/16) and exp(-SKL/64): classes further
                             # apart in units of their spread, at less cost in accuracy?
                             "T32": ["similarity.temperature=32"],
                             # exp(-SKL/64) with the triplet weighed up to hold accuracy.
                             "T64-c1-1000": ["similarity.temperature=64",
                                             "loss.triplet=1000"],
                             # A cheaper z_c: narrower posteriors that say more of the
                             # drawing.
                             "content0.3": ["loss.latent=0.3"],
                             # z_s as cheap as z_c: the reconstruction side of the trade.
                             "style1": ["loss.latent_style=1"],
                             # Room in z_s for what one drawing adds to its class
                             # (where the strokes run), and the re-encoding term that
                             # keeps the class out of it.
                             "zs32-style1": ["model.style_dim=32", "loss.latent_style=1"],
                             "zs32-style1-consistency1": ["model.style_dim=32",
                                                          "loss.latent_style=1",
                                                          "loss.content_consistency=1"],
                             "zs32-style1-consistency3": ["model.style_dim=32",
                                                          "loss.latent_style=1",
                                                          "loss.content_consistency=3"],
                             # The same, z_s's head not training the trunk: the
                             # reconstruction's demands stay out of the compared features.
                             "detached": ["model.style_detached=true"],
                             "zs32-style1-detached": ["model.style_dim=32",
                                                      "loss.latent_style=1",
                                                      "model.style_detached=true"],
                             "zs32-style1-consistency1-detached": [
                                 "model.style_dim=32", "loss.latent_style=1",
                                 "loss.content_consistency=1", "model.style_detached=true"],
                             # ... with the cross term's z_s from another class:
                             # a wide z_s is worth more to the reconstruction than a
                             # 4-d one, so it may keep what varies within a class.
                             **{f"zs32-style1-detached-swapstyle-cross{w}": [
                                 "model.style_dim=32", "loss.latent_style=1",
                                 "model.style_detached=true", "loss.cross_style=other_class",
                                 f"loss.generative_cross={w}"] for w in (0.25, 1)},
                             # ... with the term training the decoder alone: the
                             # encoder judges the drawing as it stands, z_c is a given.
                             **{f"zs32-style1-detached-consistency{w}-decoder": [
                                 "model.style_dim=32", "loss.latent_style=1",
                                 "model.style_detached=true", f"loss.content_consistency={w}",
                                 "loss.consistency_trains=decoder"] for w in (1, 3, 10)},
                             # The decoder reads z_c's mean: the class without the
                             # sample's noise (posteriors as wide as the prior), so z_s
                             # need only say what one drawing adds to it.
                             "decodemean": ["model.content_to_decoder=mean"],
                             # ... with the triplet weighed up to hold accuracy.
                             "decodemean-c1-1000": ["model.content_to_decoder=mean",
                                                    "loss.triplet=1000"],
                             # ... with z_s dearer: its posteriors nearer the prior,
                             # which generation samples z_s from.
                             **{f"decodemean-c1-1000-style{w}": [
                                 "model.content_to_decoder=mean", "loss.triplet=1000",
                                 f"loss.latent_style={w}"] for w in (8, 16)},
                             # ... as a constant: the decoder learns to draw what
                             # z_c says; the reconstruction leaves z_c to the triplet.
                             "decodemean-detached": [
                                 "model.content_to_decoder=detached_mean"],
                             "zs32-style1-detached-decodemean": [
                                 "model.style_dim=32", "loss.latent_style=1",
                                 "model.style_detached=true",
                                 "model.content_to_decoder=mean"],
                             }.items()},
}

#: Recognition cells scored on validation: (n_way, n_shot).
CELLS = ((20, 1), (5, 1))


def run(arguments: list[str]) -> None:
    """Run `python -m gaussmem ARGUMENTS`, failing loudly."""
    command = [sys.executable, "-m", "gaussmem", *arguments]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def train_variant(run_dir: Path, preset: str, overrides: list[str], steps: int, seed: int
                  ) -> Path:
    """Train (or reuse) one variant; returns its last checkpoint."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "summary.json").is_file() and checkpoint.is_file():
        return checkpoint
    sets = ["budget.max_minutes=none", f"validation.every_steps={steps}", *overrides]
    arguments = ["train", "--preset", preset, "--run-dir", str(run_dir), "--overwrite",
                 "--max-steps", str(steps), "--seed", str(seed), "--no-progress"]
    for override in sets:
        arguments += ["--set", override]
    run(arguments)
    return checkpoint


def score_variant(run_dir: Path, checkpoint: Path, judge: Path) -> dict[str, Any]:
    """Validation accuracy per cell and the generative report of one checkpoint."""
    scores: dict[str, Any] = {"accuracy": {}}
    for n_way, n_shot in CELLS:
        path = run_dir / f"val-{n_way}w{n_shot}s.json"
        if not path.is_file():
            run(["evaluate", "--checkpoint", str(checkpoint), "--split", "val",
                 "--n-way", str(n_way), "--n-shot", str(n_shot), "--episodes", "1000",
                 "--json", str(path), "--no-progress"])
        result = json.loads(path.read_text())
        scores["accuracy"][f"{n_way}w{n_shot}s"] = result["result"]["accuracy"]
    path = run_dir / "val-generative.json"
    # A report by another judge, or whose judge saw images as they are (from before the
    # judge's view), is redone.
    generation = (json.loads(path.read_text()).get("generation") or {}) if path.is_file() else {}
    if "judge_view" not in generation or generation["judge"]["sha256"] != file_sha256(judge):
        run(["generative-report", "--checkpoint", str(checkpoint), "--split", "val",
             "--judge", str(judge), "--json", str(path)])
    report = json.loads(path.read_text())
    scores.update({key: report[key] for key in
                   ("reconstruction", "decoder_sensitivity", "generation")})
    return scores


def identity(record: dict[str, Any]) -> tuple[object, ...]:
    """What makes a record: a rerun of the same variant, base, steps and seed replaces it
    (records from before base overrides existed had none)."""
    return (record["variant"], record["preset"], tuple(record.get("base_overrides", [])),
            record["steps"], record["seed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", required=True, type=Path,
                        help="few-shot classifier checkpoint that judges the generations")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="cpu-quick")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--base-set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                        help="overrides applied under every variant's")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "objective")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "results" / "objective" / "sweep.json")
    args = parser.parse_args(argv)
    records = (read_json(args.json) or {"records": []})["records"]
    for name in args.only or list(VARIANTS):
        shape = "".join(f"-{override}" for override in args.base_set)
        run_dir = args.runs / (f"{args.preset}{shape}-{args.steps}steps-{name}"
                               f"-seed{args.seed}")
        checkpoint = train_variant(run_dir, args.preset, [*args.base_set, *VARIANTS[name]],
                                   args.steps, args.seed)
        record = {"variant": name, "preset": args.preset, "base_overrides": args.base_set,
                  "overrides": VARIANTS[name], "steps": args.steps, "seed": args.seed,
                  "split": "val", **score_variant(run_dir, checkpoint, args.judge)}
        records = merge_by_identity(records, record, identity)
        write_json(args.json, {"experiment": "objective_sweep", **provenance(),
                               "judge": str(args.judge), "records": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
