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

from analysis.space import Space

PALETTE = qualitative.Plotly + qualitative.D3
BETTER, WORSE, NEUTRAL, BASE = "#2ca02c", "#d62728", "#7f7f7f", "#1f77b4"

GUIDES = {
    "variants": "Each box holds a variant's best trials (points: single trials); a star marks a significant "
    "difference from the baseline (Welch's t-test, p < 0.05), red worse, green better; the axis names the "
    "parameter count at the median hidden size.",
    "marginals": "Predicted score (top) and training time (bottom) when one hyperparameter is fixed and the "
    "others are averaged over the space, with a +-1 std band across the forest's trees; the menu picks the "
    "variant. A flat curve means the parameter hardly matters; a wide basin means it is easy to set.",
    "variance": "How much of the score's variance each hyperparameter explains alone (coloured segments), in "
    "pairwise interactions (grey) and in higher-order interactions (light grey); in the pooled bar the "
    "variant is itself a factor, so its segment answers whether the variant matters next to the "
    "learning rate.",
    "heatmap": "Predicted score over the two most important hyperparameters (pooled over variants): left the "
    "whole joint effect, right only the interaction (joint effect minus both main effects). A weak "
    "interaction panel means the two can be tuned one at a time.",
    "curves": "Validation metric per epoch: the median over each variant's trials (line) and the 25-75% "
    "range (band); fewer trials reach later epochs because of early stopping.",
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


def variant_box_figure(
    top: pd.DataFrame,
    stats: pd.DataFrame,
    baseline: str,
    metric: str,
    top_fraction: float,
    direction: str = "minimize",
    what: str = "Test",
) -> go.Figure:
    """Figure 3 of the paper: the best trials' scores per variant, significance and parameter counts.

    ``top`` has columns ``variant, score`` (the best trials of each variant); ``stats`` is
    :func:`analysis.stats.variant_stats`' table.
    """
    fig = go.Figure()
    for row in stats.itertuples():
        if row.variant == baseline:
            color, mark = BASE, "baseline"
        elif row.significant:
            worse = row.delta > 0 if direction == "minimize" else row.delta < 0
            color, mark = (WORSE, "* worse") if worse else (BETTER, "* better")
        else:
            color, mark = NEUTRAL, "n.s."
        p = "" if not np.isfinite(row.welch_p) else f" p={row.welch_p:.2g}"
        label = f"{row.variant}<br>{_count(row.n_params)}<br>{mark}{p}"
        fig.add_trace(
            go.Box(
                y=top.loc[top["variant"] == row.variant, "score"],
                name=label,
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker={"color": color, "size": 5},
                line={"color": color},
                showlegend=False,
            )
        )
    fig.update_layout(
        title=f"{what} {metric} per variant "
        f"(best {top_fraction:.0%} of trials; * p < 0.05 against {baseline})",
        yaxis_title=metric,
        margin={"t": 60, "b": 90},
    )
    return fig


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
    on the sampled scale. Returns a figure dict (render with ``validate=False``).
    """
    params = [p for p in space.names if p in set(marginals["param"])]
    rows = ["score", "seconds"] if (marginals["target"] == "seconds").any() else ["score"]
    fig = make_subplots(rows=len(rows), cols=len(params), shared_xaxes=False, vertical_spacing=0.12)
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
                sub = fig.get_subplot(r, c)
                axes = {"xaxis": sub.xaxis.plotly_name.replace("axis", ""),
                        "yaxis": sub.yaxis.plotly_name.replace("axis", "")}  # fmt: skip
                name = metric if target == "score" else "training time (s)"
                first = scope == scopes[0]
                traces += _band(
                    g["value"], g["mean"], g["std"], colors[target], name, first, first and c == 1, axes
                )
                owner += [scope, scope]
    for c, param in enumerate(params, start=1):
        fig.update_xaxes(title_text=space.params[param].axis_label, row=len(rows), col=c)
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
        height=320 * len(rows) + 80,
        legend={"orientation": "h", "y": -0.2},
    )
    return {"data": traces, "layout": fig.layout.to_plotly_json()}


def variance_figure(
    main: pd.DataFrame, pairs: pd.DataFrame, higher: pd.Series, scopes: Sequence[str]
) -> go.Figure:
    """Figure 5: main effects, pairwise and higher-order interactions as stacked bars per scope.

    ``main`` has ``scope, param, fraction``; ``pairs`` has ``scope, param_a, param_b, fraction``;
    ``higher`` maps scope -> higher-order fraction.
    """
    fig = go.Figure()
    params = list(dict.fromkeys(main["param"]))
    table = main.pivot_table(index="scope", columns="param", values="fraction").reindex(scopes).fillna(0.0)
    for i, param in enumerate(params):
        fig.add_trace(
            go.Bar(x=list(scopes), y=table[param], name=param, marker_color=PALETTE[i % len(PALETTE)])
        )
    pair_sum = pairs.groupby("scope")["fraction"].sum().reindex(scopes)
    top_pair = pairs.sort_values("fraction", ascending=False).drop_duplicates("scope").set_index("scope")
    hover = [
        f"largest: {top_pair.loc[s, 'param_a']} x {top_pair.loc[s, 'param_b']} "
        f"{top_pair.loc[s, 'fraction']:.1%}"
        if s in top_pair.index
        else ""
        for s in scopes
    ]
    fig.add_trace(go.Bar(x=list(scopes), y=pair_sum, name="pairwise interactions", marker_color="#999999",
                         hovertext=hover))  # fmt: skip
    # Estimation noise can push the remainder slightly below zero; a negative segment would hang below.
    rest = higher.reindex(scopes).clip(lower=0)
    fig.add_trace(go.Bar(x=list(scopes), y=rest, name="higher order", marker_color="#dddddd"))
    fig.update_layout(
        barmode="stack",
        title="Variance decomposition (fANOVA): fraction of the score's variance explained",
        yaxis={"title": "fraction of variance", "tickformat": ".0%", "range": [0, 1]},
    )
    return fig


def heatmap_figure(
    grid: pd.DataFrame, a: str, b: str, space: Space, metric: str, scope: str = "pooled"
) -> go.Figure:
    """Figure 6: the predicted score over parameters ``a`` x ``b`` (total and interaction only).

    ``grid`` has columns ``a, b, mean, interaction`` on the sampled scale.
    """
    total = grid.pivot_table(index=b, columns=a, values="mean")
    inter = grid.pivot_table(index=b, columns=a, values="interaction")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("total", "interaction only"), horizontal_spacing=0.15)
    fig.add_trace(
        go.Heatmap(z=total.values, x=total.columns, y=total.index, colorscale="Viridis_r",
                   colorbar={"x": 0.43, "title": metric}),
        row=1, col=1,
    )  # fmt: skip
    lim = float(np.nanmax(np.abs(inter.values))) if inter.size else 1.0
    fig.add_trace(
        go.Heatmap(z=inter.values, x=inter.columns, y=inter.index, colorscale="RdBu_r", zmid=0,
                   zmin=-lim, zmax=lim, colorbar={"x": 1.0, "title": "interaction"}),
        row=1, col=2,
    )  # fmt: skip
    for c in (1, 2):
        fig.update_xaxes(title_text=space.params[a].axis_label, row=1, col=c)
        fig.update_yaxes(title_text=space.params[b].axis_label, row=1, col=c)
    where = "pooled over variants" if scope == "pooled" else f"variant {scope}"
    fig.update_layout(title=f"{a} x {b}: predicted {metric}, {where}", height=450)
    return fig


def curves_figure(curves: pd.DataFrame, colors: dict[str, str], metric: str) -> go.Figure:
    """Validation metric per epoch: median and 25-75% band per variant.

    ``curves`` has columns ``variant, epoch, median, q25, q75, n``.
    """
    fig = go.Figure()
    for variant, g in curves.groupby("variant", sort=False):
        color = colors.get(variant, NEUTRAL)
        x = g["epoch"].to_numpy()
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([g["q75"].to_numpy(), g["q25"].to_numpy()[::-1]]),
                fill="toself", fillcolor=_rgba(color, 0.08), line={"width": 0}, hoverinfo="skip",
                legendgroup=variant, showlegend=False,
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=x, y=g["median"], mode="lines", name=variant, line={"color": color}, legendgroup=variant,
                customdata=g["n"], hovertemplate="epoch %{x}: %{y:.4g} (%{customdata} trials)",
            )
        )  # fmt: skip
    positive = bool(len(curves)) and (curves["q25"] > 0).all()
    spread = curves["q75"].max() / max(curves["q25"].min(), 1e-300) if positive else 0
    fig.update_layout(
        title=f"Validation {metric} per epoch (median and 25-75% of trials)",
        xaxis_title="epoch",
        yaxis={"title": f"validation {metric}", "type": "log" if spread > 30 else "linear"},
    )
    return fig
