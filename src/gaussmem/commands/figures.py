"""`gaussmem reconstruct | generate | style-transfer | latent-check | generative-report`:
the generative side.

Each command reads an MA-VAE checkpoint, draws its images from seeded episodes of a
held-out split (test by default; the training split is not offered), and writes a PNG
grid (Pillow) and/or a JSON report naming the checkpoint's SHA-256, hardware, command
and seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gaussmem.commands import DefaultsHelpFormatter, add_data_location_arguments
from gaussmem.commands.arguments import non_negative_float, output_file, positive_int, seed

#: Held-out class subsets only: figures of training classes would flatter the model.
SPLITS = ("test", "val")


def _common(parser: argparse.ArgumentParser, *, figure: bool = True) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="MA-VAE checkpoint (e.g. runs/NAME/checkpoints/best.ckpt)")
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="class subset the images come from (never train)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the episode (and of the sampling noise)")
    if figure:
        parser.add_argument("--out", required=True, type=output_file,
                            help="PNG file to write (atomically)")
        parser.add_argument("--scale", type=positive_int, default=2,
                            help="each pixel becomes scale x scale pixels")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_data_location_arguments(parser)


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """How generation draws z_s: the style prior and its temperature."""
    parser.add_argument("--style-prior", choices=("conditional", "standard"),
                        default="conditional",
                        help="where the generated drawings' z_s comes from: 'conditional' "
                        "fits how z_s goes with z_c on the checkpoint's training split "
                        "(seconds) and draws from it given the entry's z_c; 'standard' is "
                        "the VAE's N(0, I) (docs/generative.md)")
    parser.add_argument("--temperature", type=non_negative_float, default=1.0,
                        help="scales the spread of z_s around the prior's mean: 1 samples "
                        "the prior; lower gives more typical, less varied drawings")


def _style_prior(args: argparse.Namespace, vae: Any, checkpoint: dict[str, Any]) -> Any:
    """The `ConditionalStylePrior` `--style-prior` asks for, fitted on the classes the
    checkpoint trained on (its config's `train_subset`), or None for N(0, I) (also when
    they are too few to fit it)."""
    from gaussmem.generative import load_split
    from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir
    from gaussmem.style_prior import conditional_style_prior_from

    if args.style_prior == "standard":
        return None
    train_set = load_split(checkpoint, checkpoint["config"]["data"].get("train_subset", "train"),
                           resolve_data_dir(args.data_dir), resolve_cache_dir(args.cache_dir))
    prior = conditional_style_prior_from(vae, train_set, seed=args.seed)
    if prior is None:
        print("style prior: the training split has too few drawings to fit the "
              "conditional prior; z_s ~ N(0, I)", file=sys.stderr)
    return prior


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct", help="originals and reconstructions of an N-way episode (figure 2)",
        description="Encode the support images of one seeded N-way 1-shot episode and "
        "decode the posterior means: originals on one row, reconstructions (pixel "
        "means) on the row below, wrapped into row pairs of --per-row images. Prints the "
        "mean negative log-likelihood per image and that of the split's mean image.",
        formatter_class=DefaultsHelpFormatter)
    _common(parser)
    parser.add_argument("--n-way", type=positive_int, default=100, help="classes (images) shown")
    parser.add_argument("--per-row", type=positive_int, default=20, help="images per row")
    parser.add_argument("--json", dest="json_path", type=output_file, default=None,
                        help="write per-image NLL and metadata here (atomically)")
    parser.set_defaults(handler=run_reconstruct)

    parser = subparsers.add_parser(
        "generate", help="one-shot generation: new drawings from a class's memory entry",
        description="Write one example of each of --n-classes new classes into a fresh "
        "memory, then decode --n-samples drawings per class with z_c drawn from the "
        "stored Gaussian and z_s from the style prior given that z_c (--style-prior). One "
        "row per class, the stored example first. Seeded: the same seed gives the same "
        "image.",
        formatter_class=DefaultsHelpFormatter)
    _common(parser)
    parser.add_argument("--n-classes", type=positive_int, default=8, help="classes (rows)")
    parser.add_argument("--n-samples", type=positive_int, default=10, help="drawings per class")
    _sampling_arguments(parser)
    parser.add_argument("--json", dest="json_path", type=output_file, default=None,
                        help="write the classes and metadata here (atomically)")
    parser.set_defaults(handler=run_generate)

    parser = subparsers.add_parser(
        "style-transfer", help="content (z_c) from one image, style (z_s) from another",
        description="Top row: content images; left column: style images; each cell "
        "decodes the posterior mean of z_c of its column's image with that of z_s of its "
        "row's image. Images come from distinct classes of one seeded episode.",
        formatter_class=DefaultsHelpFormatter)
    _common(parser)
    parser.add_argument("--n-content", type=positive_int, default=8,
                        help="content images (columns)")
    parser.add_argument("--n-style", type=positive_int, default=6, help="style images (rows)")
    parser.set_defaults(handler=run_style_transfer)

    parser = subparsers.add_parser(
        "latent-check", help="does z_c carry the class and z_s not? nearest-support accuracy",
        description="On seeded N-way K-shot episodes, label each query by its nearest "
        "support image under the symmetric KL between posteriors of z_c only, then of z_s "
        "only. A model that separates content from style scores z_c far above z_s, and "
        "z_s near chance (100/N %).",
        formatter_class=DefaultsHelpFormatter)
    _common(parser, figure=False)
    parser.add_argument("--n-way", type=positive_int, nargs="+", default=[5, 20],
                        help="episode sizes to evaluate")
    parser.add_argument("--n-shot", type=positive_int, default=1, help="support images per class")
    parser.add_argument("--n-query", type=positive_int, default=5, help="query images per class")
    parser.add_argument("--episodes", type=positive_int, default=300, help="episodes per size")
    parser.add_argument("--json", dest="json_path", type=output_file, default=None,
                        help="write the report here (atomically), e.g. "
                        "results/diagnostics/latent_check/latent_check.json; default: print it")
    parser.add_argument("--note", default=None, help="free text stored in the report")
    parser.set_defaults(handler=run_latent_check)
    register_report(subparsers)


def register_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generative-report", help="is the model generative? reconstruction, content, "
        "one-shot generation, on held-out episodes",
        description="Three numbers on seeded episodes of a held-out split: the "
        "reconstruction NLL per image over --recon-episodes 100-way episodes against the "
        "split's mean image; the pixel change from swapping z_c vs swapping z_s; and, with "
        "--judge, the percent of drawings generated from each memory entry that an "
        "independently trained few-shot classifier assigns to their source class among "
        "--n-way classes (with the judge's accuracy on real drawings and chance).",
        formatter_class=DefaultsHelpFormatter)
    _common(parser, figure=False)
    parser.add_argument("--judge", default=None,
                        help="checkpoint of a few-shot classifier trained apart from the "
                        "model (e.g. a protonet run); without it no generation score")
    parser.add_argument("--recon-episodes", type=positive_int, default=10,
                        help="100-way episodes for the reconstruction and content numbers")
    parser.add_argument("--n-way", type=positive_int, default=20,
                        help="classes per generation episode")
    parser.add_argument("--episodes", type=positive_int, default=50, help="generation episodes")
    parser.add_argument("--samples", type=positive_int, default=5,
                        help="drawings generated per class and episode")
    _sampling_arguments(parser)
    parser.add_argument("--judge-view", choices=("auto", "strokes", "none"), default="auto",
                        help="how the judge sees every image: 'strokes' smooths and "
                        "thresholds to ink, so a blurred drawing is judged by what it "
                        "draws; 'auto' is 'strokes' for stroke (Bernoulli) models and "
                        "'none' for photographs")
    parser.add_argument("--json", dest="json_path", type=output_file, default=None,
                        help="write the report here (atomically)")
    parser.set_defaults(handler=run_generative_report)


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """`(vae, checkpoint, dataset)` for the command's arguments."""
    import torch

    from gaussmem.generative import load_split, vae_from_checkpoint
    from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    vae, checkpoint = vae_from_checkpoint(args.checkpoint)
    dataset = load_split(checkpoint, args.split, resolve_data_dir(args.data_dir),
                         resolve_cache_dir(args.cache_dir))
    return vae, checkpoint, dataset


def _metadata(args: argparse.Namespace, checkpoint: dict[str, Any], dataset: Any
              ) -> dict[str, Any]:
    from gaussmem.checkpoint import file_sha256
    from gaussmem.plumbing.script_record import provenance

    return {
        "checkpoint": {"path": str(Path(args.checkpoint).resolve()),
                       "sha256": file_sha256(args.checkpoint), "step": checkpoint["step"],
                       "method": checkpoint["config"]["method"],
                       "train_minutes": checkpoint["elapsed_seconds"] / 60.0},
        "dataset": dataset.name, "split": args.split, "seed": args.seed,
        **provenance(),
    }


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    from gaussmem.plumbing.script_record import write_json

    if path:
        write_json(path, report)


def run_reconstruct(args: argparse.Namespace) -> int:
    from gaussmem.figures import reconstruction_figure, save_png
    from gaussmem.generative import dataset_mean_image, episode_images

    vae, checkpoint, dataset = _load(args)
    images, class_indices = episode_images(dataset, args.n_way, seed=args.seed)
    figure, summary = reconstruction_figure(vae, images, per_row=args.per_row,
                                            scale=args.scale,
                                            mean_image=dataset_mean_image(dataset),
                                            invert=dataset.strokes_bright)
    save_png(figure, args.out)
    report = {**_metadata(args, checkpoint, dataset), "n_way": args.n_way,
              "figure": str(Path(args.out).resolve()),
              "classes": [dataset.class_names[i] for i in class_indices.tolist()],
              **summary}
    _write_json(args.json_path, report)
    print(f"reconstruct: {args.n_way} images of {dataset.name} -> {args.out}; "
          f"{summary['likelihood']} NLL {summary['mean_nll']:.2f} nats/image (the split's "
          f"mean image: {summary['mean_image_nll']:.2f}); squared error "
          f"{summary['mean_squared_error']:.1f} per image (mean image: "
          f"{summary['mean_image_squared_error']:.1f})")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from gaussmem.figures import generation_figure, save_png
    from gaussmem.generative import episode_images
    from gaussmem.style_prior import prior_name

    vae, checkpoint, dataset = _load(args)
    examples, class_indices = episode_images(dataset, args.n_classes, seed=args.seed)
    prior = _style_prior(args, vae, checkpoint)
    figure = generation_figure(vae, examples, n_samples=args.n_samples, seed=args.seed,
                               scale=args.scale, invert=dataset.strokes_bright,
                               temperature=args.temperature, style_prior=prior)
    save_png(figure, args.out)
    report = {**_metadata(args, checkpoint, dataset), "n_samples": args.n_samples,
              "temperature": args.temperature,
              "style_prior": prior_name(prior),
              "figure": str(Path(args.out).resolve()),
              "classes": [dataset.class_names[i] for i in class_indices.tolist()]}
    _write_json(args.json_path, report)
    print(f"generate: {args.n_classes} classes x {args.n_samples} drawings -> {args.out}")
    return 0


def run_style_transfer(args: argparse.Namespace) -> int:
    from gaussmem.figures import save_png, style_transfer_figure
    from gaussmem.generative import episode_images

    vae, _, dataset = _load(args)
    images, _ = episode_images(dataset, args.n_content + args.n_style, seed=args.seed)
    figure = style_transfer_figure(vae, images[: args.n_content], images[args.n_content:],
                                   scale=args.scale, invert=dataset.strokes_bright)
    save_png(figure, args.out)
    print(f"style-transfer: {args.n_content} contents x {args.n_style} styles -> {args.out}")
    return 0


def run_latent_check(args: argparse.Namespace) -> int:
    from gaussmem.generative import decoder_sensitivity, episode_images, latent_nearest_accuracy

    vae, checkpoint, dataset = _load(args)
    # Which latent the decoder uses, on one 100-way (or smaller) episode of the split.
    images, _ = episode_images(dataset, min(100, dataset.n_classes), seed=args.seed)
    sensitivity = decoder_sensitivity(vae, images)
    print(f"decoder: swapping z_c changes pixels by {sensitivity['content_swap']:.4f}, "
          f"swapping z_s by {sensitivity['style_swap']:.4f} (mean |change|)")
    results = []
    for n_way in args.n_way:
        check = latent_nearest_accuracy(vae, dataset, n_way=n_way, n_shot=args.n_shot,
                                        n_query=args.n_query, episodes=args.episodes,
                                        seed=args.seed)
        results.append(check.to_dict())
        print(f"{n_way}-way {args.n_shot}-shot ({args.split}, {args.episodes} episodes, "
              f"seed {args.seed}): z_c {check.content.mean:.2f}% ± {check.content.ci95:.2f}"
              f", z_s {check.style.mean:.2f}% ± {check.style.ci95:.2f}, chance "
              f"{check.chance:.2f}%")
    report = {**_metadata(args, checkpoint, dataset),
              "measure": "nearest-support accuracy (%) by symmetric KL between posteriors "
              "of z_c only vs z_s only; mean and 95% CI over episodes",
              "results": results,
              "decoder_sensitivity": {
                  **sensitivity, "images": len(images),
                  "measure": "mean |change| of the pixel means per pixel when an "
                  "image's z_c (content_swap) or z_s (style_swap) posterior mean is "
                  "replaced by another image's"}}
    if args.note:
        report["note"] = args.note
    if args.json_path:
        _write_json(args.json_path, report)
    else:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


def run_generative_report(args: argparse.Namespace) -> int:
    from gaussmem.checkpoint import file_sha256, load_checkpoint
    from gaussmem.generative_report import (
        content_sensitivity,
        episode_supports,
        generation_accuracy,
        posterior_spread,
        reconstruction_summary,
    )
    from gaussmem.methods import classifier_from_checkpoint

    judge = None if args.judge is None else classifier_from_checkpoint(
        load_checkpoint(args.judge))
    vae, checkpoint, dataset = _load(args)
    supports = episode_supports(dataset, episodes=args.recon_episodes, seed=args.seed)
    recon = reconstruction_summary(vae, dataset, supports)
    content = content_sensitivity(vae, supports)
    spread = posterior_spread(vae, supports)
    report = {**_metadata(args, checkpoint, dataset), "reconstruction": recon.to_dict(),
              "decoder_sensitivity": content, "posterior_spread": spread}
    nll_versus_mean = ("" if recon.ratio is None else
                       f"{recon.ratio:.3f} x the mean image's {recon.mean_image_nll:.2f}; ")
    print(f"reconstruction ({recon.episodes} x {recon.n_way}-way, {args.split}): "
          f"{recon.mean_nll:.2f} nats/image, {nll_versus_mean}squared error "
          f"{recon.squared_error_ratio:.3f} x the mean image's")
    print(f"content: swapping z_c changes pixels by {content['content_swap']:.4f}, "
          f"swapping z_s by {content['style_swap']:.4f}")
    print("one sample's signal-to-noise (variance of the posterior means / posterior "
          f"variance): z_c {spread['content']['signal_to_noise']:.2f}, "
          f"z_s {spread['style']['signal_to_noise']:.2f}")
    if judge is not None:
        generation = generation_accuracy(vae, judge, dataset, n_way=args.n_way,
                                         episodes=args.episodes,
                                         samples_per_class=args.samples, seed=args.seed,
                                         view=args.judge_view,
                                         temperature=args.temperature,
                                         style_prior=_style_prior(args, vae, checkpoint))
        report["generation"] = {**generation.to_dict(),
                                "judge": {"path": str(Path(args.judge).resolve()),
                                          "sha256": file_sha256(args.judge)}}
        print(f"one-shot generation ({args.episodes} x {generation.n_way}-way, z_s from the "
              f"{generation.style_prior} style prior at temperature {generation.temperature:g}, "
              f"judged through the {generation.judge_view!r} view): "
              f"{generation.generated.mean:.1f}% ± {generation.generated.ci95:.1f} judged "
              f"their source class (real images {generation.real_images.mean:.1f}%, "
              f"reconstructions of the stored examples "
              f"{generation.reconstructions.mean:.1f}%, real images blurred 3x3 "
              f"{generation.blurred_real_images.mean:.1f}%, chance {generation.chance:.1f}%); "
              f"{generation.generated_against_reconstructions.mean:.1f}% with the "
              "reconstructions as the judge's support")
    _write_json(args.json_path, report)
    return 0
