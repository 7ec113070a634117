"""The study report: one self-contained HTML page (plotly.js embedded once) plus the numbers as CSV/JSON.

``build_report(url, study, outdir)`` loads a study from storage; ``build_report_from_data(data, outdir)``
does the work on a ``StudyData`` value. A partial study gives a report that says how complete it is; a
study without finished trials, with fixed parameters or with a single variant gives a reduced report.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from analysis import figures
from analysis.api import POOLED, StudyAnalysis, StudyDataLike
from storage.errors import OdysseyError

DIVERGED_RULE = (
    "A finished trial whose score is missing or infinite, or a diverged trial whose score is worse than the "
    "worst finite score of the study's completed trials, is capped at that worst score."
)
CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
p.guide{color:#555;font-style:italic;margin:.3em 0 .8em}
p.note{background:#fff6d5;border-left:4px solid #e0b000;padding:.4em .8em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right;white-space:nowrap} th{background:#f3f3f3}
table.setup td{text-align:left;white-space:normal}
td:first-child,th:first-child{text-align:left} nav a{margin-right:1em}
"""


# Every file a report writes (report.html and summary.json are always rewritten).
OUTPUT_FILES = ("variant_stats.csv", "main_effects.csv", "interactions.csv", "marginals.csv", "heatmap.csv",
                "curves.csv")

# How the box plot's title names the target column.
TARGET_LABELS = {"best_test": "Test", "best_valid": "Validation", "final_test": "Final test",
                 "final_valid": "Final validation", "seconds": "Training"}


def build_report(
    url: str | None,
    study: str,
    outdir: str | Path,
    *,
    target: str = "best_test",
    seed: int = 0,
    n_trees: int = 64,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Load ``study`` from the storage at ``url`` and write its report into ``outdir``; returns the path
    of ``report.html``. Options as :func:`build_report_from_data`."""
    from storage.results import load_study

    if progress:
        progress(f"loading study {study!r}")
    data = load_study(url, study)
    return build_report_from_data(
        data, outdir, target=target, seed=seed, n_trees=n_trees, jobs=jobs, progress=progress
    )


def build_report_from_data(
    data: StudyDataLike,
    outdir: str | Path,
    *,
    target: str = "best_test",
    seed: int = 0,
    n_trees: int = 64,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``report.html`` and the numbers (``variant_stats.csv``, ``main_effects.csv``,
    ``interactions.csv``, ``marginals.csv``, ``heatmap.csv``, ``curves.csv``, ``summary.json``) into
    ``outdir``; returns the HTML path. ``target`` is the trial column analysed, ``seed`` and ``n_trees``
    configure the fANOVA forests, ``jobs`` how many are fitted at once (default: one per CPU), and
    ``progress`` receives a line before each slow step."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OdysseyError(f"cannot create report directory {outdir}: {exc.strerror or exc}") from None
    analysis = StudyAnalysis(data, target, seed=seed, n_trees=n_trees, progress=progress)
    report = _Report(analysis, outdir, jobs or os.cpu_count() or 1)
    return report.write()


class _Report:
    """Collects the report's sections and files while the analysis runs."""

    def __init__(self, analysis: StudyAnalysis, outdir: Path, jobs: int) -> None:
        self.a = analysis
        self.outdir = outdir
        self.jobs = jobs
        self.sections: list[str] = []
        self.summary: dict = {}
        self.started = time.perf_counter()

    def log(self, msg: str) -> None:
        self.a.progress(msg)

    # ------------------------------------------------------------------------------------- output
    def write(self) -> Path:
        a = self.a
        name = a.name
        # A reduced report writes fewer files: numbers left from an earlier run in this folder would
        # otherwise sit beside a report they do not belong to.
        for stale in OUTPUT_FILES:
            (self.outdir / stale).unlink(missing_ok=True)
        try:
            scored = a.scored
            problem = None if len(scored) else "no finished trials yet; nothing to analyse"
        except OdysseyError as exc:
            problem = str(exc)
        self.summary = {
            "study": name, "dataset": (a.spec.get("dataset") or {}).get("name"), "target": a.target,
            "metric": a.metric, "direction": a.direction, "design": a.design,
            "variants": a.variants, "fixed": a.space.fixed, "diverged_rule": DIVERGED_RULE,
        }  # fmt: skip
        self._setup(problem)
        if problem is None:
            self._analyse()
        else:
            self.sections.append(f'<p class="note" id="nothing">{html.escape(problem)}</p>')
        if a.notes:
            items = "".join(f"<li>{html.escape(n)}</li>" for n in a.notes)
            self.sections.append(f'<section id="notes"><h2>Notes</h2><ul>{items}</ul></section>')
        self.summary["notes"] = a.notes
        self._write_json("summary.json", self.summary)
        path = self.outdir / "report.html"
        self.log("writing report.html")
        _atomic_write(path, self._page(name))
        return path

    def _csv(self, filename: str, frame: pd.DataFrame) -> None:
        _atomic_write(self.outdir / filename, frame.to_csv(index=False))

    def _write_json(self, filename: str, obj: dict) -> None:
        _atomic_write(self.outdir / filename, json.dumps(_jsonable(obj), indent=1))

    def _figure(self, key: str, title: str, fig: go.Figure | dict) -> None:
        # plotly.js itself is written once in <head>; figures only carry their data.
        div = pio.to_html(
            fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{key}", validate=False,
            config={"displaylogo": False, "responsive": True},
        )  # fmt: skip
        guide = html.escape(figures.GUIDES[key])
        self.sections.append(
            f'<section id="{key}"><h2>{html.escape(title)}</h2><p class="guide">{guide}</p>{div}</section>'
        )

    def _note(self, key: str, title: str, text: str) -> None:
        body = f'<h2>{html.escape(title)}</h2><p class="note">{html.escape(text)}</p>'
        self.sections.append(f'<section id="{key}">{body}</section>')

    def _page(self, name: str) -> str:
        nav = " ".join(
            f'<a href="#{k}">{t}</a>'
            for k, t in (("setup", "Setup"), ("variants", "Variants"), ("marginals", "Marginals"),
                         ("variance", "Variance"), ("heatmap", "Heatmaps"), ("curves", "Curves"))
        )  # fmt: skip
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>lstm-odyssey report: {html.escape(name)}</title><style>{CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<h1>Study {html.escape(name)}</h1><nav>{nav}</nav>\n"
            + "\n".join(self.sections)
            + "</body></html>"
        )

    # ------------------------------------------------------------------------------------ sections
    def _setup(self, problem: str | None) -> None:
        a = self.a
        done = a.completeness()
        done["capped"] = int(a.scored["capped"].sum()) if problem is None else 0
        self.summary["completeness"] = done
        pct = f"{done['fraction']:.0%}"
        status = (
            f"{done['finished']} of {done['planned']} planned trials finished ({pct}); "
            f"{done['running']} running, {done['waiting']} not started, {done['failed']} failed."
        )
        if done["finished"] < done["planned"]:
            status += " The study is incomplete: results may still change."
        spec = a.spec
        dataset = spec.get("dataset") or {}
        setup = {
            "dataset": ", ".join(f"{k}={v}" for k, v in dataset.items()) or "?",
            "metric (target)": f"{a.metric} ({a.target}, {a.direction})",
            "design": f"{a.design}, seed {spec.get('seed', '?')}",
            "variants": ", ".join(a.variants) or "none",
            "baseline": a.baseline,
            "trials per variant": spec.get("trials_per_variant", "?"),
            "training": ", ".join(f"{k}={v}" for k, v in (spec.get("training") or {}).items()) or "?",
        }
        setup.update(_time_spent(a.trials))
        setup["diverged rule"] = f"{DIVERGED_RULE} Capped here: {done['capped']} trial(s)."
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in setup.items()
        )
        space = pd.DataFrame(
            [
                {"parameter": n, "type": p.type, "scale": p.scale, "range": f"[{p.low:g}, {p.high:g}]",
                 "sampled as": p.axis_label, "sampled bounds": "[{:.3g}, {:.3g}]".format(*p.bounds)}
                for n, p in a.space.params.items()
            ]
            + [{"parameter": n, "type": "fixed", "scale": "", "range": str(v), "sampled as": "(not analysed)",
                "sampled bounds": ""} for n, v in a.space.fixed.items()]
        )  # fmt: skip
        counts = a.counts()
        self.summary["counts"] = counts.reset_index(names="variant").to_dict("records")
        fixed = html.escape(", ".join(a.space.fixed))
        fixed_note = f'<p class="note">Held fixed, so left out of the analysis: {fixed}.</p>' if fixed else ""
        self.sections.append(
            f'<section id="setup"><h2>Setup</h2><p class="note" id="completeness">{html.escape(status)}</p>'
            f'<table class="setup">{rows}</table>'
            f"<h3>Search space</h3>{space.to_html(index=False)}{fixed_note}"
            f"<h3>Trials by state</h3>{counts.to_html()}</section>"
        )

    def _analyse(self) -> None:
        a = self.a
        self.log("variant statistics")
        stats = a.stats()
        self._csv("variant_stats.csv", stats)
        self.summary["variant_stats"] = stats.to_dict("records")
        self.summary["baseline"] = a.baseline
        what = TARGET_LABELS.get(a.target, a.target)
        box = figures.variant_box_figure(
            a.top_trials(), stats, a.baseline, a.metric, a.top_fraction, a.direction, what
        )
        self._figure("variants", "Variants against the baseline", box)
        self.sections.append(_stats_table(stats, len(a.variants) > 1))
        colors = figures.variant_colors(a.variants)
        scopes = a.scopes
        if scopes:
            self._fanova_sections(scopes)
        else:
            held = not a.space.params
            why = "Every hyperparameter was held fixed: there is nothing to decompose." if held else (
                "Too few finished trials for fANOVA yet."
            )  # fmt: skip
            for key, title in (("marginals", "Marginals"), ("variance", "Variance decomposition"),
                               ("heatmap", "Heatmaps")):  # fmt: skip
                self._note(key, title, why)
        curves = a.curves()
        self._csv("curves.csv", curves)
        if curves.empty:
            self._note("curves", "Validation curves", "No epoch records stored for this study.")
        else:
            self.log("validation curves")
            self._figure("curves", "Validation curves", figures.curves_figure(curves, colors, a.metric))
        self.summary["seconds"] = round(time.perf_counter() - self.started, 2)

    def _fanova_sections(self, scopes: list[str]) -> None:
        a = self.a
        a.fit_all(jobs=self.jobs)
        main = a.main_effects()
        pairs = a.interactions()
        higher = a.higher_order()
        self._csv("main_effects.csv", main)
        self._csv("interactions.csv", pairs)
        self.summary["main_effects"] = main.to_dict("records")
        self.summary["interactions"] = pairs.to_dict("records")
        self.summary["higher_order"] = higher.to_dict()
        fitted = [s for s in scopes if s in set(main["scope"])]
        self.log("marginals")
        marg = a.marginals()
        self._csv("marginals.csv", marg)
        menu = [POOLED, *[s for s in fitted if s != POOLED]] if POOLED in fitted else fitted
        if fitted and marg.empty:
            self._note("marginals", "Marginal performance and training time",
                       "No hyperparameter varies within the fitted trials (only the variant does).")
        elif fitted:
            self._figure("marginals", "Marginal performance and training time",
                         figures.marginals_figure(marg, a.space, a.metric, menu))  # fmt: skip
            self._figure(
                "variance", "Variance decomposition", figures.variance_figure(main, pairs, higher, fitted)
            )
        else:
            text = "fANOVA could not be fitted: " + "; ".join(a.notes)
            self._note("marginals", "Marginals", text)
            self._note("variance", "Variance decomposition", text)
        pair, scope = a.heatmap_pair(), a.main_scope
        if pair is None or scope is None:
            self._note("heatmap", "Heatmaps", "Fewer than two varied hyperparameters: no joint heatmap.")
            return
        self.log(f"heatmap {pair[0]} x {pair[1]} ({scope})")
        grid = a.marginal_2d(*pair, scope=scope)
        self._csv("heatmap.csv", grid)
        self.summary["heatmap_pair"] = list(pair)
        self._figure(
            "heatmap", f"{pair[0]} x {pair[1]}", figures.heatmap_figure(grid, *pair, a.space, a.metric, scope)
        )


def _stats_table(stats: pd.DataFrame, several: bool) -> str:
    shown = stats[["variant", "n_trials", "n_diverged", "n_capped", "n_params", "best", "median", "top_n",
                   "top_mean", "top_std", "welch_p", "significant", "paired_n", "paired_p"]]  # fmt: skip
    if not several:
        shown = shown.drop(columns=["welch_p", "significant", "paired_n", "paired_p"])
    elif not (stats["paired_n"] > 0).any():
        shown = shown.drop(columns=["paired_n", "paired_p"])
    formats = {"n_params": _fmt(",.0f"), "welch_p": _fmt(".2g"), "paired_p": _fmt(".2g")}
    body = shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", formatters=formats, na_rep="")
    note = "" if several else '<p class="note">Only one variant: no significance test.</p>'
    return f'<div id="variant-table">{body}{note}</div>'


def _fmt(spec: str) -> Callable[[float], str]:
    return lambda x: "" if pd.isna(x) else format(x, spec)


def _time_spent(trials: pd.DataFrame) -> dict[str, str]:
    out = {}
    if "seconds" in trials:
        total = float(pd.to_numeric(trials["seconds"], errors="coerce").sum())
        out["training time (sum over trials)"] = f"{total / 3600:.2f} h"
    if {"started_at", "finished_at"} <= set(trials.columns) and len(trials):
        start = pd.to_datetime(trials["started_at"], errors="coerce", utc=True).min()
        end = pd.to_datetime(trials["finished_at"], errors="coerce", utc=True).max()
        if pd.notna(start) and pd.notna(end):
            out["wall clock (first start to last finish)"] = (
                f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
            )
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    return obj


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file so a failed run never leaves a half-written report behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OdysseyError(f"cannot write {path}: {exc.strerror or exc}") from None
