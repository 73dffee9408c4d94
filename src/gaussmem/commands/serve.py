"""`gaussmem serve`: the recognizer's HTTP API and page (gaussmem.service) with uvicorn.

One process, one worker: it owns the gallery, so two servers must not share one. The
default host is the loopback interface; another host serves the gallery to the network
and is refused without an API key.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from gaussmem.commands import DefaultsHelpFormatter
from gaussmem.commands.arguments import positive_int
from gaussmem.errors import GaussmemError

_POLARITIES = ("auto", "as-is", "invert")
_DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # gaussmem.service.app.DEFAULT_MAX_UPLOAD_BYTES


class ServeError(GaussmemError):
    """A server that cannot start as asked."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a gallery over HTTP (JSON API and a page)",
        description="Serve a gallery: a JSON API under /api/v1 (docs at /docs) and a page "
        "at / to enroll and recognize images. Every write is saved to the gallery before "
        "it is answered. Needs the serve extra: pip install 'gaussmem[serve]'.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--gallery", required=True, type=Path,
                        help="gallery directory (created if new)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="MA-VAE checkpoint (needed for a new gallery; otherwise the "
                        "gallery's, if it moved)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on; other than loopback needs --api-key-file")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port")
    parser.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                        help="file holding the API key that /api/v1 requests must send "
                        "in the X-API-Key header")
    parser.add_argument("--max-upload-bytes", type=positive_int,
                        default=_DEFAULT_MAX_UPLOAD_BYTES, help="largest request body")
    parser.add_argument("--polarity", choices=_POLARITIES, default="auto",
                        help="stroke models: invert dark-on-light drawings (auto detects "
                        "them from the border), always (invert) or never (as-is)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (one is fastest on a small shared CPU)")
    parser.set_defaults(handler=_serve)


def _port(value: str) -> int:
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"must be <= 65535, got {value!r}")
    return number


def read_api_key(path: Path) -> str:
    """The key in `path`, without surrounding whitespace; refuses an empty one."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ServeError(f"{path}: cannot read the API key ({error})") from error
    if not key:
        raise ServeError(f"{path}: the API key file is empty")
    return key


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    api_key = read_api_key(args.api_key_file) if args.api_key_file else None
    if api_key is None and not is_loopback(args.host):
        raise ServeError(f"--host {args.host} would serve the gallery to the network: give "
                         "an --api-key-file, or keep the default 127.0.0.1")
    try:
        import uvicorn

        from gaussmem.service.app import create_app
    except ImportError as error:
        raise ServeError(f"gaussmem serve needs FastAPI and uvicorn ({error}); install "
                         "them with: pip install 'gaussmem[serve]'") from error
    import torch

    from gaussmem.service.served_gallery import ServedGallery

    torch.set_num_threads(args.threads)
    gallery = ServedGallery.open(args.gallery, args.checkpoint, args.polarity)
    app = create_app(gallery, api_key=api_key, max_upload_bytes=args.max_upload_bytes)
    print(f"serving {args.gallery} ({gallery.label_count()} label(s)) at "
          f"http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")
    finally:
        gallery.close()
    return 0
