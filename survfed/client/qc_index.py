"""``index.html`` of an export folder: every patient of a preprocessing run on one page.

``survfed preprocess --export DIR`` writes per patient a quality-control picture
(``<id>_qc.png``, :mod:`survfed.common.imaging.preprocess.qc_figure`). With a hundred patients a
person needs to know which pictures to look at first, so the page lists the patients that
failed first (with the reason), then those with warnings, then the rest, each with its lung
volume and its picture (shown small, a link to the full size); below them, the site's problems
found before preprocessing (files, series and patients the catalogue left out, repairs). It is
a plain HTML file with no script and no outside resource, readable offline in any browser; it
stays in the export folder at the site like the pictures.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from survfed.common.imaging.preprocess.export import export_stem

if TYPE_CHECKING:
    from survfed.client.clinical import Problem
    from survfed.client.preprocess_cache import PatientOutcome, SitePreprocessResult

__all__ = ["INDEX_FILE", "write_qc_index"]

INDEX_FILE = "index.html"
"""Name of the page in the export folder."""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.4em; vertical-align: top; text-align: left; }
.failed { background: #fde0dd; } .warned { background: #fff3d6; }
img { width: 480px; }
"""


def _order(outcome: PatientOutcome) -> tuple[int, str]:
    """Failed first, then patients with warnings, then the rest; by patient ID within each."""
    rank = 0 if outcome.status == "failed" else 1 if outcome.warnings else 2
    return rank, outcome.patient_id


def _row(outcome: PatientOutcome, folder: Path) -> str:
    kind = "failed" if outcome.status == "failed" else "warned" if outcome.warnings else "ok"
    notes = [outcome.reason] if outcome.status == "failed" else list(outcome.warnings)
    volume = "" if outcome.lung_volume_ml is None else f"{outcome.lung_volume_ml / 1000:.2f}"
    picture = f"{export_stem(outcome.patient_id)}_qc.png"
    image = (
        f'<a href="{html.escape(picture)}"><img src="{html.escape(picture)}" '
        f'alt="QC picture of {html.escape(outcome.patient_id)}"></a>'
        if (folder / picture).is_file()
        else ""
    )
    cells = [
        html.escape(outcome.patient_id),
        html.escape(outcome.status),
        volume,
        "<br>".join(html.escape(n) for n in notes),
        html.escape(outcome.where),
        image,
    ]
    return f'<tr class="{kind}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _problem_rows(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return []
    rows = [
        f'<tr class="{"failed" if p.severity == "error" else "warned"}">'
        + "".join(
            f"<td>{html.escape(v)}</td>"
            for v in (p.severity, p.patient_id or "-", p.path, p.reason)
        )
        + "</tr>"
        for p in sorted(problems, key=lambda p: (p.severity != "error", p.patient_id or ""))
    ]
    return [
        f"<h2>Site problems found before preprocessing ({len(problems)})</h2>",
        "<table><tr><th>severity</th><th>patient</th><th>file</th><th>reason</th></tr>",
        *rows,
        "</table>",
    ]


def write_qc_index(result: SitePreprocessResult, problems: Sequence[Problem] = ()) -> Path:
    """Write ``index.html`` into ``result.export_dir`` (written to a temporary name, renamed).

    Args:
        result: a :func:`~survfed.client.preprocess_cache.preprocess_site` result with an
            ``export_dir``.
        problems: the site catalogue's problems (listed after the patients).

    Returns:
        The page's path.

    Raises:
        ValueError: ``result`` has no export folder.
    """
    if result.export_dir is None:
        raise ValueError("result has no export_dir: run preprocess_site with export_dir")
    folder = Path(result.export_dir)
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = sorted(result.outcomes, key=_order)
    n_warned = sum(1 for o in outcomes if o.status != "failed" and o.warnings)
    title = f"survfed preprocess: {Path(result.site_dir).name}"
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(outcomes)} usable patients: {result.n_ok} preprocessed "
        f"({result.n_reused} from the cache), {result.n_failed} failed, {n_warned} with "
        f"warnings. Settings {html.escape(result.fingerprint)}, device "
        f"{html.escape(result.device)}. Failed patients first, then those with warnings; "
        "red: right lung, blue: left lung, yellow: final mask.</p>",
        "<table><tr><th>patient</th><th>status</th><th>lungs (L)</th>"
        "<th>reason or warnings</th><th>series folder</th><th>QC picture</th></tr>",
        *(_row(o, folder) for o in outcomes),
        "</table>",
        *_problem_rows(problems),
        "</body></html>",
        "",
    ]
    path = folder / INDEX_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
