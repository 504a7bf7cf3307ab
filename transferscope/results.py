"""What the jobs return: a summary that reports itself.

Each job returns its summary as a :class:`JobResults`: the plain dict stored in
its run (index it, or ``json.dumps`` it, as a dict), with ``describe()`` (the
report as lines of text, as the operators and the demo print it) and
``plotly()`` (its figure as ``(traces, layout)`` dicts, as the App draws it).
"""


class JobResults(dict):
    """A job's summary, with its report and its figure."""

    def describe(self):
        """The report: a list of lines of text."""
        raise NotImplementedError

    def plotly(self):
        """The figure: ``(traces, layout)``, plain dicts for plotly or an App plot."""
        raise NotImplementedError


def counts_plotly(title, counts):
    """``(traces, layout)``: one bar per ``(label, count)`` of ``counts``."""
    traces = [
        {
            "type": "bar",
            "x": [label for label, _ in counts],
            "y": [count for _, count in counts],
            "showlegend": False,
        }
    ]
    layout = {
        "title": {"text": title},
        "xaxis": {"type": "category"},
        "yaxis": {"title": {"text": "samples"}},
    }
    return traces, layout
