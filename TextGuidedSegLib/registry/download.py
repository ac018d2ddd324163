"""Streamed downloads: chunked copy with progress and cancel, md5 and sha256 computed on the way."""

from __future__ import annotations

import hashlib
import threading
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .entries import RegistryError

_CHUNK = 1 << 20
#: The digests computed for every download, by name.
ALGORITHMS = ("sha256", "md5")

ProgressCallback = Callable[[int, "int | None"], None]
"""Called as ``progress(done_bytes, total_bytes)``; ``total_bytes`` is None when the server does not say."""
Opener = Callable[[str], Any]
"""``opener(url)`` returning a readable binary response usable as a context manager."""


class DownloadCancelled(RuntimeError):
    """Raised when a download's cancel event was set; the partial file was removed."""


def sha256_stream(stream: BinaryIO, out: BinaryIO | None = None, **progress_args: Any) -> str:
    """Hex sha256 of a byte stream read to its end in chunks, copying it to ``out`` when given.

    Keyword arguments are passed to :func:`copy_stream` (``total``, ``progress``, ``cancel``).
    """
    digest = hashlib.sha256()
    copy_stream(stream, out, [digest], **progress_args)
    return digest.hexdigest()


def copy_stream(
    stream: BinaryIO,
    out: BinaryIO | None,
    digests: list[Any],
    total: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Copy ``stream`` to ``out`` in 1 MiB chunks, updating each hash in ``digests``; return the bytes copied.

    ``progress(done, total)`` is called after each chunk; a set ``cancel`` event raises DownloadCancelled.
    """
    done = 0
    if progress is not None:
        progress(0, total)
    while True:
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled("download cancelled")
        chunk = stream.read(_CHUNK)
        if not chunk:
            return done
        for digest in digests:
            digest.update(chunk)
        if out is not None:
            out.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)


def download(
    url: str,
    destination: Path,
    what: str,
    opener: Opener | None = None,
    size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, str]:
    """Stream ``url`` into the file ``destination``; return its hex digests by algorithm (sha256, md5).

    ``what`` names the download in errors; ``size`` is the expected byte count, used for progress when the
    server sends no Content-Length. The caller removes ``destination`` on any exception.

    Raises:
        RegistryError: the URL cannot be opened or the transfer fails.
        DownloadCancelled: ``cancel`` was set.
    """
    digests = {name: hashlib.new(name) for name in ALGORITHMS}
    try:
        response = (opener or urlopen)(url)
    except OSError as err:
        raise RegistryError(
            f"cannot download {what} from {url} ({err}); where downloads are blocked, download that file "
            "elsewhere and give it to `textguidedseg bundles pull NAME --file PATH`"
        ) from err
    with response, open(destination, "wb") as out:
        try:
            copy_stream(
                response, out, list(digests.values()), content_length(response) or size, progress, cancel
            )
        except OSError as err:
            raise RegistryError(f"download of {what} from {url} failed: {err}") from err
    return {name: digest.hexdigest() for name, digest in digests.items()}


def check_digests(actual: Mapping[str, str], expected: Mapping[str, str | None], what: str, url: str) -> None:
    """Raise RegistryError unless each expected digest (md5, sha256; None: not given) is the actual one."""
    for name, value in expected.items():
        if value is not None and actual[name] != value:
            raise RegistryError(
                f"{what} from {url}: {name} {actual[name]} differs from the registry's {value}; the file was "
                "corrupted or replaced, and was not kept"
            )


def urlopen(url: str) -> Any:
    """Open ``url`` for streaming (60 s socket timeout)."""
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - registry URLs are https:// or file://


def content_length(response: Any) -> int | None:
    """The Content-Length of a urllib response, None when absent."""
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
