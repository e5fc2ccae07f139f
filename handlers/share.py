"""Share codes of one picture: the same list on its page, in the upload results and in the JSON API.

Embeds point at public files only (the medium rendition, the thumbnail, the stable original
link /o/<id>), never at a signed link that dies within the hour.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Links:
    """Absolute URLs of one picture."""

    page: str
    medium: str
    original: str  # stable: /o/<id> redirects to the file (or a freshly signed link)
    thumbnail: str


@dataclass(frozen=True)
class Code:
    key: str
    label: str
    text: str


def share_codes(links: Links, alt: str) -> list[Code]:
    page, medium, full, thumb = links.page, links.medium, links.original, links.thumbnail
    return [
        Code("page", "Page link", page),
        Code("direct", "Direct link", medium),
        Code("original", "Original", full),
        Code("html", "HTML", f'<a href="{page}"><img src="{medium}" alt="{alt}"></a>'),
        Code("html_thumb", "HTML thumbnail", f'<a href="{page}"><img src="{thumb}" alt="{alt}"></a>'),
        Code("bbcode", "BBCode", f"[url={page}][img]{medium}[/img][/url]"),
        Code("bbcode_full", "BBCode full size", f"[img]{full}[/img]"),
        Code("bbcode_thumb", "BBCode thumbnail", f"[url={page}][img]{thumb}[/img][/url]"),
        Code("markdown", "Markdown", f"[![{alt}]({medium})]({page})"),
        Code("markdown_full", "Markdown full size", f"![{alt}]({full})"),
        Code("markdown_thumb", "Markdown thumbnail", f"[![{alt}]({thumb})]({page})"),
    ]


def as_json(codes: list[Code]) -> dict[str, str]:
    return {c.key: c.text for c in codes}
