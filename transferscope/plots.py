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
        traces.append({
            "type": "scatter", "mode": "lines+markers", "name": label, "x": ks, "y": acc,
            "line": {"color": colour},
            "error_y": {"type": "data", "symmetric": False,
                        "array": [h - a for a, h in zip(acc, hi)],
                        "arrayminus": [a - l for a, l in zip(acc, lo)]},
        })
    cur = _curated_point(summary)
    if cur is not None:
        traces.append({
            "type": "scatter", "mode": "markers", "name": f"curated ({summary['rule']})",
            "x": [cur["k"]], "y": [100 * cur["accuracy"]], "marker": {"size": 12, "symbol": "star"},
        })
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
        ax.errorbar([k + (j - 1) * step for k in ks], acc, yerr=[[a - l for a, l in zip(acc, lo)],
                                   [h - a for a, h in zip(acc, hi)]],
                    marker="o", capsize=3, color=colour, label=label)
    cur = _curated_point(summary)
    if cur is not None:
        ax.plot([cur["k"]], [100 * cur["accuracy"]], "*", ms=14, color="black",
                label=f"curated ({summary['rule']})")
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
