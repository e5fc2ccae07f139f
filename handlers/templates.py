"""HTML pages. Every value from outside goes through esc(); nothing else builds markup.

No inline script or style anywhere (the CSP forbids both): behaviour lives in
static/upload.js, looks in static/upload.css, and every page works without the script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from handlers.share import Code

_site = ["Picturebox"]
# Share codes shown at once; the others sit behind "More codes".
MAIN_CODES = ("page", "direct", "html", "bbcode", "markdown")


def configure(site_name: str) -> None:
    """The brand every page shows (UPLOAD_SITE_NAME), set once per process."""
    _site[0] = site_name


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
    medium_url: str = ""
    original_url: str = ""
    codes: list[Code] = field(default_factory=list)


def layout(title: str, body: str, *, page_class: str = "") -> str:
    site = esc(_site[0])
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{esc(title)} - {site}</title>
<link rel="stylesheet" href="/static/upload.css">
<script src="/static/upload.js" defer></script>
</head>
<body class="{esc(page_class)}">
<header class="top"><a class="brand" href="/"><span class="logo" aria-hidden="true"></span>{site}</a>
<a class="top-action" href="/">Upload</a></header>
<main>
{body}
</main>
<footer class="foot">{site} &middot; location and camera data are removed from every picture</footer>
</body>
</html>
"""


def upload_page(max_bytes: int, max_files: int) -> str:
    mb = max_bytes / (1024 * 1024)
    body = f"""<section class="hero">
<h1>Share a picture in one click</h1>
<p class="lede">Drop, paste or pick pictures. You get a link, embed codes and a delete key at once.</p>
</section>
<form id="upload-form" class="card uploader" action="/upload" method="post" enctype="multipart/form-data"
      data-max-bytes="{max_bytes}" data-max-files="{max_files}">
  <label class="drop" id="drop">
    <span class="drop-icon" aria-hidden="true"></span>
    <span class="drop-title">Drop pictures here</span>
    <span class="drop-or">or <span class="pick">choose files</span>
      <span class="paste-hint">&middot; paste with Ctrl+V</span></span>
    <input type="file" name="file" multiple required class="file"
           accept="image/jpeg,image/png,image/gif,image/webp,image/heic,image/heif,image/avif,.heic,.heif,.avif">
  </label>
  <p class="hint">JPEG, PNG, GIF, WebP, HEIC or AVIF; up to {mb:g} MB each, {max_files} at once.
  Location and camera data are removed.</p>
  <button type="submit">Upload</button>
</form>
<ul id="results" class="results" aria-live="polite"></ul>"""
    return layout("Upload", body, page_class="home")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def copy_row(field_id: str, label: str, value: str) -> str:
    """A labelled read-only field and its copy button (shown by the script; without it the
    field's text is selected on focus by the browser and copied by hand)."""
    return (
        f'<div class="code"><label for="{esc(field_id)}">{esc(label)}</label>'
        f'<input id="{esc(field_id)}" type="text" readonly value="{esc(value)}">'
        f'<button type="button" class="copy-btn" data-copy="{esc(field_id)}" hidden>Copy</button></div>'
    )


def _share_box(view: PictureView) -> str:
    main = [c for c in view.codes if c.key in MAIN_CODES]
    more = [c for c in view.codes if c.key not in MAIN_CODES]
    rows = "".join(copy_row(f"{view.id}-{c.key}", c.label, c.text) for c in main)
    extra = "".join(copy_row(f"{view.id}-{c.key}", c.label, c.text) for c in more)
    return f"""<div class="share">
<h2 class="share-title">Share</h2>
{rows}
<details class="more"><summary>More codes: full size, thumbnails</summary>{extra}</details>
</div>"""


def _delete_box(view: PictureView, origin: str) -> str:
    if not view.delete_token:
        return ""
    link = f"{view.delete_url}?key={view.delete_token}"
    return f"""<div class="keybox">
<h2 class="share-title">Delete key</h2>
<p class="hint">Keep this key or link to delete the picture later, from any device.</p>
{copy_row(f"{view.id}-key", "Key", view.delete_token)}
{copy_row(f"{view.id}-delete-link", "Link", origin + link)}
<form class="delete" action="{esc(view.delete_url)}" method="get">
  <input type="hidden" name="key" value="{esc(view.delete_token)}">
  <button type="submit" class="danger">Delete this picture&hellip;</button>
</form>
</div>"""


def picture_section(view: PictureView, origin: str) -> str:
    medium = view.medium_url or view.url
    # A large picture's file link is signed and expires; the Original link (/o/<id>) never does.
    scaled = ""
    if medium != view.url:
        scaled = '<p class="hint">Shown reduced; Original opens the full-size picture.</p>\n'

    return f"""<section class="picture" id="p-{esc(view.id)}">
<figure class="frame">
<a href="{esc(view.original_url or view.url)}"><img class="full" src="{esc(medium)}"
   width="{view.width}" height="{view.height}" alt="Picture {esc(view.id)}"></a>
<figcaption class="meta"><a href="{esc(view.page_url)}">{esc(view.id)}</a> &middot; {esc(view.format)},
  {view.width} &times; {view.height}, {esc(_human(view.size))} &middot;
  <a href="{esc(view.original_url or view.url)}">Original</a>
  <img class="thumb" src="{esc(view.thumbnail_url)}" alt=""></figcaption>
{scaled}</figure>
<aside class="side">
{_share_box(view)}
{_delete_box(view, origin)}
</aside>
</section>"""


def picture_page(views: list[PictureView], origin: str) -> str:
    title = views[0].id if len(views) == 1 else f"{len(views)} pictures"
    return layout(title, "\n".join(picture_section(v, origin) for v in views), page_class="pictures")


def confirm_delete_page(pid: str, thumbnail_url: str, thumb_size: tuple[int, int], key: str) -> str:
    body = f"""<section class="card narrow">
<h1>Delete picture {esc(pid)}?</h1>
<img class="confirm-thumb" src="{esc(thumbnail_url)}" width="{thumb_size[0]}" height="{thumb_size[1]}" alt="">
<form class="delete-confirm" action="/{esc(pid)}/delete" method="post">
  <label for="token">Delete key</label>
  <input id="token" name="token" type="text" required autocomplete="off" spellcheck="false"
         value="{esc(key)}" placeholder="Paste the key you got with the upload">
  <p class="hint">This cannot be undone: the picture, its page and every link to it stop working.</p>
  <div class="actions"><button type="submit" class="danger">Delete for good</button>
  <a class="button ghost" href="/{esc(pid)}">Keep it</a></div>
</form>
</section>"""
    return layout(f"Delete {pid}", body)


def message_page(status: int, title: str, message: str) -> str:
    body = f"""<section class="card narrow">
<h1>{esc(title)}</h1>
<p class="message">{esc(message)}</p>
<p><a class="button" href="/">Upload a picture</a></p>
</section>"""
    return layout(f"{status} {title}", body)


def deleted_page(pid: str) -> str:
    body = f"""<section class="card narrow">
<h1>Deleted</h1>
<p class="message">Picture {esc(pid)} is gone.</p>
<p><a class="button" href="/">Upload another</a></p>
</section>"""
    return layout("Deleted", body)
