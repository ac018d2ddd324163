"""``textguidedseg serve``: inference as a small HTTP service (the Slicer module's backend, or a GPU server).

Examples::

    textguidedseg serve                                    # 127.0.0.1, a free port, no token
    textguidedseg serve --host 0.0.0.0 --port 8765 --token-file ~/.textguidedseg-token --device cuda

The first line on standard output is ``Serving on http://HOST:PORT`` (the port actually bound, also with
``--port 0``), so a client that started the process can read where to connect. Binding anything but a loopback
address needs a token (``--token-file``, ``--token`` or the ``TEXTGUIDEDSEG_SERVER_TOKEN`` environment
variable); a token, when given, is required on every request (``Authorization: Bearer <token>``).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from TextGuidedSegLib.cli.arguments import add_device_argument, existing_path

logger = logging.getLogger("textguidedseg")

#: Environment variable holding the token (so it does not show in the process list).
TOKEN_ENV = "TEXTGUIDEDSEG_SERVER_TOKEN"
#: What the first line of standard output starts with; the URL follows.
URL_LINE_PREFIX = "Serving on "


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(args: argparse.Namespace) -> str | None:
    """The token from ``--token-file``, ``--token`` or :data:`TOKEN_ENV` (in that order), None when none."""
    if args.token_file is not None:
        path = existing_path(args.token_file, "--token-file", "file")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"--token-file {path} is empty")
    else:
        token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and (len(token) < 16 or any(c.isspace() for c in token)):
        raise ValueError(
            "the token must be at least 16 characters without blanks (e.g. `openssl rand -hex 32`)"
        )
    return token


def run(args: argparse.Namespace) -> int:
    """Check the arguments, bind the socket, print its URL and serve until interrupted."""
    token = read_token(args)
    if token is None and not is_loopback(args.host):
        raise ValueError(
            f"--host {args.host} is reachable from other machines: give a token (--token-file FILE, or the "
            f"{TOKEN_ENV} environment variable), or bind 127.0.0.1"
        )
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535 (0 picks a free port), got {args.port}")
    if args.max_volume_mb <= 0 or args.max_cache_mb < args.max_volume_mb:
        raise ValueError(
            f"--max-volume-mb ({args.max_volume_mb}) must be > 0 and <= --max-cache-mb ({args.max_cache_mb})"
        )
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    try:
        import uvicorn

        from TextGuidedSegLib.server import ServerSettings, create_app
    except ImportError as err:
        raise ValueError(
            f"serve needs FastAPI and uvicorn: pip install 'TextGuidedSegLib[serve]' ({err})"
        ) from None

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        sock.close()
        raise OSError(f"--host {args.host} --port {args.port}: cannot bind ({err.strerror})") from None
    sock.listen(128)  # connections queue from now on: a client that reads the URL line is never refused
    host, port = sock.getsockname()[:2]
    settings = ServerSettings(
        host=host,
        port=port,
        token=token,
        max_volume_bytes=int(args.max_volume_mb * 2**20),
        max_cache_bytes=int(args.max_cache_mb * 2**20),
        device=args.device,
        workers=args.workers,
    )
    app = create_app(settings)
    # the model stack (torch, MONAI) loads now, before the URL is announced, not inside the first request
    import TextGuidedSegLib.bundle
    import TextGuidedSegLib.inference.segmenter
    import TextGuidedSegLib.registry  # noqa: F401

    shown = f"[{host}]" if family == socket.AF_INET6 else host
    sys.stdout.write(f"{URL_LINE_PREFIX}http://{shown}:{port}\n")
    sys.stdout.flush()
    logger.info(
        "serving pid %d on %s:%d (token %s, device %s, %d workers)",
        os.getpid(),
        host,
        port,
        "required" if token else "off",
        args.device,
        args.workers,
    )
    config = uvicorn.Config(app, log_level=args.log_level.lower() if "log_level" in args else "info")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``textguidedseg`` sub-commands."""
    serve = commands.add_parser(
        "serve", help="run inference as an HTTP service (the Slicer module's backend, or a GPU server)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default)")
    tokens = serve.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", type=Path, help="file holding the token clients must send")
    tokens.add_argument("--token", help=f"the token clients must send (prefer --token-file or ${TOKEN_ENV})")
    serve.add_argument(
        "--max-volume-mb", type=float, default=2048.0, help="largest volume accepted, MiB (default: 2048)"
    )
    serve.add_argument(
        "--max-cache-mb",
        type=float,
        default=8192.0,
        help="bound of the cache of volumes and their encodings, MiB (default: 8192)",
    )
    serve.add_argument("--workers", type=int, default=2, help="jobs run at the same time (default: 2)")
    add_device_argument(serve)
    serve.set_defaults(func=run)
