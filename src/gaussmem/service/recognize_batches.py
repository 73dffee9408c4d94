"""Recognitions answered in batches by one thread.

A server's request threads could each run the model and search the gallery for their
own image, but on a small CPU concurrent requests then fight over the cores and the
interpreter lock, and each search reads the whole gallery once per image. Here every
recognition is queued; one thread takes whatever has queued up, decodes and encodes
those images in one forward pass and searches the gallery once for all of them (one
matrix product instead of one per image), then answers each request. Alone, a request
is answered as soon as it arrives; under load the batches grow, and so does the
throughput.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from gaussmem.errors import GaussmemError
from gaussmem.preprocess import load_images
from gaussmem.recognizer import Recognition, Recognizer
from gaussmem.service.uploads import Upload, decode_upload

#: Most images one pass encodes: bounds a pass's memory and the wait of its last request.
MAX_BATCH = 64


@dataclass
class _Request:
    upload: Upload
    k: int
    threshold: float | None
    answer: Future[Recognition] = field(default_factory=Future)


class RecognizeBatches:
    """The queue and its thread. `recognizer()` gives the recognizer to use now (a
    server may swap it after reloading its gallery); `memory_lock` is held while the
    gallery is searched."""

    def __init__(self, recognizer: Callable[[], Recognizer],
                 memory_lock: threading.Lock) -> None:
        self._recognizer = recognizer
        self._memory_lock = memory_lock
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gaussmem-recognize",
                                        daemon=True)
        self._thread.start()

    def submit(self, upload: Upload, k: int, threshold: float | None
               ) -> Future[Recognition]:
        """Queue one image; the future holds its `Recognition`, or the `GaussmemError`
        that names what is wrong with it."""
        if not self._thread.is_alive():
            raise RuntimeError("the recognition thread has stopped")
        request = _Request(upload, k, threshold)
        self._queue.put(request)
        return request.answer

    def close(self) -> None:
        """Answer what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    break
                if request is None:
                    stop = True
                    break
                batch.append(request)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[_Request]) -> None:
        """Answer every request of `batch`: an image that cannot be read fails alone."""
        recognizer = self._recognizer()
        readable, pixels = [], []
        for request in batch:
            try:
                pixels.append(load_images([decode_upload(request.upload)],
                                          recognizer.preprocessing, recognizer.polarity))
                readable.append(request)
            except GaussmemError as error:
                request.answer.set_exception(error)
        if not readable:
            return
        try:
            mu, var = recognizer.encode_pixels(torch.cat(pixels))
            with self._memory_lock:
                results = recognizer.recognize_rows(
                    mu, var, [request.k for request in readable],
                    [request.threshold for request in readable])
        except BaseException as error:
            for request in readable:
                request.answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for request, result in zip(readable, results, strict=True):
            request.answer.set_result(result)
