"""A tiny document model: headings, paragraphs, tables, lists, code and images, rendered to Markdown and to HTML.

Takes: blocks appended in reading order (`Doc.h`, `.p`, `.table`, `.ul`, `.code`, `.image`); text may use the inline
Markdown the report writes (`code`, **bold**).
Gives: `Doc.markdown()` and `Doc.html(title)` (one self-contained page: style inline, SVG images embedded).
"""

from __future__ import annotations

import html
import re


class Doc:
    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]):
        self.blocks.append(("table", header, rows))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def image(self, path: str, alt: str, svg_text: str | None):
        self.blocks.append(("image", path, alt, svg_text))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "code":
                out += ["```", block[1], "```", ""]
            elif kind == "image":
                out += [f"![{block[2]}]({block[1]})", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(block[1])}</pre>")
            elif kind == "image":
                svg = block[3]
                body.append(f"<figure>{svg}<figcaption>{html.escape(block[2])}</figcaption></figure>" if svg
                            else f"<p><em>{html.escape(block[2])}: {html.escape(block[1])}</em></p>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;"
                 "text-align:left;vertical-align:top;font-size:.9em}th{background:#f3f3f3}code,pre{background:#f6f6f6}"
                 "pre{padding:.5em;white-space:pre-wrap}figure{display:inline-block;margin:0 1em 1em 0}"
                 "svg{max-width:520px;height:auto}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """The Markdown this report uses inline (`code`, **bold**) as HTML; everything else escaped."""
    parts = _CODE.split(str(text))
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            out.append(_BOLD.sub(r"<strong>\1</strong>", html.escape(part).replace("\n", "<br>")))
    return "".join(out)

