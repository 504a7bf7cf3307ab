"""Plots of stored results: plotly for the App, PNG (matplotlib) for files.

Both draw the same series, built once by :func:`curation_series`.
"""

ORDER_STYLE = {  # order -> (label, colour)
    "harmful_first": ("most harmful removed first", "#2a9d8f"),
    "helpful_first": ("most helpful removed first", "#e76f51"),
    "random": ("random classes removed", "#7f7f7f"),
}
TITLE = "Target accuracy after removing pretraining classes (mean, 95% CI)"
X_LABEL = "pretraining classes removed"
Y_LABEL = "target test accuracy (%)"
CURATION_LAYOUT = {
    "title": {"text": TITLE},
    "xaxis": {"title": {"text": X_LABEL}},
    "yaxis": {"title": {"text": Y_LABEL}},
    "legend": {"orientation": "h", "y": -0.2},
}


def curation_series(summary):
    """``{order: (ks, accuracy, ci_low, ci_high)}`` in percent; k=0 is the full set."""
    full = next(c for c in summary["cells"] if c["arm"] == "full")
    series = {}
    for order in ORDER_STYLE:
        cells = sorted((c for c in summary["cells"] if c["arm"] == order), key=lambda c: c["k"])
        cells = [full] + cells
        series[order] = (
            [c["k"] for c in cells],
            [100 * c["accuracy"] for c in cells],
            [100 * c["ci95"][0] for c in cells],
            [100 * c["ci95"][1] for c in cells],
        )
    return series


def _curated_point(summary):
    """The curated set as a point, when its classes are not the k most harmful."""
    cur = next(c for c in summary["cells"] if c["arm"] == "curated")
    same = next(c for c in summary["cells"] if c["arm"] == "harmful_first" and c["k"] == cur["k"])
    if cur["per_seed"] == same["per_seed"]:
        return None
    return cur


def curation_plotly(summary):
    """``(traces, layout)`` as plain dicts, for a plotly figure or an App plot."""
    traces = []
    for order, (ks, acc, lo, hi) in curation_series(summary).items():
        label, colour = ORDER_STYLE[order]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": label,
                "x": ks,
                "y": acc,
                "line": {"color": colour},
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [h - a for a, h in zip(acc, hi)],
                    "arrayminus": [a - l for a, l in zip(acc, lo)],
                },
            }
        )
    cur = _curated_point(summary)
    if cur is not None:
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"curated ({summary['rule']})",
                "x": [cur["k"]],
                "y": [100 * cur["accuracy"]],
                "marker": {"size": 12, "symbol": "star"},
            }
        )
    return traces, dict(CURATION_LAYOUT)


def curation_figure(summary):
    """A ``plotly.graph_objects.Figure`` of accuracy against classes removed."""
    import plotly.graph_objects as go

    traces, layout = curation_plotly(summary)
    return go.Figure(data=traces, layout=layout)


def save_curation_png(summary, path):
    """Writes the accuracy-vs-classes-removed plot to ``path`` (PNG); returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series = curation_series(summary)
    step = max(1, max(max(ks) for ks, *_ in series.values())) * 0.012
    for j, (order, (ks, acc, lo, hi)) in enumerate(series.items()):
        label, colour = ORDER_STYLE[order]
        ax.errorbar(
            [k + (j - 1) * step for k in ks],
            acc,
            yerr=[[a - l for a, l in zip(acc, lo)], [h - a for a, h in zip(acc, hi)]],
            marker="o",
            capsize=3,
            color=colour,
            label=label,
        )
    cur = _curated_point(summary)
    if cur is not None:
        ax.plot(
            [cur["k"]],
            [100 * cur["accuracy"]],
            "*",
            ms=14,
            color="black",
            label=f"curated ({summary['rule']})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    ax.set_title(TITLE, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


DIVERSITY_TITLE = "Target error against the number of pretraining classes at fixed budgets"


def diversity_series(summary):
    """Per budget: swept K, mean error and 95% CI, the fitted curve, the optima."""
    import numpy as np

    fit = summary["prediction"]["fit"]
    converged = summary["prediction"]["fit_converged"]
    out = {}
    for N, row in summary["per_budget"].items():
        N = int(N)
        cells = [c for c in summary["cells"] if c["budget"] == N and c["arm"] == "sweep"]
        ks = sorted({c["classes"] for c in cells})
        errs = [[c["error"] for c in cells if c["classes"] == k] for k in ks]
        mean = [100 * float(np.mean(e)) for e in errs]
        half = [
            100 * 1.96 * float(np.std(e, ddof=1)) / np.sqrt(len(e)) if len(e) > 1 else 0.0
            for e in errs
        ]
        curve_k = np.geomspace(min(ks), max(ks), 50)
        curve = (
            (
                100
                * (
                    fit["a"] * curve_k ** -fit["p"]
                    + fit["b"] * (N / curve_k) ** -fit["q"]
                    + fit["c"]
                )
            ).tolist()
            if converged
            else None
        )
        out[N] = {
            "K": ks,
            "error": mean,
            "half_ci": half,
            "curve_K": curve_k.tolist(),
            "curve": curve,
            "sweep_best_K": row["sweep_best_K"],
            "fit_best_K": row["fit_best_K"],
        }
    return out


def diversity_plotly(summary):
    """``(traces, layout)``: error vs K per budget, fitted curves, optima."""
    traces = []
    for N, s in diversity_series(summary).items():
        traces.append(
            {
                "type": "scatter",
                "mode": "markers+lines",
                "name": f"N = {N} measured",
                "x": s["K"],
                "y": s["error"],
                "error_y": {"type": "data", "array": s["half_ci"]},
            }
        )
        if s["curve"] is not None:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"N = {N} fit",
                    "x": s["curve_K"],
                    "y": s["curve"],
                    "line": {"dash": "dash"},
                }
            )
    layout = {
        "title": {"text": DIVERSITY_TITLE},
        "xaxis": {"title": {"text": "classes K (n = N / K samples each)"}, "type": "log"},
        "yaxis": {"title": {"text": "target test error (%)"}},
    }
    return traces, layout


def save_diversity_png(summary, path):
    """Error vs K per budget (with fits and optima), and predicted vs measured best K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    series = diversity_series(summary)
    pred = summary["prediction"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for i, (N, s) in enumerate(series.items()):
        colour = f"C{i}"
        full = N == pred["full_budget"]
        ax.errorbar(
            s["K"],
            s["error"],
            yerr=s["half_ci"],
            marker="o",
            capsize=3,
            color=colour,
            label=f"N = {N}" + (" (full, measured)" if full else ""),
        )
        if s["curve"] is not None:
            ax.plot(s["curve_K"], s["curve"], "--", color=colour, alpha=0.7)
        if s["fit_best_K"] is not None:
            ax.axvline(s["fit_best_K"], color=colour, ls=":", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("classes K (n = N / K samples each); dotted: fitted optimum")
    ax.set_ylabel("target test error (%)")
    ax.set_title("error vs K (dashed: fit on the small budgets)", fontsize=9)
    ax.legend(fontsize=8)

    budgets = sorted(series)
    measured = [summary["per_budget"][str(N)]["sweep_best_K"] for N in budgets]
    ci = [summary["per_budget"][str(N)]["sweep_best_K_ci95"] for N in budgets]
    bx.errorbar(
        budgets,
        measured,
        yerr=[[m - c[0] for m, c in zip(measured, ci)], [c[1] - m for m, c in zip(measured, ci)]],
        fmt="o",
        capsize=3,
        label="best K of each sweep (95% CI)",
    )
    if pred["fit_converged"]:
        fit_k = [summary["per_budget"][str(N)]["fit_best_K"] for N in budgets]
        bx.plot(budgets, fit_k, "s--", label="fit on the small budgets")
    bx.plot(
        [pred["full_budget"]],
        [pred["K_plan"]],
        "*",
        ms=14,
        color="black",
        label=f"planned K* = {pred['K_plan']}",
    )
    bx.set_xscale("log")
    for axis in (ax.xaxis, bx.xaxis):  # plain numbers on the log axes
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted({k for s in series.values() for k in s["K"]}))
    bx.set_xticks(budgets)
    bx.set_xlabel("budget N")
    bx.set_ylabel("best number of classes K*")
    bx.set_title("predicted vs measured best K", fontsize=9)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


INFLUENCE_TITLE = "Class influence (mean, 95% CI; coloured: q < 0.1)"
# the false-discovery level at which the chart colours a class
CHART_FDR = 0.1
INFLUENCE_COLOURS = {"helps": "#2a9d8f", "hurts": "#e76f51", "unclear": "#9e9e9e"}


def influence_plotly(results, top_n=None):
    """``(trace, layout)``: one bar per class, most helpful first, 95% CI error bars.

    Green: helps, red: hurts, at false-discovery level 0.1 (Benjamini-Hochberg
    over the classes; for a run without q-values, by the interval alone);
    grey: not settled. The bars' ``ids`` are the class names, so a click or
    a lasso names classes. ``top_n``: with more than twice as many classes,
    only the ``top_n`` most helpful and the ``top_n`` most harmful are drawn
    (a thousand bars are unreadable and slow to send).
    """
    rows = results.ranking()
    shown_all = top_n is None or len(rows) <= 2 * top_n
    if not shown_all:
        rows = rows[:top_n] + rows[-top_n:]
    names = [r[0] for r in rows]
    values = [r[1] for r in rows]
    q_all = results.q_values
    index = {c: i for i, c in enumerate(results.classes)}
    q = [None if q_all is None else float(q_all[index[c]]) for c in names]

    def colour(v, lo, hi, qc):
        settled = (lo > 0 or hi < 0) if qc is None else qc < CHART_FDR
        if not settled:
            return INFLUENCE_COLOURS["unclear"]
        return INFLUENCE_COLOURS["helps"] if v > 0 else INFLUENCE_COLOURS["hurts"]

    colours = [colour(v, lo, hi, qc) for (_, v, lo, hi), qc in zip(rows, q)]
    trace = {
        "type": "bar",
        "x": names,
        "y": values,
        "ids": names,
        "name": "influence",
        "marker": {"color": colours},
        "error_y": {
            "type": "data",
            "symmetric": False,
            "array": [hi - v for _, v, _, hi in rows],
            "arrayminus": [v - lo for _, v, lo, _ in rows],
        },
        "customdata": [
            [lo, hi, "n/a" if qc is None else f"{qc:.2g}"] for (_, _, lo, hi), qc in zip(rows, q)
        ],
        "hovertemplate": "%{x}: %{y:+.4f} [%{customdata[0]:+.4f}, %{customdata[1]:+.4f}] "
        "q=%{customdata[2]}<extra></extra>",
    }
    title = INFLUENCE_TITLE
    if not shown_all:
        title += f": the {top_n} most helpful and most harmful of {len(results.classes)}"
    layout = {
        "title": {"text": title},
        "xaxis": {
            "title": {"text": "pretraining class (click: show its samples)"},
            "tickangle": -60,
            "automargin": True,
        },
        "yaxis": {"title": {"text": "influence on the target output"}},
        "dragmode": "select",
        "showlegend": False,
        "margin": {"t": 40},
    }
    return trace, layout


SUBPOP_TITLE = "Subpopulations of each target class (size; hover: accuracy)"
CULPRIT_TITLE = "Pretraining classes behind the most failures"


def subpopulation_series(summary):
    """``[(target class, [(subpopulation, size, accuracy)], ...)]``, largest group first."""
    return [
        (c, [(g["pretraining_class"], g["size"], g["accuracy"]) for g in groups])
        for c, groups in summary["classes"].items()
    ]


def subpopulations_plotly(summary):
    """``(traces, layout)``: one stacked bar per target class, a segment per subpopulation."""
    series = subpopulation_series(summary)
    depth = max((len(groups) for _, groups in series), default=0)
    traces = []
    for j in range(depth):  # the j-th largest group of every class, in one trace
        rows = [(c, groups[j]) for c, groups in series if j < len(groups)]
        traces.append(
            {
                "type": "bar",
                "name": f"group {j + 1}",
                "x": [c for c, _ in rows],
                "y": [g[1] for _, g in rows],
                "text": [g[0] for _, g in rows],
                "customdata": [100 * g[2] for _, g in rows],
                "showlegend": False,
                "hovertemplate": "%{x} / %{text}: %{y} samples, %{customdata:.0f}% right"
                "<extra></extra>",
            }
        )
    layout = {
        "title": {"text": SUBPOP_TITLE},
        "barmode": "stack",
        "xaxis": {"title": {"text": "target class"}, "type": "category"},
        "yaxis": {"title": {"text": "test samples"}},
    }
    return traces, layout


def culprit_series(summary, top=12):
    """``(classes, strongest-culprit counts, top-k counts)`` of the leading culprits."""
    rows = summary.get("culprits", [])[:top]
    return [r["class"] for r in rows], [r["top1"] for r in rows], [r["in_top_k"] for r in rows]


def culprits_plotly(summary):
    """``(traces, layout)``: failures per culprit class (strongest culprit; among the top k)."""
    names, top1, in_top = culprit_series(summary)
    traces = [
        {"type": "bar", "name": "strongest culprit", "x": names, "y": top1},
        {"type": "bar", "name": "among the top culprits", "x": names, "y": in_top},
    ]
    layout = {
        "title": {"text": CULPRIT_TITLE},
        "barmode": "group",
        "xaxis": {"title": {"text": "pretraining class"}, "type": "category"},
        "yaxis": {"title": {"text": "failures"}},
    }
    return traces, layout


def save_subpopulations_png(summary, path):
    """Stacked bars of subpopulation sizes per target class, labelled by class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    for i, (_, groups) in enumerate(subpopulation_series(summary)):
        bottom = 0
        for j, (name, size, acc) in enumerate(groups):
            ax.bar(i, size, bottom=bottom, color=f"C{j % 10}", edgecolor="white")
            if size >= 4:
                ax.text(
                    i,
                    bottom + size / 2,
                    f"{name}\n{100 * acc:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=7,
                )
            bottom += size
    ax.set_xticks(range(len(summary["classes"])), list(summary["classes"]))
    ax.set_xlabel(
        "target class (segments: subpopulations, named by the pretraining class "
        "that helps them more than the rest of their class; % = accuracy of the "
        "run's models)",
        fontsize=8,
    )
    ax.set_ylabel("test samples")
    ax.set_title(SUBPOP_TITLE.split(" (")[0])
    return _save(fig, plt, path)


def save_culprits_png(summary, path):
    """Bars: failures per culprit class; the counterfactual in the title when present."""
    plt = _pyplot()
    names, top1, in_top = culprit_series(summary)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], top1, width=0.4, label="strongest culprit")
    ax.bar([i + 0.2 for i in x], in_top, width=0.4, label="among the top culprits")
    ax.set_xticks(list(x), names, rotation=45)
    ax.set_ylabel("failures")
    title = CULPRIT_TITLE
    check = summary.get("counterfactual")
    if check:
        on = check["on_blamed"]
        title += (
            f"\nremoving {check['culprit']!r} fixes {on['culprit_removed']['fixed']:.1f} "
            f"of its {check['blamed_failures']} failures per model; a random class "
            f"{on['random_removed']['fixed']:.1f}"
        )
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path):
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
