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
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from analysis import figures
from analysis.api import POOLED, StudyAnalysis
from analysis.fanova import MIN_FOREST_TRIALS, MIN_ROWS
from analysis.space import Space
from analysis.stats import MIN_TOP_TRIALS
from storage.results import StudyData
from sweep.core.errors import OdysseyError

DIVERGED_RULE = (
    "A finished trial whose score is missing or infinite, or a diverged trial whose score is worse than the "
    "worst finite score of the study's completed trials, is capped at that worst score."
)
CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
p.guide{color:#555;font-style:italic;margin:.3em 0 .8em}
p.note{background:#f4f6f8;border-left:4px solid #9aa5b1;padding:.4em .8em}
.warn{background:#fff6d5;border-left:4px solid #e0b000;padding:.4em .8em;margin:.6em 0}
div.warn ul{margin:.3em 0}
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
    select_by: str | None = None,
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
        data, outdir, target=target, select_by=select_by, seed=seed, n_trees=n_trees, jobs=jobs,
        progress=progress,
    )  # fmt: skip


def build_report_from_data(
    data: StudyData,
    outdir: str | Path,
    *,
    target: str = "best_test",
    select_by: str | None = None,
    seed: int = 0,
    n_trees: int = 64,
    jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``report.html`` and the numbers (``variant_stats.csv``, ``main_effects.csv``,
    ``interactions.csv``, ``marginals.csv``, ``heatmap.csv``, ``curves.csv``, ``summary.json``) into
    ``outdir``; returns the HTML path. ``target`` is the trial column analysed, ``select_by`` the column
    that chooses each variant's best 10% (default: the target's validation counterpart, the paper's
    rule), ``seed`` and ``n_trees`` configure the fANOVA forests, ``jobs`` how many are fitted at once
    (default: one per CPU), and ``progress`` receives a line before each slow step. Unknown columns
    raise ``OdysseyError``."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OdysseyError(f"cannot create report directory {outdir}: {exc.strerror or exc}") from None
    analysis = StudyAnalysis(data, target, select_by=select_by, seed=seed, n_trees=n_trees, progress=progress)
    report = _Report(analysis, outdir, jobs or os.cpu_count() or 1)
    return report.write()


class _Report:
    """Collects the report's sections and files while the analysis runs."""

    def __init__(self, analysis: StudyAnalysis, outdir: Path, jobs: int) -> None:
        self.a = analysis
        self.outdir = outdir
        self.jobs = jobs
        self.sections: list[str] = []
        self.top: list[str] = []  # warnings shown above everything else
        self.small_top = self.small_forest = ""  # the sample-size warnings beside the figures
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
            "selected_by": a.select_by, "metric": a.metric, "direction": a.direction, "design": a.design,
            "variants": a.variants, "fixed": a.space.fixed, "diverged_rule": DIVERGED_RULE,
        }  # fmt: skip
        self._setup(problem)
        if problem is None:
            self._sample_size()
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

    def _figure(self, key: str, title: str, fig: go.Figure | dict, warning: str = "") -> None:
        # plotly.js itself is written once in <head>; figures only carry their data.
        div = pio.to_html(
            fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{key}", validate=False,
            config={"displaylogo": False, "responsive": True},
        )  # fmt: skip
        guide = html.escape(figures.GUIDES[key])
        warn = f'<p class="warn sample-size">{html.escape(warning)}</p>' if warning else ""
        head = f"<h2>{html.escape(title)}</h2>{warn}"
        self.sections.append(f'<section id="{key}">{head}<p class="guide">{guide}</p>{div}</section>')

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
            + "".join(self.top)
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
        complete = done["finished"] >= done["planned"]
        if not complete:
            status += " The study is incomplete: results may still change."
        spec = a.spec
        dataset = spec.get("dataset") or {}
        setup = {
            "dataset": ", ".join(f"{k}={v}" for k, v in dataset.items()) or "?",
            "metric (target)": f"{a.metric} ({a.target}, {a.direction})",
            "best trials chosen by": f"{a.select_by} ({selection_label(a)}): the best {a.top_fraction:.0%} "
            f"of each variant's finished trials"
            + (", the paper's rule" if a.select_by != a.target and "valid" in a.select_by else ""),
            "design": f"{a.design}, seed {spec.get('seed', '?')}",
            "variants": ", ".join(a.variants) or "none",
            "baseline": a.baseline,
            "trials per variant": spec.get("trials_per_variant", "?"),
            "training": ", ".join(f"{k}={v}" for k, v in (spec.get("training") or {}).items()
                                  if v is not None) or "?",
        }  # fmt: skip
        setup.update(_time_spent(a.trials))
        capped = _count(pd.Series([done["capped"]]), "trial")
        setup["diverged rule"] = f"{DIVERGED_RULE} Capped here: {capped}."
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
        # One header row: the index becomes an ordinary first column.
        counts_table = counts.rename_axis(index=None, columns=None).reset_index(names="variant")
        fixed = html.escape(", ".join(a.space.fixed))
        fixed_note = f'<p class="note">Held fixed, so left out of the analysis: {fixed}.</p>' if fixed else ""
        box = "note" if complete else "warn"
        self.sections.append(
            f'<section id="setup"><h2>Setup</h2><p class="{box}" id="completeness">{html.escape(status)}</p>'
            f'<table class="setup">{rows}</table>'
            f"<h3>Search space</h3>{space.to_html(index=False)}{fixed_note}"
            f"<h3>Trials by state</h3>{counts_table.to_html(index=False)}</section>"
        )

    def _sample_size(self) -> None:
        """The sample-size rule: say at the top, and later beside each figure, where a statistic rests
        on fewer trials than it needs."""
        a = self.a
        size = a.sample_size()
        self.summary["sample_size"] = size.to_dict("records")
        variants = size[size["scope"] != POOLED]
        small_top = variants[variants["small_top"].astype(bool)]
        small_forest = size[size["small_forest"].astype(bool)]
        pct = f"{a.top_fraction:.0%}"
        self.small_top = (
            f"Small sample: the best {pct} of {_names(small_top)} hold{'s' if len(small_top) == 1 else ''} "
            f"only {_count(small_top['top_n'], 'trial')} (at least {MIN_TOP_TRIALS} needed), so their "
            "boxes, means and t-tests say little."
            if len(small_top) else ""
        )  # fmt: skip
        self.small_forest = (
            f"Small sample: the fANOVA forests of {_names(small_forest)} rest on only "
            f"{_range(small_forest['points'])} distinct hyperparameter settings "
            f"(at least {MIN_FOREST_TRIALS} needed); the bands and whiskers show how much the trees disagree."
            if len(small_forest) else ""
        )  # fmt: skip
        self.summary["too_small"] = a.too_small
        if not (self.small_top or self.small_forest):
            return
        lines = [t for t in (self.small_top, self.small_forest) if t]
        head = ""
        if a.too_small:
            per = _count(variants["trials"], "finished trial")
            head = (
                f"<p><strong>This study is too small for any conclusion: with {per} per "
                "variant, neither the comparison of variants nor the per-variant fANOVA has the trials it "
                "needs; treat the figures as a check that the sweep runs.</strong></p>"
            )
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        self.top.append(f'<div class="warn" id="sample-size">{head}<ul>{items}</ul></div>')

    def _analyse(self) -> None:
        a = self.a
        self.log("variant statistics")
        stats = a.stats()
        self._csv("variant_stats.csv", stats)
        self.summary["variant_stats"] = stats.to_dict("records")
        self.summary["baseline"] = a.baseline
        what = TARGET_LABELS.get(a.target, a.target)
        # With training time as the target, the time panels would repeat the score panels.
        shown = a.scored.drop(columns="seconds", errors="ignore") if a.target == "seconds" else a.scored
        fig = figures.variant_figure(
            shown, a.top_trials(), stats, a.baseline, a.metric, a.top_fraction, a.direction, what,
            selection_label(a),
        )  # fmt: skip
        self._figure("variants", "Variants against the baseline", fig, self.small_top)
        self.sections.append(_stats_table(stats, len(a.variants) > 1))
        colors = figures.variant_colors(a.variants)
        scopes = a.scopes
        if scopes:
            self._fanova_sections(scopes, colors)
        else:
            held = not a.space.params
            why = "Every hyperparameter was held fixed: there is nothing to decompose." if held else (
                f"Too few finished trials for fANOVA yet (a forest needs at least {MIN_ROWS} per variant)."
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

    def _fanova_sections(self, scopes: list[str], colors: dict[str, str]) -> None:
        a = self.a
        a.fit_all(jobs=self.jobs)
        main = a.main_effects()
        pairs = a.interactions()
        higher = a.higher_order()
        parts = a.decomposition()
        self._csv("main_effects.csv", main)
        self._csv("interactions.csv", pairs)
        self.summary["main_effects"] = main.to_dict("records")
        self.summary["interactions"] = pairs.to_dict("records")
        self.summary["higher_order"] = higher.to_dict()
        self.summary["decomposition"] = parts.to_dict("records")
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
                         figures.marginals_figure(marg, a.space, a.metric, menu), self.small_forest)
            scope_colors = {**colors, POOLED: "#222222"}
            self._figure("variance", "Variance decomposition",
                         figures.variance_figure(parts, pairs, fitted, scope_colors), self.small_forest)
        else:
            text = "fANOVA could not be fitted: " + "; ".join(a.notes)
            self._note("marginals", "Marginals", text)
            self._note("variance", "Variance decomposition", text)
        self._heatmaps()

    def _heatmaps(self) -> None:
        a = self.a
        scope = a.main_scope
        model = None if scope is None else a.fanova(scope)
        if scope is None or model is None:
            self._note("heatmap", "Heatmaps", "fANOVA could not be fitted: " + "; ".join(a.notes))
            return
        pairs = a.heatmap_pairs()
        if pairs.empty:
            varied = [p for p in model.params_ if p in a.space.params]
            named = ", ".join(varied) if varied else "none"
            self._note("heatmap", "Heatmaps", f"A joint heatmap needs two hyperparameters that vary within "
                       f"the fitted trials; {len(varied)} do{'es' if len(varied) == 1 else ''} ({named}).")
            return
        grids, frames = [], []
        for pair in pairs.to_dict("records"):
            a_, b_ = pair["param_a"], pair["param_b"]
            self.log(f"heatmap {a_} x {b_} ({scope})")
            grid = a.marginal_2d(a_, b_, scope=scope)
            grids.append((pair, grid))
            frames.append(_heatmap_rows(grid, a_, b_, scope, a.space))
        self._csv("heatmap.csv", pd.concat(frames, ignore_index=True))
        first = pairs.iloc[0]
        self.summary["heatmap_pair"] = [first["param_a"], first["param_b"]]
        self.summary["heatmap_pairs"] = pairs.to_dict("records")
        size = a.sample_size().set_index("scope")
        warning = self.small_forest if scope in size.index and size.loc[scope, "small_forest"] else ""
        title = f"Heatmaps: {first['param_a']} x {first['param_b']} (largest interaction)"
        self._figure("heatmap", title, figures.heatmap_figure(grids, a.space, a.metric, scope), warning)


def selection_label(a: StudyAnalysis) -> str:
    """How the column that chooses the best trials is named in figures: "validation nll"."""
    label = TARGET_LABELS.get(a.select_by, a.select_by).lower()
    return f"{label} {a.metric if a.select_by != 'seconds' else 'seconds'}"


def _heatmap_rows(grid: pd.DataFrame, a: str, b: str, scope: str, space: Space) -> pd.DataFrame:
    """heatmap.csv's rows for one pair: both parameters on the sampled scale and in real units."""
    return pd.DataFrame({
        "scope": scope, "param_a": a, "value_a": grid[a], "real_value_a": space.params[a].to_real(grid[a]),
        "param_b": b, "value_b": grid[b], "real_value_b": space.params[b].to_real(grid[b]),
        "mean": grid["mean"], "std": grid["std"], "interaction": grid["interaction"],
    })  # fmt: skip


def _names(frame: pd.DataFrame) -> str:
    names = list(frame["scope"])
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _range(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _count(values: pd.Series, noun: str) -> str:
    """`1 trial`, `2 trials`, `1-3 trials`: the range of ``values`` with ``noun`` in the right number."""
    return f"{_range(values)} {noun}{'' if int(values.min()) == int(values.max()) == 1 else 's'}"


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


def _jsonable(obj: Any) -> Any:
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
