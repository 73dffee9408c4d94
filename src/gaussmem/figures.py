"""Figures of the memory-augmented VAE: what gaussmem.generative computes, drawn as PNGs.

* `image_grid` / `save_png`: rows of `(n, 1, H, W)` images -> one Pillow image, scaled up,
  with thin separators; no matplotlib.
* `reconstruction_figure`, `generation_figure`, `style_transfer_figure`: the paper's
  figure 2, one-shot generation from memory and style transfer as grids.
* `write_run_figures`: all three figures plus a JSON summary into `run_dir/figures/`, for
  the end of `gaussmem train` (and `write_run_figures_from_checkpoint` for a saved run).

Kept apart from the model operations so that computing with a model never pulls in
image files, and the training loop never writes figures itself.
Images come in as the data pipeline yields them (float `(n, 1, H, W)` in [0, 1], strokes
bright); figures draw strokes dark on white, as Omniglot is usually shown.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gaussmem.data.datasets import FewShotDataset
from gaussmem.generative import (
    dataset_mean_image,
    decoder_sensitivity,
    episode_images,
    generate_from_memory,
    mean_image_nll,
    nll_ratio,
    reconstruct,
    squared_error,
    style_transfer,
    vae_from_checkpoint,
)
from gaussmem.models.vae import GaussianVAE
from gaussmem.plumbing.atomic import write_bytes_atomic, write_text_atomic
from gaussmem.style_prior import ConditionalStylePrior, prior_name

#: Figure file names inside `run_dir/figures/` (see `write_run_figures`).
RECONSTRUCTION_PNG = "reconstruction.png"
GENERATION_PNG = "generation.png"
STYLE_TRANSFER_PNG = "style_transfer.png"
FIGURES_JSON = "figures.json"


# --- image grids ----------------------------------------------------------------------
def image_grid(rows: Sequence[torch.Tensor], *, scale: int = 2, separator: int = 1,
               group_gap: int = 4, group_size: int = 1, invert: bool = True) -> Image.Image:
    """Lay rows of images out as one greyscale Pillow image.

    Args:
        rows: each `(n_cols_i, 1, H, W)` (or `(n_cols_i, H, W)`) floats in [0, 1]; all
            images the same size. Rows may be shorter than the widest (left-aligned); pad
            with `blank_like` for an empty cell.
        scale: each pixel becomes `scale x scale` (nearest neighbour), so 28 px digits
            stay readable.
        separator: pixels of grey between neighbouring images.
        group_gap: pixels of grey between groups of `group_size` rows (e.g. 2 for
            original/reconstruction pairs), so the pairs read as units.
        invert: draw strokes dark on white (values 1 -> black).
    Returns: an `L`-mode image of width `max_cols * (W*scale + separator) + separator`.
    """
    rows = [row if row.dim() == 4 else row.unsqueeze(1) for row in rows]
    if not rows:
        raise ValueError("image_grid needs at least one row")
    height, width = rows[0].shape[-2:]
    cell_h, cell_w = height * scale, width * scale
    n_cols = max(len(row) for row in rows)
    gaps = [group_gap if group_size > 1 and (index + 1) % group_size == 0 else separator
            for index in range(len(rows) - 1)]
    total_h = separator * 2 + len(rows) * cell_h + sum(gaps)
    total_w = separator + n_cols * (cell_w + separator)
    # Mid grey separators, distinguishable from both background and strokes.
    canvas = np.full((total_h, total_w), 160, dtype=np.uint8)
    top = separator
    for index, row in enumerate(rows):
        if row.shape[-2:] != (height, width):
            raise ValueError(f"row {index} has images {tuple(row.shape[-2:])}, expected "
                             f"{(height, width)}")
        pixels = row[:, 0].detach().float().clamp(0, 1).cpu().numpy()
        if invert:
            pixels = 1.0 - pixels
        pixels = np.round(pixels * 255).astype(np.uint8)
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
        for column, image in enumerate(pixels):
            left = separator + column * (cell_w + separator)
            canvas[top:top + cell_h, left:left + cell_w] = image
        top += cell_h + (gaps[index] if index < len(gaps) else separator)
    return Image.fromarray(canvas, mode="L")


def grid_size(n_rows: int, n_cols: int, image_size: tuple[int, int], *, scale: int = 2,
              separator: int = 1, group_gap: int = 4, group_size: int = 1
              ) -> tuple[int, int]:
    """`(width, height)` in pixels of the `image_grid` with those settings."""
    height, width = image_size
    n_gaps = n_rows - 1
    n_group_gaps = n_gaps // group_size if group_size > 1 else 0
    gap_total = n_group_gaps * group_gap + (n_gaps - n_group_gaps) * separator
    total_h = 2 * separator + n_rows * height * scale + gap_total
    return separator + n_cols * (width * scale + separator), total_h


def blank_like(images: torch.Tensor, count: int = 1) -> torch.Tensor:
    """`count` empty (background) images shaped like `images[0]`."""
    return images.new_zeros((count, *images.shape[1:]))


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as a PNG atomically; returns the path."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def paired_rows(originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int
                ) -> list[torch.Tensor]:
    """Wrap `(n, 1, H, W)` originals and reconstructions into row pairs of `per_row`
    images: originals, their reconstructions, next originals, ... (figure 2, wrapped)."""
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    rows: list[torch.Tensor] = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start:start + per_row], reconstructions[start:start + per_row]]
    return rows


def style_transfer_rows(content_images: torch.Tensor, style_images: torch.Tensor,
                        transfers: torch.Tensor) -> list[torch.Tensor]:
    """Grid rows: first row a blank corner then the content images; each next row the
    style image then its transfers (`transfers` from `style_transfer`)."""
    rows = [torch.cat([blank_like(content_images), content_images])]
    for index, style_image in enumerate(style_images):
        rows.append(torch.cat([style_image[None], transfers[index]]))
    return rows


# --- figures of a model ---------------------------------------------------------------
def reconstruction_figure(vae: GaussianVAE, images: torch.Tensor, *, per_row: int = 20,
                          scale: int = 2, mean_image: torch.Tensor | None = None,
                          invert: bool = True) -> tuple[Image.Image, dict[str, Any]]:
    """Figure 2: originals and reconstructions in row pairs; and the likelihood summary
    `{"likelihood", "nll_per_image": [nats per image], "mean_nll", "mean_image_nll" (if
    `mean_image`)}`."""
    result = reconstruct(vae, images)
    figure = image_grid(paired_rows(images, result.images, per_row), scale=scale,
                        group_size=2, invert=invert)
    summary: dict[str, Any] = {"likelihood": vae.config.likelihood,
                               "nll_per_image": result.nll.tolist(),
                               "mean_nll": float(result.nll.mean()),
                               "mean_squared_error": float(
                                   squared_error(result.images, images).mean())}
    if mean_image is not None:
        summary["mean_image_nll"] = float(mean_image_nll(vae, images, mean_image).mean())
        summary["mean_image_squared_error"] = float(
            squared_error(mean_image, images).mean())
    return figure, summary


def generation_figure(vae: GaussianVAE, examples: torch.Tensor, *, n_samples: int = 10,
                      seed: int = 0, scale: int = 2, invert: bool = True,
                      temperature: float = 1.0,
                      style_prior: ConditionalStylePrior | None = None) -> Image.Image:
    """One row per example's class: the stored example, then `n_samples` drawings
    generated from its memory entry (one example per class, labels 0..n-1) at
    `temperature`, z_s from `style_prior` if given (`generate_from_memory`)."""
    labels = torch.arange(len(examples))
    generation = generate_from_memory(vae, examples, labels, n_samples, seed=seed,
                                      temperature=temperature, style_prior=style_prior)
    rows = [torch.cat([examples[index:index + 1], generation.samples[index]])
            for index in range(len(examples))]
    return image_grid(rows, scale=scale, invert=invert)


def style_transfer_figure(vae: GaussianVAE, content_images: torch.Tensor,
                          style_images: torch.Tensor, *, scale: int = 2,
                          invert: bool = True) -> Image.Image:
    """Top row the content images, left column the style images, cells the transfers."""
    transfers = style_transfer(vae, content_images, style_images)
    return image_grid(style_transfer_rows(content_images, style_images, transfers),
                      scale=scale, invert=invert)


def write_run_figures(run_dir: str | Path, vae: GaussianVAE, dataset: FewShotDataset, *,
                      seed: int = 0, n_way: int = 100, n_generate: int = 8,
                      n_samples: int = 10, n_style: int = 6,
                      style_prior: ConditionalStylePrior | None = None,
                      step: int | None = None) -> dict[str, Path]:
    """Write the reconstruction, generation and style-transfer figures of a trained
    model into `run_dir/figures/`, with `figures.json` (reconstruction NLL against the
    mean image's, the decoder's sensitivity to z_c and z_s, dataset, seed, and the
    training `step` of the weights drawn, where the caller knows it). The
    generations draw z_s from `style_prior` when given (fitted on the training split),
    from N(0, I) otherwise.

    Meant for the end of training with the validation set (never the test split), as
    `gaussmem train` calls it. Takes seconds on a CPU.
    Returns `{"reconstruction": path, "generation": path, "style_transfer": path,
    "summary": path}` ("style_transfer" only when the set has two classes or more).
    """
    folder = Path(run_dir) / "figures"
    n_way = min(n_way, dataset.n_classes)
    images, _ = episode_images(dataset, n_way, seed=seed)
    invert = dataset.strokes_bright
    figure, summary = reconstruction_figure(vae, images, per_row=min(20, n_way),
                                            mean_image=dataset_mean_image(dataset),
                                            invert=invert)
    paths = {"reconstruction": save_png(figure, folder / RECONSTRUCTION_PNG)}
    n_generate = min(n_generate, dataset.n_classes)
    examples, _ = episode_images(dataset, n_generate, seed=seed + 1)
    paths["generation"] = save_png(
        generation_figure(vae, examples, n_samples=n_samples, seed=seed, invert=invert,
                          style_prior=style_prior),
        folder / GENERATION_PNG)
    n_style = min(n_style, dataset.n_classes // 2)
    if n_style >= 1:  # content and style from distinct classes: needs two classes
        pair, _ = episode_images(dataset, 2 * n_style, seed=seed + 2)
        paths["style_transfer"] = save_png(
            style_transfer_figure(vae, pair[:n_style], pair[n_style:], invert=invert),
            folder / STYLE_TRANSFER_PNG)
    report = {"dataset": dataset.name, "seed": seed, "n_way": n_way, "step": step,
              "likelihood": summary["likelihood"], "mean_nll": summary["mean_nll"],
              "mean_image_nll": summary["mean_image_nll"],
              "reconstruction_ratio": nll_ratio(summary["mean_nll"],
                                                summary["mean_image_nll"]),
              "mean_squared_error": summary["mean_squared_error"],
              "mean_image_squared_error": summary["mean_image_squared_error"],
              "squared_error_ratio": (summary["mean_squared_error"]
                                      / summary["mean_image_squared_error"]),
              "decoder_sensitivity": decoder_sensitivity(vae, images),
              "generation_style_prior": prior_name(style_prior),
              "figures": {name: path.name for name, path in paths.items()}}
    paths["summary"] = folder / FIGURES_JSON
    write_text_atomic(paths["summary"], json.dumps(report, indent=2) + "\n")
    return paths


def write_run_figures_from_checkpoint(checkpoint_path: str | Path, dataset: FewShotDataset,
                                      run_dir: str | Path | None = None, *, seed: int = 0,
                                      style_prior: ConditionalStylePrior | None = None
                                      ) -> dict[str, Path]:
    """`write_run_figures` for a saved checkpoint; `run_dir` defaults to the folder
    above the checkpoint's `checkpoints/` folder."""
    checkpoint_path = Path(checkpoint_path)
    vae, checkpoint = vae_from_checkpoint(checkpoint_path)
    if run_dir is None:
        parent = checkpoint_path.resolve().parent
        run_dir = parent.parent if parent.name == "checkpoints" else parent
    return write_run_figures(run_dir, vae, dataset, seed=seed, style_prior=style_prior,
                             step=checkpoint.get("step"))


def rows_needed(n_images: int, per_row: int) -> int:
    """Image rows of a reconstruction grid: two per `per_row` originals."""
    return 2 * math.ceil(n_images / per_row)
