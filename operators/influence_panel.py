"""Panel "Class influence": see a run's per-class influence, click to look, select to tag.

Thin like the operators: the views come from :mod:`transferscope.explore`, the
chart from :mod:`transferscope.plots`, the tagging from ``tag_classes``.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms

PLUGIN = "@transferscope/transferscope"
SHOW_CHOICES = {
    "pretraining": "its pretraining samples",
    "helped": "the target samples it helps most",
    "hurt": "the target samples it hurts most",
}
# with more classes than twice this, the chart draws this many from each end
CHART_CLASSES_PER_SIDE = 40


class ClassInfluencePanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="class_influence_panel",
            label="Class influence",
            icon="insights",
            surfaces="grid",
            help_markdown=(
                "Per-class influence of a transferscope run, with 95% intervals. Click a "
                "bar to show that class's samples; select bars (box or lasso) to tag "
                "their classes for removal."
            ),
        )

    # --- events ---------------------------------------------------------------
    def on_load(self, ctx):
        self._load_run(ctx, ctx.panel.state.run_key)

    def on_change_dataset(self, ctx):
        pending = ctx.panel.state.pending
        ctx.panel.state.pending = None
        self._load_run(ctx, ctx.panel.state.run_key)
        if pending and ctx.dataset is not None and ctx.dataset.name == pending["dataset"]:
            self._show(ctx, pending["class_name"], pending["show"])

    def on_change_run(self, ctx):
        self._load_run(ctx, ctx.params.get("value"))

    def on_change_show(self, ctx):
        ctx.panel.state.show = ctx.params.get("value") or "pretraining"

    def on_click_class(self, ctx):
        name = ctx.params.get("id") or ctx.params.get("x")
        if name:
            self._show(ctx, name, ctx.panel.state.show or "pretraining")

    def on_find_class(self, ctx):
        name = (ctx.params.get("value") or "").strip()
        if name:
            self._show(ctx, name, ctx.panel.state.show or "pretraining")

    def on_select_classes(self, ctx):
        points = ctx.params.get("data") or []
        ctx.panel.state.selected = sorted({p.get("id") or p.get("x") for p in points} - {None})

    def on_change_selected(self, ctx):
        ctx.panel.state.selected = list(ctx.params.get("value") or [])

    def tag_selected(self, ctx):
        from transferscope.curation import tag_classes
        from transferscope.influence_run import InfluenceRun
        from transferscope.views import TransferScopeError

        selected = list(ctx.panel.state.selected or [])
        key = ctx.panel.state.run_key
        try:
            config = InfluenceRun.load(ctx.dataset, key).run_config
            record = tag_classes(config.pretrain_dataset, key, rule="classes", classes=selected)
        except TransferScopeError as e:
            ctx.panel.state.message = f"Not tagged: {e}"
            ctx.ops.notify(str(e), variant="error")
            return
        ctx.panel.state.message = (
            f"Tagged {record['num_samples']} samples of {len(record['classes'])} class(es) "
            f"{record['tag']!r} on {config.pretrain_dataset}; saved view {record['view_name']!r}"
        )
        ctx.ops.notify(ctx.panel.state.message, variant="success")
        if ctx.dataset.name == config.pretrain_dataset:
            ctx.ops.reload_dataset()

    def show_all(self, ctx):
        ctx.ops.clear_view()
        ctx.panel.state.message = None

    # --- work -----------------------------------------------------------------
    def _load_run(self, ctx, key):
        from transferscope.influence_run import influence_run_keys
        from transferscope.plots import curation_plotly, influence_plotly

        keys = influence_run_keys(ctx.dataset) if ctx.dataset is not None else []
        if key not in keys:
            key = keys[-1] if keys else None
        ctx.panel.state.runs = keys
        ctx.panel.state.run_key = key
        ctx.panel.state.selected = []
        if key is None:
            return
        results = ctx.dataset.load_run_results(key, cache=False)
        ctx.panel.state.summary = reliability_line(results.metrics)
        trace, layout = influence_plotly(results, top_n=CHART_CLASSES_PER_SIDE)
        ctx.panel.state.chart_layout = layout
        ctx.panel.state.classes = trace["x"]
        ctx.panel.data.influence_chart = [trace]
        from transferscope.runs import run_record

        summary = run_record(ctx.dataset, key, "curation")
        if summary:
            traces, curation_layout = curation_plotly(summary)
            ctx.panel.state.curation_layout = curation_layout
            ctx.panel.data.curation_chart = traces
        else:
            ctx.panel.state.curation_layout = None

    def _show(self, ctx, class_name, show):
        from transferscope import explore
        from transferscope.influence_run import InfluenceRun
        from transferscope.views import TransferScopeError

        key = ctx.panel.state.run_key
        try:
            pretrain, target = InfluenceRun.load(ctx.dataset, key).datasets
            wanted = pretrain if show == "pretraining" else target
            if ctx.dataset.name != wanted.name:
                # the view lives on the other dataset: open it, show the view once it is open
                ctx.panel.state.pending = {
                    "dataset": wanted.name,
                    "class_name": class_name,
                    "show": show,
                }
                ctx.ops.open_dataset(wanted.name)
                return
            if show == "pretraining":
                view = explore.class_samples(ctx.dataset, key, class_name)
            else:
                view = explore.most_influenced(
                    ctx.dataset, key, class_name, helped=show == "helped"
                )
        except TransferScopeError as e:
            ctx.ops.notify(str(e), variant="error")
            return
        ctx.ops.set_view(view)
        ctx.panel.state.message = (
            f"{class_name}: {SHOW_CHOICES[show]} ({len(view)} samples of {ctx.dataset.name})"
        )

    # --- layout ---------------------------------------------------------------
    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        compute_uri = f"{PLUGIN}/compute_class_influence"
        if not state.run_key:
            return _forms.panel_without_run(
                panel,
                "Class influence",
                "class-influence",
                compute_uri,
                "Compute class influence...",
            )
        _forms.panel_run_choice(panel, state, "Influence run", self.on_change_run)
        shows = types.RadioGroup(orientation="horizontal")
        for value, label in SHOW_CHOICES.items():
            shows.add_choice(value, label=label)
        panel.enum(
            "show",
            list(SHOW_CHOICES),
            default=state.show or "pretraining",
            label="Click a class to show",
            view=shows,
            on_change=self.on_change_show,
        )
        if state.summary:
            panel.md(state.summary, name="reliability")
        panel.plot(
            "influence_chart",
            layout=state.chart_layout,
            config={"displaylogo": False},
            on_click=self.on_click_class,
            on_selected=self.on_select_classes,
        )
        panel.str(
            "find_class",
            label="Find a class by name (shows it as a click would)",
            on_change=self.on_find_class,
        )
        if state.message:
            panel.md(state.message, name="message")

        selected = list(state.selected or [])
        choose = types.DropdownView(multiple=True)
        for name in dict.fromkeys([*(state.classes or []), *selected]):  # the chart's, in order
            choose.add_choice(name, label=name)
        panel.list(
            "selected",
            types.String(),
            default=selected,
            view=choose,
            label="Selected classes (box/lasso on the chart, or pick)",
            on_change=self.on_change_selected,
        )
        buttons = panel.h_stack("actions", gap=1)
        buttons.btn(
            "tag",
            label=f"Tag {len(selected)} class(es) for removal",
            on_click=self.tag_selected,
            disabled=not selected,
            variant="contained",
        )
        buttons.btn("show_all", label="Show all samples", on_click=self.show_all)
        buttons.btn(
            "evaluate",
            label="Evaluate curation...",
            on_click=f"{PLUGIN}/evaluate_curation",
            prompt=True,
            params={"run_key": state.run_key},
        )
        buttons.btn(
            "compute", label="Compute class influence...", on_click=compute_uri, prompt=True
        )
        if state.curation_layout:
            panel.plot(
                "curation_chart", layout=state.curation_layout, config={"displaylogo": False}
            )
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))


def reliability_line(metrics):
    """One line on how far a run's answer can be trusted (figures from its metrics)."""
    import math

    def fig(value):
        return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"

    parts = [f"{metrics.get('num_models')} models, {metrics.get('design', 'pairs')} design"]
    if "num_harmful_at_fdr_0.1" in metrics:
        parts.append(
            f"{metrics['num_harmful_at_fdr_0.1']} class(es) harmful at false-discovery level 0.1"
        )
    parts.append(f"split-half Spearman {fig(metrics.get('split_half_spearman'))}")
    if "split_half_z_sd" in metrics:
        parts.append(
            f"split-half z spread {fig(metrics['split_half_z_sd'])} (1 when the "
            f"intervals are right)"
        )
    if metrics.get("lds") is not None:
        parts.append(
            f"LDS {fig(metrics['lds'])} on {metrics.get('num_holdout_models')} held-out models"
        )
    return "; ".join(parts)
