"""The reward-hacking report page: ``templates/report.html`` (shipped with the package) filled with
:class:`string.Template`; the findings, the table, the crops and the list of unavailable metrics are
rendered here as HTML fragments, every text in them escaped."""

from __future__ import annotations

import html
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from .stats import cell
from .table import Column, seeds_note, values

TEMPLATE = "report.html"
Crops = Sequence[Sequence[tuple[str, str, str | None]]]
"""Per shown pair, per column: (title, image file, heatmap file or None), files relative to the page."""


def read_template(name: str = TEMPLATE) -> string.Template:
    """A template of the ``templates`` folder of this package."""
    return string.Template((resources.files(__package__) / "templates" / name).read_text(encoding="utf-8"))


def seed_text(seeds: Sequence[int]) -> str:
    """``seed 0``, or ``RL seeds 0 … 2 (3 runs)``."""
    if len(seeds) > 1:
        return f"RL seeds {seeds[0]} … {seeds[-1]} ({len(seeds)} runs)"
    return f"seed {seeds[0]}"


def html_table(data: Mapping[str, Any]) -> str:
    cols: list[Column] = data["columns"]
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = []
    for r in data["rows"]:
        cells = "".join(f"<td>{html.escape(cell(values(r, c.key), c.decimals))}</td>" for c in cols)
        body.append(f"<tr><th>{html.escape(r['label'])}</th>{cells}</tr>")
    note = f"<p>{html.escape(seeds_note(data))}</p>" if seeds_note(data) else ""
    return f"<table><tr><th>method</th>{head}</tr>{''.join(body)}</table>{note}"


def html_findings(found: Sequence[Mapping[str, Any]]) -> str:
    verdict = {True: "reproduced", False: "not reproduced", None: "not stated (within the spread)"}
    return "".join(
        f"<li><b>{html.escape(x['finding'])}</b>"
        f"{' — ' + verdict[x['reproduced']] if x['finding'] != 'note' else ''}: "
        f"{html.escape(x['text'])}</li>"
        for x in found
    )


def html_crops(shown: Crops) -> str:
    grids = []
    for cells in shown:
        tds = "".join(
            f"<td><div class='t'>{html.escape(t)}</div><img src='{html.escape(img)}'>"
            + (f"<br><img src='{html.escape(h)}'>" if h else "")
            + "</td>"
            for t, img, h in cells
        )
        grids.append(f"<table class='crops'><tr>{tds}</tr></table>")
    return "".join(grids)


def html_unavailable(unavailable: Mapping[str, str]) -> str:
    return "".join(
        f"<li>{html.escape(k)}: unavailable: {html.escape(v)}</li>" for k, v in unavailable.items()
    )


def html_page(
    setup: Mapping[str, Any], data: Mapping[str, Any], found: Sequence[Mapping[str, Any]], shown: Crops
) -> str:
    """The report page. ``setup`` holds the template's plain values (``title`` and what was run: see
    ``templates/report.html``), escaped here; ``data`` is what :func:`~.collect.collect` gathered."""
    return read_template().substitute(
        {k: html.escape(str(v)) for k, v in setup.items()},
        n_stage=data["n_stage"],
        findings=html_findings(found),
        table=html_table(data),
        unavailable=html_unavailable(data["unavailable"]),
        crops=html_crops(shown),
    )


__all__ = ["TEMPLATE", "html_page", "html_table", "read_template", "seed_text"]
