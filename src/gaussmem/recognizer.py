"""A one-shot recognizer over a trained MA-VAE: enroll labelled images, recognize new
ones (or say "unknown"), keep the gallery on disk.

    recognizer = Recognizer.from_checkpoint("runs/x/checkpoints/best.ckpt")
    recognizer.enroll("alice", ["alice1.jpg", "alice2.jpg"])
    result = recognizer.recognize(["who.jpg"])[0]   # result.label: "alice" or None
    recognizer.save("my-gallery")                   # Recognizer.load("my-gallery")

Enrollment is the paper's memory rule, one image after the other in the order given
(`gaussmem.memory_in_order`): an example whose nearest entry has its label merges into
that Gaussian by moment matching; one the memory confuses with another label gets an
entry of its own. A batch gives the gallery enrolling its images one at a time would,
with one search of the gallery for the whole batch. A call either enrolls every image or
none: all images are decoded and encoded before the memory is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaussmem.checkpoint import file_sha256, load_checkpoint
from gaussmem.errors import CheckpointError, GalleryError
from gaussmem.gallery_file import GalleryManifest, read_gallery, write_gallery
from gaussmem.gallery_journal import (
    JOURNAL_NAME,
    EnrollRecord,
    JournalRecord,
    RemoveRecord,
)
from gaussmem.gallery_search import EntrySearch, ExactSearch, LabelCandidates, nearest_labels
from gaussmem.memory import NOT_FOUND, GaussianMemory
from gaussmem.memory_in_order import update_in_order_
from gaussmem.methods.mavae import MemoryAugmentedVAE
from gaussmem.plumbing.blas_threads import cores_to_blas
from gaussmem.preprocess import ImageInput, ImagePreprocessing, Polarity, load_images
from gaussmem.unknown import (
    UNKNOWN_SCORES,
    Calibration,
    calibrate_threshold,
    unknown_score,
)

#: The unknown score a new gallery uses: the best of the three on validation classes
#: (experiments/unknown_scores.py, results/open_set/unknown_scores.json).
DEFAULT_UNKNOWN_SCORE = "similarity"
#: Slots of a new gallery; it doubles whenever an enrollment needs more.
_INITIAL_CAPACITY = 64


@dataclass(frozen=True)
class Match:
    """One of a query's nearest labels."""

    label: str
    similarity: float


@dataclass(frozen=True)
class Recognition:
    """What the gallery says about one image.

    `label` is None when the image is unknown (its score is below the threshold, or the
    gallery is empty); `nearest` is the nearest label whatever the threshold.
    `similarity` is exp(-divergence), the symmetric KL to `nearest`'s nearest entry;
    `score` is the unknown score compared with `threshold`.
    """

    label: str | None
    nearest: str | None
    similarity: float
    divergence: float
    score: float
    score_name: str
    threshold: float | None
    top_k: tuple[Match, ...]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["top_k"] = [asdict(match) for match in self.top_k]
        for key in ("divergence", "score"):  # JSON has no infinity
            if not math.isfinite(values[key]):
                values[key] = None
        return values


@dataclass(frozen=True)
class EnrollReport:
    """What one enrollment did: images written, of which merged into existing entries."""

    n_images: int
    n_merged: int
    n_new_entries: int


class Recognizer:
    """A gallery of labelled Gaussians (a `GaussianMemory`) read by a trained MA-VAE.

    Build one with `from_checkpoint` or `load`. `polarity` ("auto", "as-is", "invert")
    says how stroke models treat dark-on-light drawings (`gaussmem.preprocess`).
    """

    def __init__(self, classifier: MemoryAugmentedVAE, preprocessing: ImagePreprocessing, *,
                 checkpoint_path: Path, checkpoint_sha256: str, method: str,
                 search: EntrySearch | None = None, polarity: Polarity = "auto") -> None:
        self.classifier = classifier
        self.preprocessing = preprocessing
        self.checkpoint_path = checkpoint_path
        self.checkpoint_sha256 = checkpoint_sha256
        self.method = method
        self.search = search or ExactSearch()
        self.polarity = polarity
        self.content_dim = classifier.vae.config.content_dim
        self.memory = GaussianMemory(_INITIAL_CAPACITY, self.content_dim, seed=0)
        self._label_ids: dict[str, int] = {}
        self._names_of: dict[int, str] | None = None
        self._next_label_id = 0
        self.unknown_score = DEFAULT_UNKNOWN_SCORE
        self.threshold: float | None = None
        self.calibration: Calibration | None = None

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, search: EntrySearch | None = None,
                        polarity: Polarity = "auto") -> Recognizer:
        """An empty gallery over the MA-VAE checkpoint at `path` (its preprocessing comes
        from the checkpoint's config). Other methods' checkpoints are refused."""
        path = Path(path).absolute()
        checkpoint = load_checkpoint(path)
        method = checkpoint["config"].get("method")
        if method != "mavae":
            raise CheckpointError(f"{path} is a {method!r} checkpoint; the recognizer needs "
                                  "an MA-VAE (mavae) checkpoint: its Gaussian embeddings "
                                  "are what the gallery stores")
        classifier = MemoryAugmentedVAE.from_checkpoint(checkpoint)
        # A recognizer only encodes: its trunk runs with the BatchNorms folded in.
        classifier.vae.backbone.fold_batch_norms_()
        return cls(classifier, ImagePreprocessing.from_config(checkpoint["config"]),
                   checkpoint_path=path, checkpoint_sha256=file_sha256(path), method=method,
                   search=search, polarity=polarity)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *,
             checkpoint: str | os.PathLike[str] | None = None,
             search: EntrySearch | None = None, polarity: Polarity = "auto") -> Recognizer:
        """The gallery saved in `directory`, over its checkpoint (the path it records,
        or `checkpoint` if the file moved). Raises `GalleryError` if the checkpoint is
        not the one the gallery was enrolled with (SHA-256 and content_dim)."""
        manifest, memory, journal = read_gallery(directory)
        checkpoint_path = Path(checkpoint) if checkpoint else Path(manifest.checkpoint_path)
        if not checkpoint_path.is_file():
            raise GalleryError(f"{directory}: its checkpoint {checkpoint_path} does not exist; "
                               "pass the moved file (--checkpoint)")
        digest = file_sha256(checkpoint_path)
        if digest != manifest.checkpoint_sha256:
            raise GalleryError(
                f"{directory} was enrolled with checkpoint SHA-256 "
                f"{manifest.checkpoint_sha256[:12]}..., but {checkpoint_path} has "
                f"{digest[:12]}...; embeddings of different models cannot be compared "
                "(enroll again with this checkpoint)")
        recognizer = cls.from_checkpoint(checkpoint_path, search=search, polarity=polarity)
        if recognizer.content_dim != manifest.content_dim:
            raise GalleryError(f"{directory}: gallery content_dim {manifest.content_dim} "
                               f"!= checkpoint's {recognizer.content_dim}")
        recognizer.memory = memory
        recognizer._label_ids = dict(manifest.labels)
        recognizer._next_label_id = manifest.next_label_id
        recognizer.unknown_score = manifest.unknown_score
        recognizer.threshold = manifest.threshold
        if manifest.calibration is not None:
            recognizer.calibration = _calibration(directory, manifest.calibration)
        for number, record in enumerate(journal.records, start=1):
            try:
                recognizer.replay(record)
            except GalleryError as error:
                raise GalleryError(f"{Path(directory) / JOURNAL_NAME}: record {number} "
                                   f"cannot be replayed ({error})") from error
        return recognizer

    def replay(self, record: JournalRecord) -> None:
        """Apply a journal record (`gaussmem.gallery_journal`): the write it logged."""
        if isinstance(record, EnrollRecord):
            self.enroll_encoded(list(record.labels), record.mean, record.var)
        elif isinstance(record, RemoveRecord):
            self.remove(record.label)
        else:
            if record.score not in UNKNOWN_SCORES:
                raise GalleryError(f"unknown score {record.score!r}")
            self.unknown_score, self.threshold = record.score, record.threshold
            self.calibration = _calibration("calibrate record", record.calibration)

    def save(self, directory: str | os.PathLike[str]) -> str:
        """Write the gallery to `directory` atomically (see `gaussmem.gallery_file`);
        returns the SHA-256 of its memory file."""
        manifest = GalleryManifest(
            checkpoint_path=str(self.checkpoint_path),
            checkpoint_sha256=self.checkpoint_sha256, content_dim=self.content_dim,
            method=self.method, preprocessing_kind=self.preprocessing.kind,
            image_size=self.preprocessing.image_size, labels=dict(self._label_ids),
            next_label_id=self._next_label_id, unknown_score=self.unknown_score,
            threshold=self.threshold,
            calibration=None if self.calibration is None else asdict(self.calibration))
        return write_gallery(directory, manifest, self.memory)

    # --- gallery ----------------------------------------------------------------------
    def labels(self) -> dict[str, int]:
        """Each enrolled label and the number of examples merged into its entries."""
        valid = self.memory.valid
        counts = torch.zeros(self._next_label_id + 1, dtype=torch.int64)
        counts.index_add_(0, self.memory.labels[valid], self.memory.counts[valid])
        per_label = counts.tolist()  # one conversion, not one tensor read per label
        return {name: per_label[label_id] for name, label_id in sorted(self._label_ids.items())}

    def examples_of(self, label: str) -> int:
        """The number of examples merged into `label`'s entries (0 if not enrolled);
        one label's count without counting every label's."""
        label_id = self._label_ids.get(label)
        if label_id is None:
            return 0
        mine = self.memory.valid & (self.memory.labels == label_id)
        return int(self.memory.counts[mine].sum())

    def label_count(self) -> int:
        """The number of enrolled labels."""
        return len(self._label_ids)

    def __contains__(self, label: object) -> bool:
        """Whether `label` is enrolled."""
        return label in self._label_ids

    def remove(self, label: str) -> int:
        """Forget `label`; returns how many memory entries it had."""
        if label not in self._label_ids:
            raise GalleryError(f"label {label!r} is not in the gallery")
        label_id = self._label_ids.pop(label)
        self._names_of = None
        slots = (self.memory.valid & (self.memory.labels == label_id)).nonzero()[:, 0]
        self.memory.clear_slots_(slots)
        return len(slots)

    def clear(self) -> None:
        """Forget every label (the checkpoint, score and threshold stay)."""
        self.memory.reset_()
        self._label_ids = {}
        self._names_of = None

    def enroll(self, label: str, images: Sequence[ImageInput]) -> EnrollReport:
        """Enroll `images` (paths, PIL images or arrays) as examples of `label`."""
        return self.enroll_many([label] * len(images), images)

    def enroll_many(self, labels: Sequence[str], images: Sequence[ImageInput]) -> EnrollReport:
        """Enroll `images[i]` as an example of `labels[i]`; all of them or none."""
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        check_labels(labels)
        mu, var = self.encode(images)
        return self.enroll_encoded(labels, mu, var)

    def enroll_encoded(self, labels: Sequence[str], mu: torch.Tensor,
                       var: torch.Tensor) -> EnrollReport:
        """`enroll_many` of already encoded posteriors `(n, content_dim)`."""
        if len(labels) != len(mu) or mu.shape != var.shape:
            raise ValueError(f"{len(labels)} labels for posteriors of shapes "
                             f"{tuple(mu.shape)} and {tuple(var.shape)}")
        check_labels(labels)
        if not (torch.isfinite(mu).all() and torch.isfinite(var).all()):
            raise GalleryError("the model gave non-finite embeddings; nothing was enrolled")
        # Only the batch's labels are looked at: copying the map of a 1e5-label gallery
        # for every batch cost more than the batch's memory writes.
        known = self._label_ids
        new_names = sorted({label for label in labels if label not in known})
        new_ids = {name: self._next_label_id + offset for offset, name in enumerate(new_names)}
        label_ids = torch.tensor([known[label] if label in known else new_ids[label]
                                  for label in labels], dtype=torch.int64)
        entries_before = len(self.memory)
        self._ensure_capacity(len(labels))
        # The batch's search of the whole gallery is most of the time: the cores go to
        # its products (gaussmem.plumbing.blas_threads).
        with cores_to_blas():
            update_in_order_(self.memory, mu, var, label_ids)
        if new_ids:   # the name map is rebuilt only when names change
            known.update(new_ids)
            self._names_of = None
        self._next_label_id += len(new_names)
        new_entries = len(self.memory) - entries_before
        return EnrollReport(len(labels), len(labels) - new_entries, new_entries)

    def _label_names(self) -> dict[int, str]:
        """Memory label -> name, rebuilt only after the labels change (a gallery of 1e5
        labels would otherwise spend longer inverting the map than searching)."""
        if self._names_of is None:
            self._names_of = {label_id: name for name, label_id in self._label_ids.items()}
        return self._names_of

    def _ensure_capacity(self, extra: int) -> None:
        needed = len(self.memory) + extra
        if needed > self.memory.capacity:
            capacity = self.memory.capacity
            while capacity < needed:
                capacity *= 2
            self.memory.grow_(capacity)

    # --- recognition ------------------------------------------------------------------
    def encode(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """Content posteriors `(mean, var)`, each `(n, content_dim)`, of user images."""
        return self.encode_pixels(load_images(images, self.preprocessing, self.polarity))

    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` of model inputs already preprocessed (`gaussmem.preprocess.load_images`)."""
        content = self.classifier.content_posterior(self.classifier.embed(pixels))
        return content.mean, content.var

    def recognize(self, images: Sequence[ImageInput], *, k: int = 5,
                  threshold: float | None = None, score: str | None = None
                  ) -> list[Recognition]:
        """One `Recognition` per image, with its `k` nearest labels.

        `threshold` (default: the gallery's, set by `calibrate`; None accepts every
        nearest label) and `score` (default: the gallery's unknown score) decide unknown.
        """
        mu, var = self.encode(images)
        return self.recognize_encoded(mu, var, k=k, threshold=threshold, score=score)

    def recognize_encoded(self, mu: torch.Tensor, var: torch.Tensor, *, k: int = 5,
                          threshold: float | None = None, score: str | None = None
                          ) -> list[Recognition]:
        """`recognize` of already encoded posteriors `(n, content_dim)`."""
        return self.recognize_rows(mu, var, [k] * len(mu), [threshold] * len(mu), score=score)

    def recognize_rows(self, mu: torch.Tensor, var: torch.Tensor, ks: Sequence[int],
                       thresholds: Sequence[float | None], *, score: str | None = None
                       ) -> list[Recognition]:
        """`recognize_encoded` with each row's own `k` and `threshold`: a server answers
        a batch of requests that asked for different ones with one search per distinct
        k (a score over the candidates, like "mahalanobis", depends on how many)."""
        if not len(mu) == len(ks) == len(thresholds):
            raise ValueError(f"{len(ks)} ks and {len(thresholds)} thresholds for "
                             f"{len(mu)} posteriors")
        score = score or self.unknown_score
        names = self._label_names()
        results: list[Recognition | None] = [None] * len(mu)
        for k in sorted(set(ks)):
            rows = [row for row, row_k in enumerate(ks) if row_k == k]
            index = torch.tensor(rows)
            group_mu, group_var = mu[index], var[index]
            candidates = nearest_labels(self.search, self.memory, group_mu, group_var,
                                        max(k, 2))
            scores = unknown_score(score, self.memory, group_mu, group_var,
                                   candidates).tolist()
            for position, row in enumerate(rows):
                threshold = self.threshold if thresholds[row] is None else thresholds[row]
                results[row] = self._recognition(position, candidates, scores[position],
                                                 score, threshold, k, names)
        return [result for result in results if result is not None]

    @staticmethod
    def _recognition(row: int, candidates: LabelCandidates, score: float, score_name: str,
                     threshold: float | None, k: int, names: dict[int, str]) -> Recognition:
        divergences = candidates.divergence[row].double().tolist()
        label_ids = candidates.labels[row].tolist()
        top_k = tuple(Match(names[label_id], math.exp(-divergence))
                      for label_id, divergence in zip(label_ids[:k], divergences[:k],
                                                      strict=True)
                      if label_id != NOT_FOUND)
        nearest = top_k[0].label if top_k else None
        accepted = nearest is not None and (threshold is None or score >= threshold)
        return Recognition(label=nearest if accepted else None, nearest=nearest,
                           similarity=math.exp(-divergences[0]), divergence=divergences[0],
                           score=score, score_name=score_name, threshold=threshold,
                           top_k=top_k)

    def calibrate(self, known_images: Sequence[ImageInput], known_labels: Sequence[str],
                  unknown_images: Sequence[ImageInput], target_far: float = 0.05, *,
                  score: str | None = None) -> Calibration:
        """Set the threshold that accepts at most `target_far` of `unknown_images`
        (people or characters not in the gallery), and report what it does on
        `known_images` of enrolled `known_labels`. Use examples that were not enrolled:
        enrolled ones match themselves and flatter the accept rate."""
        if len(known_images) != len(known_labels):
            raise ValueError(f"{len(known_labels)} labels for {len(known_images)} known images")
        missing = sorted(set(known_labels) - set(self._label_ids))
        if missing:
            raise GalleryError(f"calibration labels {missing[:3]} are not in the gallery")
        score = score or self.unknown_score
        if score not in UNKNOWN_SCORES:
            raise GalleryError(f"unknown score {score!r}; choose from {UNKNOWN_SCORES}")
        if not len(self.memory):
            raise GalleryError("calibrate needs an enrolled gallery")
        known = self.recognize(known_images, k=2, threshold=-math.inf, score=score)
        unknown = self.recognize(unknown_images, k=2, threshold=-math.inf, score=score)
        threshold = calibrate_threshold(np.array([r.score for r in unknown]), target_far)
        if not math.isfinite(threshold):
            raise GalleryError(f"score {score!r} gave no finite threshold on these examples "
                               "(a margin needs at least two labels enrolled)")
        accepted = [r.score >= threshold for r in known]
        correct = [ok and r.nearest == label
                   for ok, r, label in zip(accepted, known, known_labels, strict=True)]
        calibration = Calibration(
            score=score, threshold=threshold, target_far=target_far,
            false_accept_rate=float(np.mean([r.score >= threshold for r in unknown])),
            true_accept_rate=float(np.mean(accepted)) if known else 0.0,
            correct_accept_rate=float(np.mean(correct)) if known else 0.0,
            n_known=len(known), n_unknown=len(unknown))
        self.unknown_score, self.threshold, self.calibration = score, threshold, calibration
        return calibration


def _calibration(source: object, fields: dict[str, Any]) -> Calibration:
    try:
        return Calibration(**fields)
    except TypeError as error:
        raise GalleryError(f"{source}: malformed calibration ({error})") from error


def check_labels(labels: Sequence[str]) -> None:
    """Raise `GalleryError` for a label that is empty, blank or not printable: it could
    not be shown, typed back or told apart from another."""
    for label in set(labels):
        if not isinstance(label, str) or not label.strip() or not label.isprintable():
            raise GalleryError(f"label {label!r} must be a non-empty printable string")

