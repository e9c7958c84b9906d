"""A recipe report's sections, as each stage builds its own (its ``report`` hook), and their rendering as
markdown and as a self-contained HTML page. Each section names the command that reproduces it."""

from __future__ import annotations

import base64
import dataclasses
import html
import json

from lmforge import storage


@dataclasses.dataclass
class Section:
    title: str
    command: str | None = None  # what reproduces it
    lines: list[str] = dataclasses.field(default_factory=list)  # prose, one paragraph each
    tables: list[tuple[list[str], list[list]]] = dataclasses.field(default_factory=list)  # (header, rows)
    images: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)  # (caption, PNG)


def absent(title: str, stage: str, hint: str = "") -> Section:
    """The section of a stage the recipe did not run: a line saying so, not an empty table."""
    return Section(title, None, [f"`{stage}` is not in this recipe{hint}."])


def read(output: str | None, name: str) -> bytes | None:
    """One file of a stage output (local or remote), or None."""
    return storage.read_bytes(storage.join(output, name)) if output else None


def read_json(output: str | None, name: str) -> dict | None:
    raw = read(output, name)
    return json.loads(raw) if raw else None


def rerun(stage: str, output: str) -> str:
    """The command that reproduces a stage output (every output holds the resolved config it ran with)."""
    return f"lmforge {stage} {storage.join(output, 'config.yaml')} force=true"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def render_md(sections: list[Section], title: str = "lmforge run report") -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.command:
            out += [f"Reproduce: `{s.command}`", ""]
        out += [line + "\n" for line in s.lines]
        for header, rows in s.tables:
            out += [*md_table(header, rows), ""]
        for caption, _ in s.images:
            out += [f"({caption}: in report.html)", ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f2f2f2}code{background:#f4f4f4;padding:.1em .3em}img{max-width:100%}
.cmd{color:#555;font-size:.9em}figure{margin:.8em 0}figcaption{color:#555;font-size:.9em}"""

# Marks the page once every image has decoded, so a headless browser can tell (data-images-loaded).
SCRIPT = """window.addEventListener('load',function(){var imgs=[].slice.call(document.images);
document.body.dataset.imagesLoaded=String(imgs.every(function(i){return i.complete&&i.naturalWidth>0}));
document.body.dataset.images=String(imgs.length);});"""


def render_html(sections: list[Section], output: str) -> str:
    e = html.escape
    body = [f"<h1>lmforge run report</h1><p class='cmd'>{e(output)}</p>"]
    for s in sections:
        body.append(f"<section id='{e(s.title.lower().replace(' ', '-'))}'><h2>{e(s.title)}</h2>")
        if s.command:
            body.append(f"<p class='cmd'>Reproduce: <code>{e(s.command)}</code></p>")
        body += [f"<p>{e(line)}</p>" for line in s.lines]
        for header, rows in s.tables:
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            body.append("</table>")
        for caption, png in s.images:
            data = base64.b64encode(png).decode()
            body.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                        f"<figcaption>{e(caption)}</figcaption></figure>")
        body.append("</section>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lmforge run report</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>{''.join(body)}</body></html>\n")
