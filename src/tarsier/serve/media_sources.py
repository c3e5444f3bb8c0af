"""Where a request's video or image comes from: a data: URL, a file under the media root, or http(s).

The server reads local files only inside ``--media-root`` (after resolving ``..`` and symlinks) and
fetches http(s) only with ``--allow-remote-media``; every source is capped in bytes. Media that came
in the request is written to a temporary file with the extension its MIME type implies, because
the decoders choose by extension, and removed when the request is done.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tarsier.media import GIF_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from tarsier.serve.protocol import ApiError

MIME_EXTENSIONS = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/x-ms-wmv": ".wmv",
    "image/gif": ".gif",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/tiff": ".tiff",
}
KNOWN_EXTENSIONS = set(VIDEO_EXTENSIONS) | set(GIF_EXTENSIONS) | set(IMAGE_EXTENSIONS)


@dataclass
class MediaPolicy:
    """What the server may read for a request."""

    media_root: Path | None = None  # local paths resolve inside it; None refuses local paths
    allow_remote: bool = False
    max_bytes: int = 64 * 1024 * 1024
    remote_timeout: float = 20.0


@contextmanager
def local_media(url: str, policy: MediaPolicy) -> Iterator[tuple[str, str]]:
    """``(local path, name for messages)`` of the media at ``url``, valid inside the ``with`` block.

    Raises :class:`ApiError`. The name is what the client sent (never a temporary file or the
    server's own layout), so error messages can quote it.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower() if ":" in url[:12] else ""
    if scheme == "data":
        suffix, payload = _data_url(url, policy.max_bytes)
        with _temporary(payload, suffix) as path:
            yield path, "the data: URL media"
    elif scheme in ("http", "https"):
        if not policy.allow_remote:
            raise ApiError(400, "http(s) media URLs are refused: the server was started without --allow-remote-media")
        suffix, payload = _download(url, policy)
        with _temporary(payload, suffix) as path:
            yield path, url
    elif scheme in ("file", ""):
        raw = urllib.parse.unquote(url[7:]) if scheme == "file" else url
        yield str(_inside_root(raw, policy)), raw
    else:
        raise ApiError(400, f"unsupported media URL scheme {scheme!r}; use a data: URL, a path, file:// or http(s)")


def _data_url(url: str, max_bytes: int) -> tuple[str, bytes]:
    header, comma, data = url.partition(",")
    if not comma or ";base64" not in header:
        raise ApiError(400, "a data: URL must be base64: data:<mime type>;base64,<data>")
    mime = header[5:].split(";")[0].strip().lower()
    suffix = MIME_EXTENSIONS.get(mime)
    if suffix is None:
        raise ApiError(400, f"unsupported media type {mime or '(none)'!r} in data: URL; "
                       f"supported: {', '.join(sorted(MIME_EXTENSIONS))}")
    if len(data) * 3 // 4 > max_bytes + 3:
        raise ApiError(413, f"the media is {len(data) * 3 // 4:,} bytes, over this server's limit of {max_bytes:,}")
    try:
        payload = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the data: URL's base64 data is invalid") from None
    return suffix, payload


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows at most three redirects, and only to http(s) URLs (never file:, ftp: or the like)."""

    max_redirections = 3

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ApiError(400, f"{req.full_url} redirects to {newurl}, which is not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _download(url: str, policy: MediaPolicy) -> tuple[str, bytes]:
    path_suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
    try:
        with _OPENER.open(url, timeout=policy.remote_timeout) as response:
            mime = response.headers.get_content_type().lower()
            payload = response.read(policy.max_bytes + 1)
    except (OSError, ValueError) as exc:
        raise ApiError(400, f"could not fetch {url}: {exc}") from None
    if len(payload) > policy.max_bytes:
        raise ApiError(413, f"{url} is over this server's media limit of {policy.max_bytes:,} bytes")
    suffix = MIME_EXTENSIONS.get(mime) or (path_suffix if path_suffix in KNOWN_EXTENSIONS else None)
    if suffix is None:
        raise ApiError(400, f"{url}: unsupported media type {mime!r}")
    return suffix, payload


@contextmanager
def _temporary(payload: bytes, suffix: str) -> Iterator[str]:
    handle, path = tempfile.mkstemp(prefix="tarsier-media-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        yield path
    finally:
        os.unlink(path)


def _inside_root(raw: str, policy: MediaPolicy) -> Path:
    """The real path of ``raw`` if it lies inside the media root (after ``..`` and symlinks)."""
    if policy.media_root is None:
        raise ApiError(400, "local media paths are refused: the server was started without --media-root")
    root = policy.media_root.resolve()
    candidate = Path(raw) if os.path.isabs(raw) else root / raw
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(400, f"{raw}: outside the media root")
    if not resolved.exists():
        raise ApiError(404, f"{raw}: no such file under the media root")
    if resolved.is_file() and resolved.stat().st_size > policy.max_bytes:
        raise ApiError(413, f"{raw} is {resolved.stat().st_size:,} bytes, over this server's media limit of {policy.max_bytes:,}")
    return resolved
