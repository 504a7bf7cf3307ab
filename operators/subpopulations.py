"""Operators ``find_subpopulations`` and ``explain_failures``: readings of an influence run."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms


class FindSubpopulations(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "find_subpopulations",
            "transferscope: find subpopulations",
            "Split each target class by the pretraining classes that help its samples most",
            delegated=False,  # reads the stored run; no training
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key, _ = _forms.influence_run_choice(inputs, ctx, name="influence_run")
        if key is None:
            return types.Property(inputs, view=types.View(label="Find subpopulations"))
        modes = types.RadioGroup()
        modes.add_choice("top", label="by each sample's most helpful pretraining class")
        modes.add_choice("k", label="k groups per class (k-means on the influence z-scores)")
        inputs.enum("mode", modes.values(), default="k", label="Grouping", view=modes)
        if ctx.params.get("mode", "k") == "k":
            inputs.int("k", default=2, required=True, label="Groups per target class (k >= 2)")
            k = ctx.params.get("k", 2)
            if k is not None and k < 2:
                _forms.block(inputs, "k_error", "k must be at least 2")
        inputs.str(
            "target_classes",
            default="",
            label="Target classes (comma-separated)",
            description="empty: every target class",
        )
        _forms.run_key_input(inputs, ctx, default=f"{key}_subpops")
        return types.Property(inputs, view=types.View(label="Find subpopulations"))

    def execute(self, ctx):
        from transferscope.subpopulations import find_subpopulations

        p = ctx.params
        classes = [c.strip() for c in (p.get("target_classes") or "").split(",") if c.strip()]
        summary = find_subpopulations(
            ctx.dataset,
            p["influence_run"],
            key=p["run_key"],
            k=p.get("k", 2) if p.get("mode", "k") == "k" else None,
            target_classes=classes or None,
            overwrite=p.get("overwrite", False),
        )
        _forms.reload_if_immediate(ctx)
        traces, _ = summary.plotly()
        return {
            "report": summary.describe(),
            "sizes": traces,
            "saved_views": ", ".join(summary["saved_views"]),
        }

    def resolve_output(self, ctx):
        from transferscope.plots import SUBPOP_TITLE

        outputs = types.Object()
        outputs.list("report", types.String(), label="Subpopulations")
        outputs.plot("sizes", layout={"title": {"text": SUBPOP_TITLE}, "barmode": "stack"})
        outputs.str("saved_views", label="Saved views")
        return types.Property(outputs, view=types.View(label="Subpopulations"))


class ExplainFailures(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "explain_failures",
            "transferscope: explain failures",
            "Find the pretraining classes that push misclassified target samples to the "
            "wrong answer, and check the top one by retraining without it",
        )

    def resolve_input(self, ctx):
        from transferscope.views import classification_fields

        inputs = types.Object()
        key, _ = _forms.influence_run_choice(inputs, ctx, name="influence_run")
        if key is None:
            return types.Property(inputs, view=types.View(label="Explain failures"))
        sources = ["(the run's models)"] + classification_fields(ctx.dataset)
        choices = types.DropdownView()
        for s in sources:
            choices.add_choice(s, label=s)
        inputs.enum(
            "pred_field",
            sources,
            default=sources[0],
            label="Predictions",
            description="whose mistakes to explain",
            view=choices,
        )
        inputs.int("top_k", default=3, label="Culprits per failure")
        inputs.bool(
            "check_top",
            default=True,
            label="Check the top culprit by retraining",
            description="without it, and without a random class, several seeds each",
        )
        if ctx.params.get("check_top", True):
            _forms.stopping_inputs(inputs, ctx)
            _forms.training_inputs(inputs, ctx)
        _forms.run_key_input(inputs, ctx, default=f"{key}_failures")
        return types.Property(inputs, view=types.View(label="Explain failures"))

    def execute(self, ctx):
        from transferscope.subpopulations import explain_failures

        p = ctx.params
        pred = p.get("pred_field")
        check = p.get("check_top", True)
        summary = explain_failures(
            ctx.dataset,
            p["influence_run"],
            key=p["run_key"],
            pred_field=None if not pred or pred.startswith("(") else pred,
            top_k=p.get("top_k", 3),
            check_top=check,
            overwrite=p.get("overwrite", False),
            progress=_forms.progress_reporter(ctx, "models retrained"),
            **(_forms.stopping_kwargs(p) | _forms.executor_kwargs(p) if check else {}),
        )
        _forms.reload_if_immediate(ctx)
        traces, _ = summary.plotly()
        return {
            "report": summary.describe(),
            "culprits": traces,
            "num_failures": summary["num_failures"],
        }

    def resolve_output(self, ctx):
        from transferscope.plots import CULPRIT_TITLE

        outputs = types.Object()
        outputs.int("num_failures", label="Failures")
        outputs.list("report", types.String(), label="Explanation")
        outputs.plot("culprits", layout={"title": {"text": CULPRIT_TITLE}, "barmode": "group"})
        return types.Property(outputs, view=types.View(label="Failures explained"))
