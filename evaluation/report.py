"""What evaluate.py and demo.py leave for a person to read: CSV tables, plots, and one self-contained HTML page.

``write_html(path, title, sections)`` writes a page whose images and videos are embedded as data URIs, so the
single file can be mailed or opened from anywhere.  A section is a heading plus any of: paragraphs, a table
(list of dicts), images and videos (paths).  Videos above ``EMBED_LIMIT_BYTES`` are linked relative to the page
instead of embedded.
"""
from __future__ import annotations

import base64
import csv
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EMBED_LIMIT_BYTES = 20 * 1024 * 1024
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4"}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img, figure video { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; color: #555; }
dt { font-weight: bold; } dd { margin: 0 0 0.5em 1.5em; }
"""


@dataclass
class Section:
    """One heading of a page and what goes under it, in this order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    definitions: dict[str, str] = field(default_factory=dict)
    table: list[dict] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)   # (caption, file)
    videos: list[tuple[str, Path]] = field(default_factory=list)   # (caption, file)


def format_value(value) -> str:
    """Table cell text: floats to 4 significant digits, missing values as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _data_uri(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _source(path: Path, page: Path, embed: bool) -> str:
    if embed:
        return _data_uri(path)
    return html.escape(Path(os.path.relpath(path, page.parent)).as_posix())


def _table_html(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{format_value(row.get(c))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section_html(section: Section, page: Path) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
    if section.definitions:
        parts.append("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                      for k, v in section.definitions.items()) + "</dl>")
    if section.table:
        parts.append(_table_html(section.table))
    for caption, path in section.images:
        parts.append(f'<figure><img src="{_source(Path(path), page, True)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for caption, path in section.videos:
        path = Path(path)
        embed = path.stat().st_size <= EMBED_LIMIT_BYTES
        parts.append(f'<figure><video controls loop muted playsinline preload="auto" width="512" '
                     f'src="{_source(path, page, embed)}"></video>'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(parts)


def write_html(path: str | Path, title: str, sections: list[Section], intro: str = "") -> Path:
    """Writes one HTML page (images and small videos embedded); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(_section_html(section, path) for section in sections)
    lead = f"<p>{html.escape(intro)}</p>" if intro else ""
    text = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>{lead}\n{body}\n</body></html>\n")
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV; the columns are the union of the rows' keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(path: Path, summary: dict, names: list[str]) -> bool:
    """One small panel per metric against T (log2 axis); metrics without a value are left out.  Returns whether
    anything was plotted."""
    shots = [int(s) for s in summary]
    names = [m for m in names if all(_finite(summary[str(s)].get(m)) for s in shots)]
    if not names:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(shots, [summary[str(s)][name] for s in shots], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.set_xlabel("T (shots)")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_scatter(path: Path, rows: list[dict], x: str, y: str, title: str) -> bool:
    """Scatter of two per-pair columns (e.g. identity against leakage), with the y = x line."""
    points = np.array([(r[x], r[y]) for r in rows if _finite(r.get(x)) and _finite(r.get(y))], np.float64)
    if not len(points):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(points[:, 0], points[:, 1], s=12)
    low, high = float(points.min()), float(points.max())
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_curves(path: Path, records: list[dict], names: list[str], title: str) -> bool:
    """Training curves from metrics.jsonl records ({"step": ..., name: value}); one line per available name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for name in names:
        steps = [r["step"] for r in records if _finite(r.get(name))]
        if steps:
            ax.plot(steps, [r[name] for r in records if _finite(r.get(name))], label=name)
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
