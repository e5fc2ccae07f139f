"""Routes and responses of the upload service: ``handlers.upload:application``.

    GET  /                      upload page
    POST /upload                multipart/form-data, field "file" (one or several)
    GET  /<id>[,<id>...]        picture page (JSON record for JSON clients)
    GET  /<id>/delete?key=      a page asking to confirm the delete (the key from the link or typed)
    POST /<id>/delete           form field "token" or header X-Delete-Token
    GET  /o/<id>                the stable original link: a redirect to the file or a fresh signed link
    GET  /l/<id>.<ext>?e=&s=    signed link to a large picture (the web server sends the bytes)
    GET  /pictures/..., /medium/..., /thumbs/..., /static/...   served here only when no web
                                server is in front
"""

from __future__ import annotations

import contextlib
import http.cookies
import json
import logging
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from PIL import Image

from handlers import templates
from handlers.backend import LocalStorage, Txn, open_backend
from handlers.blocklist import Blocklist
from handlers.checks import Check, Checker
from handlers.errors import UploadError
from handlers.forms import Limits, SpooledFile, read_files
from handlers.images import MIME_TYPES, guard_pillow
from handlers.ratelimit import RateLimiter
from handlers.recovery import Recoverer
from handlers.renditions import ensure_medium, medium_path, medium_url
from handlers.s3serve import s3_file, s3_large
from handlers.service import stage_picture
from handlers.settings import Settings, load_settings
from handlers.share import Links, as_json, share_codes
from handlers.signing import LinkState, load_or_create_secret, signed_query, verify
from handlers.storage import (
    EXTENSIONS,
    ID_PATTERN,
    IdSource,
    Published,
    Record,
    Staged,
    is_disk_full,
    random_id,
)

log = logging.getLogger(__name__)
Environ = WSGIEnvironment

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8"}
MAX_IDS_PER_PAGE = 20
MAX_DELETE_BODY = 4096
COOKIE_MAX_AGE = 30 * 24 * 3600
HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json"
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

_EXT = "|".join(EXTENSIONS)
_PAGE_RE = re.compile(rf"/({ID_PATTERN}(?:,{ID_PATTERN}){{0,{MAX_IDS_PER_PAGE - 1}}})")
_DELETE_RE = re.compile(rf"/({ID_PATTERN})/delete")
_LARGE_RE = re.compile(rf"/l/({ID_PATTERN})\.({_EXT})")
_PICTURE_RE = re.compile(rf"/pictures/({ID_PATTERN})\.({_EXT})")
_THUMB_RE = re.compile(rf"/thumbs/({ID_PATTERN})\.jpg")
_MEDIUM_RE = re.compile(rf"/medium/({ID_PATTERN})\.({_EXT})")
_ORIGINAL_RE = re.compile(rf"/o/({ID_PATTERN})")
_STATIC_RE = re.compile(r"/static/([a-z0-9_-]+)\.(css|js)")


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()

    def start(self, start_response: StartResponse) -> Iterable[bytes]:
        reason = HTTPStatus(self.status).phrase
        start_response(f"{self.status} {reason}", self.headers)
        return self.body


def wants_json(environ: Environ) -> bool:
    accept = environ.get("HTTP_ACCEPT", "") or ""
    return "application/json" in accept and "text/html" not in accept


def json_response(status: int, data: object, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(data, indent=1).encode() + b"\n"
    return Response(
        status,
        [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
         ("X-Content-Type-Options", "nosniff"), *(headers or [])],
        [body],
    )


def html_response(status: int, page: str, headers: list[tuple[str, str]] | None = None,
                  cache: str = "no-store") -> Response:
    body = page.encode()
    return Response(
        status,
        [("Content-Type", HTML_TYPE), ("Content-Length", str(len(body))), ("Cache-Control", cache),
         ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
         ("Referrer-Policy", "same-origin"), *(headers or [])],
        [body],
    )


def error_response(environ: Environ, status: int, code: str, message: str,
                   headers: list[tuple[str, str]] | None = None) -> Response:
    if wants_json(environ):
        return json_response(status, {"error": {"status": status, "code": code, "message": message}}, headers)
    title = HTTPStatus(status).phrase
    return html_response(status, templates.message_page(status, title, message), headers)


def request_path(environ: Environ) -> str:
    # Mounted at the root, a front end may put the whole path in SCRIPT_NAME (lighttpd does
    # unless fix-root-scriptname is on); the app owns the whole URL space either way.
    path = (environ.get("SCRIPT_NAME", "") or "") + (environ.get("PATH_INFO", "") or "")
    return path or "/"


class UploadApp:
    def __init__(self, settings: Settings, *, id_source: IdSource = random_id,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.storage = open_backend(settings.storage, settings.root, id_source, settings.id_tries,
                                    settings.store_public_url)
        self.secret = settings.secret or load_or_create_secret(settings.root)
        self.clock = clock
        self.limits = Limits(settings.max_bytes, settings.max_request_bytes, settings.max_files)
        guard_pillow(settings.max_pixels)
        self.rate = RateLimiter(settings.root / ".locks" / "rate", settings.rate_per_minute, clock)
        self.blocklist = Blocklist(settings.root)
        templates.configure(settings.site_name)
        # Dead requests are recovered at start and then periodically, by every worker.
        self.recoverer = Recoverer(None, settings.recover_seconds, self.storage.recover).start() \
            if settings.recover_seconds else None

    def close(self) -> None:
        if self.recoverer is not None:
            self.recoverer.stop()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        head = method == "HEAD"
        try:
            response = self.route("GET" if head else method, request_path(environ), environ)
        except UploadError as e:
            response = error_response(environ, e.status, e.code, e.message, e.headers)
        except OSError as e:
            if not is_disk_full(e):
                raise
            response = error_response(environ, 507, "disk_full", "The server has no room for the picture.")
        if head:
            _close(response.body)
            response.body = ()
        return response.start(start_response)

    # -- routing ------------------------------------------------------------------------------

    def route(self, method: str, path: str, environ: Environ) -> Response:
        if path == "/":
            self._allow(method, "GET")
            return html_response(200, templates.upload_page(self.settings.max_bytes, self.settings.max_files),
                                 cache="public, max-age=300")
        if path == "/upload":
            self._allow(method, "POST")
            return self.upload(environ)
        if m := _DELETE_RE.fullmatch(path):
            if method == "GET":
                return self.confirm_delete(m[1], environ)
            if method != "POST":
                raise UploadError(405, "method_not_allowed", "Use GET or POST here.",
                                [("Allow", "GET, HEAD, POST")])
            return self.delete(m[1], environ)
        if m := _ORIGINAL_RE.fullmatch(path):
            self._allow(method, "GET")
            return self.original(m[1])
        if m := _PAGE_RE.fullmatch(path):
            self._allow(method, "GET")
            return self.page(m[1].split(","), environ)
        if m := _LARGE_RE.fullmatch(path):
            self._allow(method, "GET")
            return self.large(m[1], m[2], environ)
        if m := _PICTURE_RE.fullmatch(path):
            self._allow(method, "GET")
            return self.small_file(m[1], m[2], environ)
        if m := _THUMB_RE.fullmatch(path):
            self._allow(method, "GET")
            return self.thumbnail(m[1], environ)
        if m := _MEDIUM_RE.fullmatch(path):
            self._allow(method, "GET")
            return self.medium(m[1], m[2], environ)
        if m := _STATIC_RE.fullmatch(path):
            self._allow(method, "GET")
            return self.static(m[1], m[2], environ)
        raise UploadError(404, "not_found", "There is nothing here.")

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            allow = "GET, HEAD" if allowed == "GET" else allowed
            raise UploadError(405, "method_not_allowed", f"Use {allowed} here.", [("Allow", allow)])

    # -- upload -------------------------------------------------------------------------------

    def upload(self, environ: Environ) -> Response:
        # The client address as the front passes it: behind a proxy, the front sets it from
        # the header it trusts. Refused before a byte of the body is read.
        wait = self.rate.take(str(environ.get("REMOTE_ADDR", "") or ""))
        if wait:
            raise UploadError(429, "rate_limited",
                            f"Too many uploads from your address; try again in {wait} seconds.",
                            [("Retry-After", str(wait))])
        # Each picture is checked on another thread from its first bytes on (handlers.checks).
        # One request, one transaction: every picture is published, or none.
        with self.storage.begin() as txn, \
                Checker(self.settings.budget, self.settings.thumb_size, self.settings.medium_px) as checker:
            spooled = read_files(environ, txn, self.limits, checker.start)
            staged: dict[str, Staged] = {}
            stages = [self._stage(item, len(spooled), txn, staged) for item in spooled]
            done = txn.commit(stages)
        for r, stage in zip(done, stages, strict=True):
            self._make_medium(r.record, stage.medium)
        cookies = [self._token_cookie(r, f"/{r.record.id}", environ) for r in done]
        if wants_json(environ):
            files = [self._describe(r.record, r.token, _origin(environ)) for r in done]
            headers = cookies if environ.get("HTTP_X_UPLOAD_PAGE") else []
            return json_response(201, {"files": files}, headers)
        target = "/" + ",".join(r.record.id for r in done)
        if len(done) > 1:
            # The page of the batch (/<a>,<b>) is not below /<a>: it gets every key itself.
            cookies += [self._token_cookie(r, target, environ) for r in done]
        return Response(303, [("Location", target), ("Content-Length", "0"), ("Cache-Control", "no-store"),
                              *cookies])

    def _stage(self, item: SpooledFile[Check], count: int, txn: Txn,
               staged: dict[str, Staged]) -> Staged:
        try:
            self.blocklist.refuse(item.sha256)
            result = stage_picture(item, txn, self.settings, staged.get(item.sha256))
            staged.setdefault(item.sha256, result)
            self.blocklist.refuse(result.facts.served_sha256)
            return result
        except UploadError as e:
            if count > 1 and item.filename:
                e.message = f"{item.filename}: {e.message}"
            raise

    @staticmethod
    def _token_cookie(result: Published, path: str, environ: Environ) -> tuple[str, str]:
        # Scoped to the pages that show the picture, never Path=/: a key cookie per upload sent
        # with every request would soon outgrow the fronts' header limits.
        secure = "; Secure" if environ.get("wsgi.url_scheme") == "https" else ""
        return ("Set-Cookie", f"dt_{result.record.id}={result.token}; Path={path}; Max-Age={COOKIE_MAX_AGE}; "
                              f"HttpOnly; SameSite=Strict{secure}")

    def _picture_url(self, record: Record) -> tuple[str, int | None]:
        if not record.large:
            return f"/pictures/{record.filename}", None
        query = signed_query(self.secret, record.filename, self.clock(), self.settings.link_lifetime)
        expiry = int(urllib.parse.parse_qs(query)["e"][0])
        return f"/l/{record.filename}?{query}", expiry

    def _make_medium(self, record: Record, rendered: bytes | None = None) -> None:
        """Make the medium rendition if it is missing. The picture is published already: a
        rendition that fails is logged, never the request's failure (_medium_url falls back)."""
        if not isinstance(self.storage, LocalStorage):
            return  # on an S3 store the page and the codes use the original (see docs/scale-out.md)
        try:
            ensure_medium(self.storage, record, self.settings.medium_px, rendered)
        except (OSError, ValueError, UploadError, Image.DecompressionBombError):
            log.exception("medium rendition of %s failed", record.id)

    def _medium_url(self, record: Record) -> str:
        url = medium_url(record, self.settings.medium_px)
        if url.startswith("/medium/") and (not isinstance(self.storage, LocalStorage)
                                           or not medium_path(self.storage, record).is_file()):
            return f"/o/{record.id}"  # no rendition (it failed): the stable original link
        return url

    def _links(self, record: Record, origin: str) -> Links:
        medium = origin + self._medium_url(record)
        return Links(page=f"{origin}/{record.id}", medium=medium, original=f"{origin}/o/{record.id}",
                     thumbnail=f"{origin}/thumbs/{record.id}.jpg")

    def _describe(self, record: Record, token: str | None, origin: str) -> dict[str, object]:
        url, expires = self._picture_url(record)
        return {
            "id": record.id,
            "url": url,
            "url_expires": expires,
            "medium_url": self._medium_url(record),
            "original_url": f"/o/{record.id}",
            "thumbnail_url": f"/thumbs/{record.id}.jpg",
            "page_url": f"/{record.id}",
            "delete_url": f"/{record.id}/delete",
            "delete_token": token,
            "delete_link": f"/{record.id}/delete?key={token}" if token else None,
            "share": as_json(share_codes(self._links(record, origin), f"Picture {record.id}")),
            "width": record.width,
            "height": record.height,
            "bytes": record.size,
            "format": record.format,
            "large": record.large,
        }

    # -- pages --------------------------------------------------------------------------------

    def page(self, ids: list[str], environ: Environ) -> Response:
        records = [self.storage.lookup(pid) for pid in ids]
        found = [r for r in records if r is not None]
        if not found:
            raise UploadError(404, "not_found", "No such picture (it may have been deleted).")
        cookies = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookies.load(environ.get("HTTP_COOKIE", "") or "")
        origin = _origin(environ)
        for record in found:  # its maker may have been killed between the commit and the rendition
            self._make_medium(record)
        if wants_json(environ):
            described = [self._describe(r, None, origin) for r in found]
            return json_response(200, described[0] if len(ids) == 1 else {"files": described})
        views = []
        for record in found:
            morsel = cookies.get(f"dt_{record.id}")
            token = morsel.value if morsel and self.storage.check_token(record, morsel.value) else None
            url, expires = self._picture_url(record)
            views.append(templates.PictureView(
                id=record.id, url=url, thumbnail_url=f"/thumbs/{record.id}.jpg", page_url=f"/{record.id}",
                delete_url=f"/{record.id}/delete", width=record.width, height=record.height,
                size=record.size, format=record.format, large=record.large, expires=expires,
                delete_token=token, medium_url=self._medium_url(record),
                original_url=f"/o/{record.id}",
                codes=share_codes(self._links(record, origin), f"Picture {record.id}"),
            ))
        has_token = any(v.delete_token for v in views)
        return html_response(200, templates.picture_page(views, origin),
                             cache="no-store" if has_token else "private, max-age=60")

    # -- delete -------------------------------------------------------------------------------

    def delete(self, pid: str, environ: Environ) -> Response:
        token = environ.get("HTTP_X_DELETE_TOKEN") or self._form_token(environ)
        record = self.storage.lookup(pid)
        if record is None:
            raise UploadError(404, "not_found", "No such picture (it may have been deleted already).")
        if not token or not self.storage.check_token(record, token):
            raise UploadError(403, "bad_token", "The delete key does not match this picture.")
        with self.storage.begin() as txn:
            removed = txn.delete(record)
        if not removed:
            raise UploadError(404, "not_found", "The picture was deleted already.")
        expire = ("Set-Cookie", f"dt_{pid}=; Path=/{pid}; Max-Age=0; HttpOnly; SameSite=Strict")
        if wants_json(environ):
            return json_response(200, {"deleted": pid}, [expire])
        return html_response(200, templates.deleted_page(pid), [expire])

    def confirm_delete(self, pid: str, environ: Environ) -> Response:
        """GET never deletes: it shows the picture and a form (the key filled in from the link,
        or typed) whose POST does."""
        record = self.storage.lookup(pid)
        if record is None:
            raise UploadError(404, "not_found", "No such picture (it may have been deleted already).")
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", "") or "")
        key = query.get("key", [""])[0].strip()[:200]
        # The key may sit in the address: keep the page out of caches and referrers.
        return html_response(200, templates.confirm_delete_page(
            pid, f"/thumbs/{pid}.jpg", (record.thumb_width, record.thumb_height), key),
            [("Referrer-Policy", "no-referrer")])

    def original(self, pid: str) -> Response:
        """A link that never dies for the full picture: each visit gets a freshly signed link
        (or the public file), and the front sends the bytes."""
        record = self.storage.lookup(pid)
        if record is None:
            raise UploadError(404, "not_found", "No such picture (it may have been deleted).")
        url, _ = self._picture_url(record)
        return Response(302, [("Location", url), ("Content-Length", "0"), ("Cache-Control", "no-store")])

    @staticmethod
    def _form_token(environ: Environ) -> str:
        kind = (environ.get("CONTENT_TYPE", "") or "").split(";")[0].strip().lower()
        raw = (environ.get("CONTENT_LENGTH", "") or "0").strip()
        if kind != "application/x-www-form-urlencoded" or not (raw.isdigit() and raw.isascii()):
            return ""
        length = int(raw)
        if length > MAX_DELETE_BODY:
            raise UploadError(413, "request_too_large", "The delete request is too large.")
        body = environ["wsgi.input"].read(length).decode("latin-1")
        values = urllib.parse.parse_qs(body).get("token", [""])
        return str(values[0]).strip()

    # -- files --------------------------------------------------------------------------------

    def large(self, pid: str, ext: str, environ: Environ) -> Response:
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", "") or "")
        expiry = query.get("e", [""])[0]
        signature = query.get("s", [""])[0]
        name = f"{pid}.{ext}"
        state = verify(self.secret, name, expiry, signature, self.clock())
        if state is LinkState.BAD_SIGNATURE:
            raise UploadError(403, "bad_signature", "This link is not valid.")
        if state is LinkState.EXPIRED:
            raise UploadError(410, "link_expired", "This link has expired; open the picture page again.")
        record = self.storage.lookup(pid)
        if record is None or not record.large or record.ext != ext:
            raise UploadError(404, "not_found", "No such picture (it may have been deleted).")
        if not isinstance(self.storage, LocalStorage):
            return Response(*s3_large(self.storage, record, self.settings, int(expiry) - int(self.clock())))
        path = self.storage.picture_path(record)
        # The web server sends what the header names, following links: name only a regular
        # file that is really there, never a link planted in its place.
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except FileNotFoundError:
            regular = False
        if not regular:
            raise UploadError(404, "not_found", "No such picture (it may have been deleted).")
        max_age = max(0, int(expiry) - int(self.clock()))
        headers = [("Content-Type", MIME_TYPES[ext]), ("Cache-Control", f"private, max-age={max_age}"),
                   ("X-Content-Type-Options", "nosniff")]
        mode = self.settings.sendfile
        if mode == "x-sendfile":
            return Response(200, [*headers, ("X-Sendfile", str(path)), ("Content-Length", "0")], [])
        if mode == "x-accel":
            target = f"{self.settings.accel_prefix}{name}"
            return Response(200, [*headers, ("X-Accel-Redirect", target), ("Content-Length", "0")], [])
        return self._file(path, MIME_TYPES[ext], environ, cache=f"private, max-age={max_age}")

    def small_file(self, pid: str, ext: str, environ: Environ) -> Response:
        record = self.storage.lookup(pid)
        if record is None or record.large or record.ext != ext:
            raise UploadError(404, "not_found", "No such picture.")
        if not isinstance(self.storage, LocalStorage):
            return Response(*s3_file(self.storage, self.storage.picture_key(pid, ext, large=False),
                                     MIME_TYPES[ext]))
        return self._file(self.storage.picture_path(record), MIME_TYPES[ext], environ)

    def medium(self, pid: str, ext: str, environ: Environ) -> Response:
        record = self.storage.lookup(pid)
        if record is None or record.ext != ext or not isinstance(self.storage, LocalStorage):
            raise UploadError(404, "not_found", "No such picture.")
        path = ensure_medium(self.storage, record, self.settings.medium_px)
        if path is None:
            raise UploadError(404, "not_found", "No such picture.")
        return self._file(path, MIME_TYPES[ext], environ)

    def thumbnail(self, pid: str, environ: Environ) -> Response:
        if self.storage.lookup(pid) is None:
            raise UploadError(404, "not_found", "No such picture.")
        if not isinstance(self.storage, LocalStorage):
            return Response(*s3_file(self.storage, self.storage.thumb_key(pid), "image/jpeg"))
        return self._file(self.storage.thumb_path(pid), "image/jpeg", environ)

    def static(self, name: str, ext: str, environ: Environ) -> Response:
        return self._file(STATIC_DIR / f"{name}.{ext}", STATIC_TYPES[ext], environ,
                          cache="public, max-age=3600")

    def _file(self, path: Path, ctype: str, environ: Environ,
              cache: str = "public, max-age=31536000, immutable") -> Response:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, OSError):
            raise UploadError(404, "not_found", "No such file.") from None
        f = os.fdopen(fd, "rb")
        size = os.fstat(fd).st_size
        wrapper = environ.get("wsgi.file_wrapper")
        body: Iterable[bytes] = wrapper(f, 65536) if wrapper else _iter_file(f)
        headers = [("Content-Type", ctype), ("Content-Length", str(size)), ("Cache-Control", cache),
                   ("X-Content-Type-Options", "nosniff")]
        return Response(200, headers, body)


def _iter_file(f: Any) -> Iterator[bytes]:
    with f:
        while chunk := f.read(65536):
            yield chunk


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if callable(close):
        close()


def _origin(environ: Environ) -> str:
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}"


def make_app(settings: Settings | None = None, *, id_source: IdSource = random_id,
             clock: Callable[[], float] = time.time) -> UploadApp:
    return UploadApp(settings or load_settings(), id_source=id_source, clock=clock)


_SETTINGS = load_settings()  # bad UPLOAD_* values fail at import, where the server reports them
_app: UploadApp | None = None


def _the_app() -> UploadApp:
    global _app
    if _app is None:
        _app = UploadApp(_SETTINGS)
    return _app


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point; storage is set up in the worker: by post_worker_init, or else
    on the first request."""
    return _the_app()(environ, start_response)


def post_worker_init(worker: object) -> None:
    """fcgiserver hook (``--hooks handlers.upload``): set storage up and recover what dead
    requests left as each worker starts, not at its first request."""
    _the_app()
