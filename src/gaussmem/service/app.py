"""The HTTP API and page over a `ServedGallery` (FastAPI; OpenAPI docs at /docs).

    GET    /healthz                               liveness, model kind, gallery size
    GET    /api/v1/labels                         labels with example counts
    POST   /api/v1/labels/{label}/examples        enroll images (multipart "images")
    GET    /api/v1/labels/{label}/thumbnail       the label's first example, PNG
    DELETE /api/v1/labels/{label}                 forget a label
    POST   /api/v1/recognize?k=&threshold=        one image (multipart "image")
    POST   /api/v1/calibrate                      set the unknown threshold
    GET    /                                      the page

Every error is JSON `{"error": "..."}` naming the problem: 400 bad label or request,
401 wrong API key, 404 unknown label, 411/413 body without a length or over the limit,
415 not an image, 422 malformed parameters, 503 the gallery could not be saved (the
write was undone). A request body is refused from its
Content-Length before it is read, so an oversized upload costs the server nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import math
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from gaussmem import __version__
from gaussmem.errors import GalleryError, ImageError
from gaussmem.service.served_gallery import SaveFailedError, ServedGallery, UnknownLabelError
from gaussmem.service.uploads import Upload
from gaussmem.unknown import UNKNOWN_SCORES

#: Default limit on a request body: a handful of photos.
DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024
API_KEY_HEADER = "X-API-Key"
#: Most nearest labels a recognize returns.
MAX_K = 100


def create_app(gallery: ServedGallery, *, api_key: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The app serving `gallery`; `/api/v1/*` needs header `X-API-Key: api_key` when
    one is given; request bodies over `max_upload_bytes` get 413."""
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    app = FastAPI(title="gaussmem recognizer", version=__version__,
                  description="Enroll labelled images into a gallery of Gaussian embeddings "
                  "and recognize new ones, or get unknown.")
    app.state.gallery = gallery
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    _add_error_handlers(app)
    page = resources.files("gaussmem.service").joinpath("page.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        recognizer = gallery.recognizer
        return {"status": "ok", "version": __version__,
                "kind": recognizer.preprocessing.kind,
                "image_size": recognizer.preprocessing.image_size,
                "labels": gallery.label_count(), "api_key_required": api_key is not None}

    app.include_router(_api_router(gallery, api_key), prefix="/api/v1")
    return app


def _api_router(gallery: ServedGallery, api_key: str | None) -> APIRouter:
    # async: a sync dependency would cost every request an extra trip through the
    # thread pool, and comparing a header never blocks the event loop.
    async def check_key(key: Annotated[str | None, Header(alias=API_KEY_HEADER)] = None
                        ) -> None:
        if api_key is not None and (key is None or not hmac.compare_digest(
                key.encode(), api_key.encode())):
            raise StarletteHTTPException(401, f"missing or wrong API key (send it in the "
                                         f"{API_KEY_HEADER} header)")

    router = APIRouter(dependencies=[Depends(check_key)])

    @router.get("/labels")
    def list_labels() -> dict[str, Any]:
        recognizer = gallery.recognizer
        return {"labels": [{"label": label, "examples": count,
                            "thumbnail": f"/api/v1/labels/{quote(label, safe='')}/thumbnail"}
                           for label, count in gallery.labels().items()],
                "unknown_score": recognizer.unknown_score, "threshold": recognizer.threshold}

    @router.post("/labels/{label:path}/examples")
    def enroll(label: str, images: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
        report = gallery.enroll(label, _read(images))
        return {"label": label, "images": report.n_images, "merged": report.n_merged,
                "new_entries": report.n_new_entries, "examples": gallery.examples_of(label)}

    @router.get("/labels/{label:path}/thumbnail", response_class=Response,
                responses={200: {"content": {"image/png": {}}}})
    def thumbnail(label: str) -> Response:
        return Response(gallery.thumbnail(label), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @router.delete("/labels/{label:path}")
    def remove(label: str) -> dict[str, Any]:
        return {"label": label, "removed_entries": gallery.remove(label)}

    # async: the request waits for its batch (gaussmem.service.recognize_batches) on the
    # event loop, not in a thread of the pool.
    @router.post("/recognize")
    async def recognize(image: Annotated[UploadFile, File()],
                        k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
                        threshold: Annotated[float | None, Query()] = None
                        ) -> dict[str, Any]:
        if threshold is not None and not math.isfinite(threshold):
            raise GalleryError(f"threshold {threshold!r} is not a finite number")
        upload = Upload(image.filename or "upload", await image.read())
        recognition = await asyncio.wrap_future(gallery.submit_recognize(upload, k, threshold))
        return recognition.to_dict()

    @router.post("/calibrate")
    def calibrate(known: Annotated[list[UploadFile], File()],
                  known_labels: Annotated[list[str], Form()],
                  unknown: Annotated[list[UploadFile], File()],
                  target_far: Annotated[float, Form(ge=0, lt=1)] = 0.05,
                  score: Annotated[str | None, Form()] = None) -> dict[str, Any]:
        if score is not None and score not in UNKNOWN_SCORES:
            raise GalleryError(f"score {score!r} is not one of {UNKNOWN_SCORES}")
        calibration = gallery.calibrate(_read(known), known_labels, _read(unknown),
                                        target_far, score)
        return vars(calibration)

    return router


def _read(files: list[UploadFile]) -> list[Upload]:
    return [Upload(file.filename or "upload", file.file.read()) for file in files]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImageError)
    def image_error(_: Request, error: ImageError) -> JSONResponse:
        return _error(415, str(error))

    @app.exception_handler(UnknownLabelError)
    def unknown_label(_: Request, error: UnknownLabelError) -> JSONResponse:
        return _error(404, str(error))

    @app.exception_handler(GalleryError)
    def gallery_error(_: Request, error: GalleryError) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(SaveFailedError)
    def save_failed(_: Request, error: SaveFailedError) -> JSONResponse:
        return _error(503, str(error))

    @app.exception_handler(StarletteHTTPException)
    def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}"
                             for problem in error.errors())
        return _error(422, problems)


class BodyLimit:
    """ASGI middleware: a request with a body must state its length (411 otherwise),
    and a length over `max_bytes` is refused (413) before the body is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is None or not length.isdigit():
                response = _error(411, "the request needs a Content-Length header")
            elif int(length) > self.max_bytes:
                response = _error(413, f"request body of {int(length)} bytes is over the "
                                  f"{self.max_bytes}-byte limit")
            else:
                response = None
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
