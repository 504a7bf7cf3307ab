"""Panel "Sample influence": from a target test sample to the pretraining images
that help or hurt it most; on the pretraining grid, images sorted by score.

Thin like the operators: the views come from :mod:`transferscope.explore`.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms

PLUGIN = "@transferscope/transferscope"
SHOW_LABELS = {True: "most helpful", False: "most harmful"}


class SampleInfluencePanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="sample_influence_panel",
            label="Sample influence",
            icon="image_search",
            surfaces="grid",
            help_markdown=(
                "Example-level influence of a transferscope sample-influence run. On the "
                "target dataset, select one test sample to see the pretraining images "
                "that help and hurt it most; on the pretraining dataset, sort the images "
                "by their score."
            ),
        )

    # --- events ---------------------------------------------------------------
    def on_load(self, ctx):
        self._load_run(ctx, ctx.panel.state.run_key)
        self._pick_sample(ctx)

    def on_change_dataset(self, ctx):
        pending = ctx.panel.state.pending
        ctx.panel.state.pending = None
        self._load_run(ctx, ctx.panel.state.run_key)
        if pending and ctx.dataset is not None and ctx.dataset.name == pending["dataset"]:
            self._set_view(ctx, pending)

    def on_change_run(self, ctx):
        self._load_run(ctx, ctx.params.get("value"))
        ctx.panel.state.sample_id = ctx.panel.state.table = None
        self._pick_sample(ctx)

    def on_change_selected(self, ctx):
        self._pick_sample(ctx)

    def on_change_current_sample(self, ctx):
        self._pick_sample(ctx)

    def show_helpful(self, ctx):
        self._show_images(ctx, helpful=True)

    def show_harmful(self, ctx):
        self._show_images(ctx, helpful=False)

    def sort_harmful_first(self, ctx):
        self._set_view(ctx, {"sort": True, "helpful": False})

    def sort_helpful_first(self, ctx):
        self._set_view(ctx, {"sort": True, "helpful": True})

    # --- work -----------------------------------------------------------------
    def _load_run(self, ctx, key):
        from transferscope.runs import sample_run_keys

        keys = sample_run_keys(ctx.dataset) if ctx.dataset is not None else []
        if key not in keys:
            key = keys[-1] if keys else None
        ctx.panel.state.runs = keys
        ctx.panel.state.run_key = key
        ctx.panel.state.role = None
        if key is not None:
            config = ctx.dataset.get_run_info(key).config
            ctx.panel.state.role = (
                "target" if ctx.dataset.name == config.target_dataset else "pretraining"
            )
            ctx.panel.state.pretrain_dataset = config.pretrain_dataset

    def _pick_sample(self, ctx):
        """The target sample to explain: the one open in the modal, else the only
        selected one; with neither (a closed modal), the last one stays."""
        selected = list(ctx.selected or [])
        sample_id = ctx.current_sample or (selected[0] if len(selected) == 1 else None)
        key = ctx.panel.state.run_key
        if sample_id is None or ctx.panel.state.role != "target":
            return
        try:
            sample = ctx.dataset[sample_id]
        except KeyError:  # a selection from another dataset or a deleted sample
            return
        helpful, harmful = sample[f"{key}_helpful"], sample[f"{key}_harmful"]
        if helpful is None:
            ctx.panel.state.message = f"This sample is not a test sample of run {key!r}."
            return
        ctx.panel.state.sample_id = sample_id
        ctx.panel.state.message = None
        ctx.panel.state.table = _score_table(helpful, harmful)

    def _show_images(self, ctx, helpful):
        pending = {
            "dataset": ctx.panel.state.pretrain_dataset,
            "target_dataset": ctx.dataset.name,
            "sample_id": ctx.panel.state.sample_id,
            "helpful": helpful,
        }
        # the images live on the pretraining dataset: open it, show the view once it is open
        ctx.panel.state.pending = pending
        ctx.ops.open_dataset(pending["dataset"])

    def _set_view(self, ctx, request):
        from transferscope import explore
        from transferscope.views import TransferScopeError

        key, helpful = ctx.panel.state.run_key, request["helpful"]
        try:
            if request.get("sort"):
                view = explore.images_by_score(ctx.dataset, key, helpful=helpful)
                what = f"every image it scored, {SHOW_LABELS[helpful]} first"
            else:
                view = explore.attributed_images(
                    request["target_dataset"], key, request["sample_id"], helpful=helpful
                )
                what = f"the {SHOW_LABELS[helpful]} images for target sample {request['sample_id']}"
        except TransferScopeError as e:
            ctx.ops.notify(str(e), variant="error")
            return
        ctx.ops.set_view(view)
        ctx.panel.state.message = f"Run {key!r}: {what} ({len(view)} samples)"

    # --- layout ---------------------------------------------------------------
    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        if not state.run_key:
            return _forms.panel_without_run(
                panel,
                "Sample influence",
                "sample-influence",
                f"{PLUGIN}/compute_sample_influence",
                "Compute sample influence...",
            )
        _forms.panel_run_choice(panel, state, "Sample-influence run", self.on_change_run)
        if state.role == "pretraining":
            buttons = panel.h_stack("sort", gap=1)
            buttons.btn(
                "harmful_first",
                label="Most harmful images first",
                on_click=self.sort_harmful_first,
                variant="contained",
            )
            buttons.btn(
                "helpful_first", label="Most helpful images first", on_click=self.sort_helpful_first
            )
        elif state.sample_id:
            panel.md(state.table, name="scores")
            buttons = panel.h_stack("show", gap=1)
            buttons.btn(
                "helpful",
                label="Show its most helpful pretraining images",
                on_click=self.show_helpful,
                variant="contained",
            )
            buttons.btn(
                "harmful",
                label="Show its most harmful pretraining images",
                on_click=self.show_harmful,
            )
        else:
            panel.md(
                "Select one target test sample (or open it) to see the pretraining images "
                "that help and hurt it most.",
                name="hint",
            )
        if state.message:
            panel.md(state.message, name="message")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))


def _score_table(helpful, harmful):
    """A markdown table of a target sample's most helpful and most harmful images."""
    rows = ["| most helpful | score | most harmful | score |", "|---|---:|---|---:|"]
    up, down = helpful.classifications, harmful.classifications
    for i in range(max(len(up), len(down))):
        cells = []
        for labels in (up, down):
            c = labels[i] if i < len(labels) else None
            cells += [c.label, f"{c.score:+.3g}"] if c is not None else ["", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
