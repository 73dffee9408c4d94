"""Load on `gaussmem serve`: concurrent clients against a large gallery, then a restart.

    python benchmarks/service_load.py [--checkpoint C] [--entries 10000] [--clients 8]
        [--seconds 30] [--json results/service/load.json]

The server is `python -m gaussmem serve` on 127.0.0.1 only (one worker, one torch
thread), over a gallery of `--entries` one-entry labels written with `enroll_encoded`
(the posteriors of as many distinct synthetic drawings). `--clients` threads, each with its own
connection and seeded RNG, send requests back to back until `--seconds` pass or
`--max-requests` are sent: `--enroll-fraction` of them enroll one PNG under a new
label, the rest recognize one PNG. Recorded per kind: throughput, p50/p90/p99/max
latency, errors (anything but 200, connection failures included). Then the server is
stopped and started again, and its label list is compared with the gallery before the
run plus every enrollment that was answered 200.

Without `--checkpoint` a `smoke` model is trained for seconds on synthetic drawings;
its posteriors of all drawings nearly coincide, which sends every search down the
memory's slower exact (float64) path, so give a model trained on real data
(`gaussmem train --preset cpu-quick`) for representative numbers. The clients
run on the same machine as the server, and the machine is shared: the load average is
recorded before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import numpy as np
import torch
from PIL import Image

from gaussmem.checkpoint import file_sha256
from gaussmem.data.class_images import ClassImageSet
from gaussmem.plumbing.script_record import provenance, write_json
from gaussmem.presets import preset
from gaussmem.recognizer import Recognizer
from gaussmem.train import train


def synthetic_drawings(n_classes: int, n_samples: int, seed: int) -> ClassImageSet:
    """Classes = a random template plus per-drawing noise (strokes bright, 28x28)."""
    rng = np.random.default_rng(seed)
    templates = rng.random((n_classes, 1, 28, 28)) < 0.15
    noise = rng.random((n_classes, n_samples, 28, 28)) < 0.03
    images = ((templates ^ noise) * 255).astype(np.uint8)
    return ClassImageSet(images, [f"class{i}" for i in range(n_classes)], "synthetic")


def smoke_checkpoint(folder: Path, seed: int) -> Path:
    run = folder / "run"
    config = preset("smoke")
    train(config, run, synthetic_drawings(12, 20, seed), synthetic_drawings(12, 20, seed + 1),
          progress=False)
    return run / "checkpoints" / "last.ckpt"


def build_gallery(checkpoint: Path, directory: Path, entries: int, seed: int) -> None:
    """`entries` labels of one entry each: the posteriors of as many distinct drawings
    (near-copies of one drawing would be an unusual gallery, whose near-ties make every
    search take the memory's slower exact path)."""
    recognizer = Recognizer.from_checkpoint(checkpoint)
    drawings = synthetic_drawings(entries, 1, seed + 2)
    size = recognizer.preprocessing.image_size
    pixels = torch.from_numpy(drawings.images.reshape(-1, 1, 28, 28)).float() / 255
    if size != 28:
        pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear")
    content = recognizer.classifier.content_posterior(recognizer.classifier.embed(pixels))
    recognizer.enroll_encoded([f"g{i:06d}" for i in range(entries)], content.mean,
                              content.var)
    recognizer.save(directory)


def query_pngs(count: int, seed: int) -> list[bytes]:
    """Dark-on-light 56x56 PNG drawings, as a user uploads them."""
    drawings = synthetic_drawings(count, 1, seed + 3)
    payloads = []
    for image in drawings.images[:, 0]:
        buffer = io.BytesIO()
        Image.fromarray(255 - image).resize((56, 56)).save(buffer, format="PNG")
        payloads.append(buffer.getvalue())
    return payloads


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`python -m gaussmem serve` on 127.0.0.1 as a child process."""

    def __init__(self, gallery: Path, checkpoint: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gaussmem", "serve", "--gallery", str(gallery),
             "--checkpoint", str(checkpoint), "--host", "127.0.0.1", "--port", str(self.port),
             "--threads", "1"],
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with status {self.process.returncode}")
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the server did not answer within 120 s")
            time.sleep(0.25)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Tally:
    """Every request's kind, latency (s) and outcome, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"recognize": [],
                                                                        "enroll": []})
    errors: dict[str, list[str]] = field(default_factory=lambda: {"recognize": [],
                                                                   "enroll": []})
    enrolled: list[str] = field(default_factory=list)


def client_loop(client_id: int, url: str, pngs: list[bytes], args: argparse.Namespace,
                deadline: float, tally: Tally) -> None:
    rng = np.random.default_rng([args.seed, client_id])
    with httpx2.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            with tally.lock:
                if tally.sent >= args.max_requests:
                    return
                tally.sent += 1
                number = tally.sent
            png = pngs[int(rng.integers(len(pngs)))]
            kind = "enroll" if rng.random() < args.enroll_fraction else "recognize"
            label = f"load-{number:07d}"
            start = time.perf_counter()
            try:
                if kind == "enroll":
                    response = http.post(f"/api/v1/labels/{label}/examples",
                                         files=[("images", ("x.png", png, "image/png"))])
                else:
                    response = http.post("/api/v1/recognize?k=5",
                                         files=[("image", ("x.png", png, "image/png"))])
                outcome = None if response.status_code == 200 else (
                    f"{response.status_code}: {response.text[:200]}")
            except httpx2.HTTPError as error:
                outcome = f"{type(error).__name__}: {error}"
            elapsed = time.perf_counter() - start
            with tally.lock:
                tally.latencies[kind].append(elapsed)
                if outcome is None:
                    if kind == "enroll":
                        tally.enrolled.append(label)
                else:
                    tally.errors[kind].append(outcome)


def summary(latencies: list[float], errors: list[str], seconds: float) -> dict[str, object]:
    values = np.array(latencies) * 1000
    return {
        "requests": len(values), "errors": len(errors), "error_examples": errors[:5],
        "per_second": len(values) / seconds,
        **({f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 90, 99)}
           if len(values) else {}),
        "max_ms": float(values.max()) if len(values) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--enroll-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("results/service/load.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="gaussmem-load-") as scratch:
        scratch_dir = Path(scratch)
        checkpoint = args.checkpoint or smoke_checkpoint(scratch_dir, args.seed)
        gallery = scratch_dir / "gallery"
        build_gallery(checkpoint, gallery, args.entries, args.seed)
        before = set(Recognizer.load(gallery).labels())
        pngs = query_pngs(64, args.seed)
        load_before = os.getloadavg()
        server = Server(gallery, checkpoint)
        try:
            tally = Tally()
            start = time.monotonic()
            deadline = start + args.seconds
            clients = [threading.Thread(target=client_loop,
                                        args=(i, server.url, pngs, args, deadline, tally))
                       for i in range(args.clients)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            elapsed = time.monotonic() - start
            load_after = os.getloadavg()
        finally:
            server.stop()
        restarted = Server(gallery, checkpoint)
        try:
            listing = httpx2.get(f"{restarted.url}/api/v1/labels", timeout=60).json()["labels"]
        finally:
            restarted.stop()
    after = {row["label"]: row["examples"] for row in listing}
    expected = before | set(tally.enrolled)
    result = {
        "benchmark": "service_load",
        **provenance(),
        "seed": args.seed,
        "checkpoint": ({"path": str(args.checkpoint), "sha256": file_sha256(args.checkpoint)}
                       if args.checkpoint else "smoke preset trained on synthetic drawings"),
        "settings": {"entries": args.entries, "clients": args.clients,
                     "seconds": args.seconds, "max_requests": args.max_requests,
                     "enroll_fraction": args.enroll_fraction, "server_torch_threads": 1,
                     "host": "127.0.0.1"},
        "elapsed_s": elapsed,
        "load_average_before": load_before, "load_average_after": load_after,
        "note": "clients run on the same shared machine as the server",
        "recognize": summary(tally.latencies["recognize"], tally.errors["recognize"], elapsed),
        "enroll": summary(tally.latencies["enroll"], tally.errors["enroll"], elapsed),
        "after_restart": {
            "labels": len(after), "expected": len(expected),
            "exactly_the_answered_enrollments": set(after) == expected,
            "missing": sorted(expected - set(after))[:10],
            "unexpected": sorted(set(after) - expected)[:10]},
    }
    write_json(args.json, result)
    print(json.dumps({key: result[key] for key in ("recognize", "enroll", "after_restart")},
                     indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
