"""The report's Plotly figures, each built from the pandas frames of :mod:`analysis.api`.

Every builder returns a ``plotly.graph_objects.Figure``; the reading guides shown above each figure live
in :data:`GUIDES` so the report and the docs say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from analysis.space import Param, Space

PALETTE = qualitative.Plotly + qualitative.D3
BETTER, WORSE, NEUTRAL, BASE = "#2ca02c", "#d62728", "#7f7f7f", "#1f77b4"

GUIDES = {
    "variants": "Top: every finished trial of each variant; below: the best trials, chosen by the selection "
    "column named in the title (the validation metric by default, as in the paper) and shown by their test "
    "score. Boxes span the 25-75% range with the median as a line and the mean as a diamond; whiskers "
    "reach the extremes (all trials) or 1.5 box lengths (best trials, every trial drawn as a point). Red: "
    "significantly worse than the baseline, green better, grey no significant difference (Welch's "
    "t-test on the best trials, p < 0.05, marked * under the name). Right: training time per trial; "
    "bottom: parameter count at the study's median hidden size.",
    "marginals": "Predicted score (top) and training time (bottom) when one hyperparameter is fixed and the "
    "others are averaged over the space, with a +-1 std band across the forest's trees; log-sampled "
    "hyperparameters on log axes in their own units (momentum on a log scale of 1 - momentum, labelled "
    "with the momentum); the menu picks the variant. A flat curve means the parameter hardly matters; a "
    "wide basin means it is easy to set.",
    "variance": "Share of the score's variance explained by each hyperparameter alone, by all pairwise "
    "interactions together and by higher-order interactions, per variant and pooled (whiskers: +-1 std "
    "across the forest's trees; wide whiskers mean the forest has too few trials to tell). In the pooled "
    "bars the variant is itself a factor: its bar answers whether the variant matters next to the "
    "learning rate.",
    "heatmap": "Predicted score over the pair of hyperparameters named in the title (pooled over variants): "
    "left the whole joint effect, right only the interaction (joint effect minus both main effects) on a "
    "colour range as wide as the left one, so a pale right panel means the two can be tuned one at a time. "
    "When the pair with the largest interaction is not learning rate x hidden size (the paper's pair), the "
    "menu offers that one too.",
    "curves": "Validation metric per epoch: the median over each variant's trials; the menu adds the 25-75% "
    "band, a click on a legend entry hides a variant, a double click shows it alone. Fewer trials reach "
    "later epochs because of early stopping (the hover says how many).",
}

def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """A fixed colour per variant so every figure uses the same one."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


def _rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _count(n: float) -> str:
    if not np.isfinite(n):
        return "? params"
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit} params"
    return f"{int(n)} params"


def _significance(row, baseline: str, direction: str) -> tuple[str, str]:
    """Colour and mark of a variant's test result against the baseline."""
    if row.variant == baseline:
        return BASE, "baseline"
    if not row.significant:
        return NEUTRAL, "n.s."
    worse = row.delta > 0 if direction == "minimize" else row.delta < 0
    return (WORSE, "* worse") if worse else (BETTER, "* better")


def variant_figure(
    scored: pd.DataFrame,
    top: pd.DataFrame,
    stats: pd.DataFrame,
    baseline: str,
    metric: str,
    top_fraction: float,
    direction: str = "minimize",
    what: str = "Test",
    selected_by: str = "validation",
) -> dict:
    """Figure 3 of the paper: each variant's scores over all trials (top) and over its best trials
    (middle), median and mean, significance against the baseline, the training time per trial beside
    them and the parameter counts below.

    ``scored`` has columns ``variant, score`` and optionally ``seconds`` (all finished trials); ``top``
    the same for the best trials; ``stats`` is :func:`analysis.stats.variant_stats`' table; ``what``
    names the shown score ("Test") and ``selected_by`` the column that chose the best trials. Returns a
    figure dict (render with ``validate=False``).
    """
    has_time = "seconds" in scored and bool(np.isfinite(scored["seconds"]).any())
    pct = f"{top_fraction:.0%}"
    time = ("training time: all trials", f"training time: best {pct}") if has_time else ("", "")
    best = f"{what} {metric}: best {pct} by {selected_by}"
    titles = [f"{what} {metric}: all trials", time[0], best, time[1], "parameters at the median hidden size"]
    fig = make_subplots(
        rows=3, cols=2, column_widths=[0.74, 0.26], row_heights=[0.38, 0.38, 0.24], horizontal_spacing=0.07,
        vertical_spacing=0.13, specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None]], subplot_titles=titles,
    )  # fmt: skip
    traces: list[dict] = []
    means: dict[int, tuple[list, list]] = {1: ([], []), 2: ([], [])}
    shown: set[str] = set()
    for row in stats.itertuples():
        color, mark = _significance(row, baseline, direction)
        shown.add(color)
        p = "" if not np.isfinite(row.welch_p) else f"<br>p={row.welch_p:.2g}"
        label = f"{row.variant}<br>{mark}{p}"
        for r, frame, points in ((1, scored, False), (2, top, "all")):
            values = frame.loc[frame["variant"] == row.variant, "score"]
            # Whiskers over the whole range (no points) for all trials, as in the paper.
            traces.append({"type": "box", "x": [label] * len(values), "y": values, "name": row.variant,
                           "boxpoints": points, "jitter": 0.4, "pointpos": 0, "marker": {"color": color,
                           "size": 4}, "line": {"color": color, "width": 1.5}, "showlegend": False,
                           **_axes(fig, r, 1)})  # fmt: skip
            means[r][0].append(label)
            means[r][1].append(float(values.mean()) if len(values) else None)
            if has_time:
                secs = frame.loc[frame["variant"] == row.variant, "seconds"]
                traces.append({"type": "box", "x": [row.variant] * len(secs), "y": secs, "name": row.variant,
                               "boxpoints": points, "jitter": 0.4, "pointpos": 0, "marker": {"color": NEUTRAL,
                               "size": 3}, "line": {"color": NEUTRAL, "width": 1}, "showlegend": False,
                               **_axes(fig, r, 2)})  # fmt: skip
    for r, (labels, values) in means.items():
        traces.append({"type": "scatter", "x": labels, "y": values, "mode": "markers", "name": "mean",
                       "marker": {"symbol": "diamond", "size": 8, "color": "#222", "line": {"color": "white",
                       "width": 1}}, "showlegend": r == 1, "hovertemplate": "mean %{y:.4g}<extra></extra>",
                       **_axes(fig, r, 1)})  # fmt: skip
    counts = stats["n_params"].to_numpy(float)
    traces.append({"type": "bar", "x": list(stats["variant"]), "y": counts, "name": "parameters",
                   "text": [_count(n) for n in counts], "textposition": "auto",
                   "marker": {"color": "#9ecae1"}, "showlegend": False, **_axes(fig, 3, 1)})  # fmt: skip
    for key, name, color in (("baseline", "baseline", BASE), ("worse", "significantly worse", WORSE),
                             ("better", "significantly better", BETTER), ("ns", "no significant difference",
                             NEUTRAL)):  # fmt: skip
        if color not in shown:
            continue
        traces.append({"type": "scatter", "x": [None], "y": [None], "mode": "markers", "name": name,
                       "legendgroup": key, "marker": {"symbol": "square", "size": 10, "color": color},
                       **_axes(fig, 1, 1)})  # fmt: skip
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_yaxes(title_text=metric, row=2, col=1)
    if has_time:
        fig.update_yaxes(title_text="seconds", row=1, col=2)
        fig.update_yaxes(title_text="seconds", row=2, col=2)
    fig.update_yaxes(title_text="parameters", row=3, col=1)
    fig.update_xaxes(tickangle=0, col=1)  # the names and test results stay readable, one per line
    fig.update_xaxes(tickangle=-45, col=2)
    fig.update_layout(
        title={"text": f"{what} {metric} per variant: all trials and the best {pct} chosen by {selected_by} "
               f"(* p < 0.05 against {baseline})", "y": 0.995, "yanchor": "top"},
        height=1150, margin={"t": 80, "b": 80}, boxgap=0.35,
        legend={"orientation": "h", "y": -0.04, "x": 0, "yanchor": "top"},
    )  # fmt: skip
    return {"data": traces, "layout": fig.layout.to_plotly_json()}


def _axes(fig: go.Figure, row: int, col: int) -> dict[str, str]:
    """The ``xaxis``/``yaxis`` references of a subplot, for plain trace dicts."""
    sub = fig.get_subplot(row, col)
    return {"xaxis": sub.xaxis.plotly_name.replace("axis", ""),
            "yaxis": sub.yaxis.plotly_name.replace("axis", "")}  # fmt: skip


def plotted(param: Param, sampled: np.ndarray | pd.Series) -> np.ndarray:
    """Where a value on the sampled scale is drawn: the real value on a log axis for ``log``, 1 - value
    on a log axis for ``log1m`` (both 10**sampled), the value itself for ``linear``."""
    x = np.asarray(sampled, dtype=float)
    return 10.0**x if param.scale in ("log", "log1m") else x


def real_axis(param: Param) -> dict:
    """Plotly axis settings for ``param`` in its real unit: a log axis with readable ticks for log-sampled
    parameters; for ``log1m`` (momentum) the axis is 1 - value on a log scale, reversed so the value
    grows to the right, and its ticks are labelled with the value itself."""
    if param.scale == "linear":
        # Every key is set, so a menu switching a log axis to this one leaves no log ticks behind.
        return {"type": "linear", "title": {"text": param.name}, "tickvals": None, "ticktext": None,
                "autorange": True}  # fmt: skip
    lo, hi = (10.0**b for b in param.bounds)
    ticks = _log_ticks(lo, hi)
    if param.scale == "log":
        powers = any(_number(t).startswith("10<sup>") for t in ticks)
        return {"type": "log", "title": {"text": f"{param.name} (log scale)"}, "tickvals": ticks,
                "ticktext": [_number(t, powers) for t in ticks], "autorange": True}  # fmt: skip
    title = f"{param.name} (log scale of 1 - {param.name})"
    return {"type": "log", "title": {"text": title}, "tickvals": ticks,
            "ticktext": [_number(1.0 - t) for t in ticks], "autorange": "reversed"}  # fmt: skip


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions in [lo, hi]: powers of ten over two decades or more, else 1-2-5 steps."""
    steps = (1.0,) if np.log10(hi / lo) > 2 + 1e-9 else (1.0, 2.0, 5.0)
    ticks = [
        float(f"{m * 10.0**k:.12g}")
        for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
        for m in steps
    ]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    return inside if len(inside) >= 2 else [float(f"{lo:.2g}"), float(f"{hi:.2g}")]


def _number(x: float, powers: bool = False) -> str:
    """A tick label: 0.001, 0.5, 200, or 10^-6 for very small and large numbers (for every number with
    ``powers``, so one axis keeps one style)."""
    if x == 0 or (1e-3 <= abs(x) < 1e4 and not powers):
        return f"{x:.4g}"
    exponent = int(np.floor(np.log10(abs(x))))
    mantissa = x / 10.0**exponent
    head = "" if abs(mantissa - 1) < 1e-9 else f"{mantissa:.3g}×"
    return f"{head}10<sup>{exponent}</sup>"


def _band(x, mean, std, color: str, name: str, visible: bool, legend: bool, axes: dict) -> list[dict]:
    """A line with a +-std band, as plain trace dicts (validating hundreds of traces is slow)."""
    x, mean, std = np.asarray(x), np.asarray(mean), np.asarray(std)
    common = {"type": "scatter", "visible": visible, "legendgroup": name, **axes}
    band = {
        "x": np.concatenate([x, x[::-1]]), "y": np.concatenate([mean + std, (mean - std)[::-1]]),
        "fill": "toself", "fillcolor": _rgba(color, 0.2), "line": {"width": 0}, "hoverinfo": "skip",
        "showlegend": False, **common,
    }  # fmt: skip
    line = {"x": x, "y": mean, "mode": "lines", "line": {"color": color}, "name": name, "showlegend": legend}
    return [band, {**line, **common}]


def marginals_figure(marginals: pd.DataFrame, space: Space, metric: str, scopes: Sequence[str]) -> dict:
    """Figure 4: marginal score and training time against each hyperparameter, one menu entry per scope.

    ``marginals`` has columns ``scope, target ("score"|"seconds"), param, value, mean, std`` with values
    on the sampled scale; they are drawn in real units (:func:`real_axis`). Returns a figure dict (render
    with ``validate=False``).
    """
    params = [p for p in space.names if p in set(marginals["param"])]
    rows = ["score", "seconds"] if (marginals["target"] == "seconds").any() else ["score"]
    fig = make_subplots(rows=len(rows), cols=len(params), shared_xaxes=False, vertical_spacing=0.16)
    groups = {key: g for key, g in marginals.groupby(["scope", "target", "param"], sort=False)}
    traces: list[dict] = []
    owner: list[str] = []
    colors = {"score": BASE, "seconds": "#2ca02c"}
    for scope in scopes:
        for r, target in enumerate(rows, start=1):
            for c, param in enumerate(params, start=1):
                g = groups.get((scope, target, param))
                if g is None:
                    continue
                name = metric if target == "score" else "training time (s)"
                first = scope == scopes[0]
                x = plotted(space.params[param], g["value"])
                traces += _band(x, g["mean"], g["std"], colors[target], name, first, first and c == 1,
                                _axes(fig, r, c))  # fmt: skip
                owner += [scope, scope]
    for c, param in enumerate(params, start=1):
        for r in range(1, len(rows) + 1):
            axis = real_axis(space.params[param])
            if r < len(rows):
                axis = {**axis, "title": {"text": ""}}
            fig.update_xaxes(axis, row=r, col=c)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    if len(rows) > 1:
        fig.update_yaxes(title_text="seconds", row=2, col=1)
    buttons = [
        {"label": scope, "method": "update", "args": [{"visible": [o == scope for o in owner]}]}
        for scope in scopes
    ]
    fig.update_layout(
        title="Marginal score and training time per hyperparameter (+-1 std)",
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}]
        if len(scopes) > 1
        else [],
        height=340 * len(rows) + 100,
        legend={"orientation": "h", "y": -0.25},
    )
    return {"data": traces, "layout": fig.layout.to_plotly_json()}


def variance_figure(
    decomposition: pd.DataFrame, pairs: pd.DataFrame, scopes: Sequence[str], colors: dict[str, str]
) -> go.Figure:
    """Figure 5: variance fractions per component (each main effect, all pairs, higher order), one bar
    per scope with +-1 std across trees as whiskers.

    ``decomposition`` has ``scope, component, fraction, std`` (:meth:`Fanova.decomposition`); ``pairs``
    ``scope, param_a, param_b, fraction`` (for the hover's largest pair); ``colors`` maps scopes to colours.
    """
    fig = go.Figure()
    components = list(dict.fromkeys(decomposition["component"]))
    top_pair = pairs.sort_values("fraction", ascending=False).drop_duplicates("scope").set_index("scope")
    for scope in scopes:
        g = decomposition[decomposition["scope"] == scope].set_index("component").reindex(components)
        largest = ""
        if scope in top_pair.index:
            row = top_pair.loc[scope]
            largest = f"<br>largest pair: {row['param_a']} x {row['param_b']} {row['fraction']:.1%}"
        hover = [
            f"{scope}, {c}: %{{y:.1%}} +- {s:.1%}" + (largest if c == "pairwise" else "") + "<extra></extra>"
            for c, s in zip(components, g["std"].fillna(0.0), strict=True)
        ]
        fig.add_trace(
            go.Bar(x=components, y=g["fraction"], name=scope, marker_color=colors.get(scope, "#333333"),
                   error_y={"type": "data", "array": g["std"], "visible": True, "thickness": 1, "width": 2},
                   hovertemplate=hover)  # fmt: skip
        )
    fig.update_layout(
        barmode="group",
        title="Variance decomposition (fANOVA): share of the score's variance (+-1 std across trees)",
        yaxis={"title": "fraction of variance", "tickformat": ".0%", "rangemode": "tozero"},
        legend={"title": {"text": "scope"}},
    )
    return fig


def heatmap_figure(
    grids: Sequence[tuple[pd.Series, pd.DataFrame]], space: Space, metric: str, scope: str = "pooled"
) -> dict:
    """Figure 6: the predicted score over pairs of hyperparameters, total and interaction only, one menu
    entry per pair.

    ``grids`` holds, per pair, its row of :meth:`StudyAnalysis.heatmap_pairs` (``param_a, param_b,
    fraction, std``) and its :meth:`Fanova.marginal_2d` frame (columns ``param_a, param_b`` on the sampled
    scale, ``mean, interaction``). The interaction panel's colour range is as wide as the total's (centred
    on 0), so its paleness is its size; the title gives the ratio of the two ranges. Returns a figure dict.
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.16,
                        subplot_titles=("total", "interaction only (same colour range width)"))  # fmt: skip
    where = "pooled over variants" if scope == "pooled" else f"variant {scope}"
    traces: list[dict] = []
    buttons = []
    for i, (pair, grid) in enumerate(grids):
        a, b = pair["param_a"], pair["param_b"]
        pa, pb = space.params[a], space.params[b]
        total = grid.pivot_table(index=b, columns=a, values="mean")
        inter = grid.pivot_table(index=b, columns=a, values="interaction")
        x, y = plotted(pa, total.columns), plotted(pb, total.index)
        zmin, zmax = float(np.nanmin(total.values)), float(np.nanmax(total.values))
        half = max((zmax - zmin) / 2, 1e-300)
        ratio = float(np.nanmax(np.abs(inter.values))) / half if inter.size else 0.0
        visible = i == 0
        # plotly.js names (no "_r" suffix): low scores yellow; positive interactions red.
        traces.append({"type": "heatmap", "z": total.values, "x": x, "y": y, "colorscale": "Viridis",
                       "reversescale": True, "zmin": zmin, "zmax": zmax,
                       "colorbar": {"x": 0.42, "title": {"text": metric}},
                       "visible": visible, "name": "total", **_axes(fig, 1, 1)})  # fmt: skip
        traces.append({"type": "heatmap", "z": inter.values, "x": x, "y": y, "colorscale": "RdBu",
                       "zmid": 0, "zmin": -half, "zmax": half,
                       "colorbar": {"x": 1.0, "title": {"text": "interaction"}},
                       "visible": visible, "name": "interaction", **_axes(fig, 1, 2)})  # fmt: skip
        title = (
            f"{a} x {b}: predicted {metric}, {where}<br><sub>interaction {pair['fraction']:.1%} "
            f"+- {pair['std']:.1%} of the variance; its largest deviation is {ratio:.0%} of the total's "
            "half-range</sub>"
        )
        axes = {}
        for name, param in (("xaxis", pa), ("xaxis2", pa), ("yaxis", pb), ("yaxis2", pb)):
            for key, value in real_axis(param).items():
                axes[f"{name}.{key}"] = value
        buttons.append({"label": f"{a} x {b}", "method": "update",
                        "args": [{"visible": [j // 2 == i for j in range(2 * len(grids))]},
                                 {"title.text": title, **axes}]})  # fmt: skip
        if visible:
            first_title, first_axes = title, axes
    layout = fig.layout.to_plotly_json()
    for key, value in first_axes.items():
        name, attr = key.split(".", 1)
        layout.setdefault(name, {})[attr] = value
    layout.update(
        title={"text": first_title}, height=520, margin={"t": 110},
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.28, "yanchor": "top"}]
        if len(grids) > 1 else [],
    )  # fmt: skip
    return {"data": traces, "layout": layout}


def _integer_step(largest: float, ticks: int = 10) -> int:
    """An integer tick step (1, 2, 5, 10, 20, ...) giving at most about ``ticks`` ticks up to ``largest``."""
    step = 1
    while largest / step > ticks:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return step


def curves_figure(curves: pd.DataFrame, colors: dict[str, str], metric: str) -> go.Figure:
    """Validation metric per epoch: a thin median line per variant; the 25-75% bands are off until the
    menu turns them on.

    ``curves`` has columns ``variant, epoch, median, q25, q75, n``.
    """
    fig = go.Figure()
    bands: list[bool] = []
    for variant, g in curves.groupby("variant", sort=False):
        color = colors.get(variant, NEUTRAL)
        x = g["epoch"].to_numpy()
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([g["q75"].to_numpy(), g["q25"].to_numpy()[::-1]]),
                fill="toself", fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                legendgroup=variant, showlegend=False, visible=False,
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=x, y=g["median"], mode="lines+markers", name=variant, line={"color": color, "width": 1.5},
                marker={"size": 4}, legendgroup=variant, customdata=g["n"],
                hovertemplate=f"{variant}, epoch %{{x}}: %{{y:.4g}} (%{{customdata}} trials)<extra></extra>",
            )
        )  # fmt: skip
        bands += [True, False]
    positive = bool(len(curves)) and (curves["q25"] > 0).all()
    spread = curves["q75"].max() / max(curves["q25"].min(), 1e-300) if positive else 0
    last = float(curves["epoch"].max()) if len(curves) else 1.0
    toggle = [
        {"label": label, "method": "restyle",
         "args": [{"visible": [True if not band else on for band in bands]}]}
        for label, on in (("medians only", False), ("with 25-75% bands", True))
    ]  # fmt: skip
    fig.update_layout(
        title=f"Validation {metric} per epoch (median of trials; 25-75% band from the menu)",
        xaxis={"title": "epoch", "tickmode": "linear", "tick0": 0, "dtick": _integer_step(last),
               "tickformat": "d"},
        yaxis={"title": f"validation {metric}", "type": "log" if spread > 30 else "linear"},
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": toggle, "x": 1.0,
                      "xanchor": "right", "y": 1.12, "yanchor": "top", "showactive": True}],
        hovermode="closest",
    )  # fmt: skip
    return fig
