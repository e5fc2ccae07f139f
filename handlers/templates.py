"""HTML pages. Every value from outside goes through esc(); nothing else builds markup."""

from __future__ import annotations

import time
from dataclasses import dataclass
from html import escape

SITE = "Pictures"


def esc(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class PictureView:
    id: str
    url: str
    thumbnail_url: str
    page_url: str
    delete_url: str
    width: int
    height: int
    size: int
    format: str
    large: bool
    expires: int | None
    delete_token: str | None


def layout(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} - {SITE}</title>
<link rel="stylesheet" href="/static/upload.css">
<script src="/static/upload.js" defer></script>
</head>
<body>
<header><a class="home" href="/">{SITE}</a></header>
<main>
{body}
</main>
</body>
</html>
"""


def upload_page(max_bytes: int, max_files: int) -> str:
    mb = max_bytes / (1024 * 1024)
    body = f"""<h1>Upload pictures</h1>
<form id="upload-form" action="/upload" method="post" enctype="multipart/form-data">
  <label class="drop" id="drop">
    <span>Choose pictures or drop them here</span>
    <input type="file" name="file" multiple required
           accept="image/jpeg,image/png,image/gif,image/webp">
  </label>
  <p class="hint">JPEG, PNG, GIF or WebP; up to {mb:g} MB each, {max_files} at once.
  Location and camera data are removed.</p>
  <button type="submit">Upload</button>
</form>
<ul id="results" class="results" aria-live="polite"></ul>"""
    return layout("Upload", body)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def _copy_field(label: str, value: str) -> str:
    return (
        f'<label class="copy">{esc(label)}'
        f'<input type="text" readonly value="{esc(value)}"></label>'
    )


def picture_section(view: PictureView, origin: str) -> str:
    direct = origin + view.url
    page = origin + view.page_url
    thumb = origin + view.thumbnail_url
    links = [_copy_field("Page", page), _copy_field("Picture", direct)]
    if not view.large:
        links.append(_copy_field("HTML", f'<a href="{page}"><img src="{thumb}" alt=""></a>'))
        links.append(_copy_field("BBCode", f"[url={page}][img]{thumb}[/img][/url]"))
    expiry = ""
    if view.large and view.expires:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(view.expires))
        expiry = f'<p class="hint">Large picture: this link works until {esc(when)}.</p>'
    delete = ""
    if view.delete_token:
        delete = f"""<form class="delete" action="{esc(view.delete_url)}" method="post">
  <input type="hidden" name="token" value="{esc(view.delete_token)}">
  <p class="hint">Delete key (keep it to delete this picture later):
  <code>{esc(view.delete_token)}</code></p>
  <button type="submit">Delete this picture</button>
</form>"""
    return f"""<section class="picture" id="p-{esc(view.id)}">
<h2><a href="{esc(view.page_url)}">{esc(view.id)}</a></h2>
<a href="{esc(view.url)}"><img class="full" src="{esc(view.url)}" width="{view.width}"
   height="{view.height}" alt="Picture {esc(view.id)}"></a>
<p class="meta">{esc(view.format)}, {view.width} x {view.height}, {esc(_human(view.size))}
  <a href="{esc(view.thumbnail_url)}"><img class="thumb" src="{esc(view.thumbnail_url)}" alt=""></a></p>
{expiry}
<div class="links">{"".join(links)}</div>
{delete}
</section>"""


def picture_page(views: list[PictureView], origin: str) -> str:
    title = views[0].id if len(views) == 1 else f"{len(views)} pictures"
    return layout(title, "\n".join(picture_section(v, origin) for v in views))


def message_page(status: int, title: str, message: str) -> str:
    body = f"""<h1>{esc(title)}</h1>
<p class="message">{esc(message)}</p>
<p><a href="/">Upload a picture</a></p>"""
    return layout(f"{status} {title}", body)


def deleted_page(pid: str) -> str:
    body = f'<h1>Deleted</h1>\n<p>Picture {esc(pid)} is gone.</p>\n<p><a href="/">Upload another</a></p>'
    return layout("Deleted", body)
