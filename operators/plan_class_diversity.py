"""Operator ``plan_class_diversity``: the intra-/inter-class diversity trade-off."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms


class PlanClassDiversity(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "plan_class_diversity",
            "transferscope: plan the number of pretraining classes",
            "Sweep classes x samples per class at small budgets, predict the best number of "
            "classes for the full budget, and save the plan as a view",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key, _ = _forms.influence_run_choice(inputs, ctx, name="influence_run")
        if key is None:
            return types.Property(inputs, view=types.View(label="Plan class diversity"))
        inputs.str(
            "budgets",
            default="",
            label="Small budgets N (comma-separated)",
            description="two or more; empty: a quarter and a half of the full budget",
        )
        inputs.int(
            "full_budget",
            required=False,
            label="Full budget N (samples)",
            description="empty: classes x median class size / 4",
        )
        budgets = ctx.params.get("budgets") or ""
        try:
            [int(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            _forms.block(inputs, "budgets_error", f"budgets must be integers: {budgets!r}")
        inputs.int("num_points", default=4, label="Points on the K grid (>= 3)")
        if (ctx.params.get("num_points") or 4) < 3:
            _forms.block(inputs, "grid_error", "the K grid needs at least 3 points")
        inputs.int("num_seeds", default=3, label="Seeds per point (>= 2)")
        classes = types.RadioGroup()
        classes.add_choice("influence", label="most helpful classes first (influence)")
        classes.add_choice("random", label="random classes")
        inputs.enum(
            "class_choice",
            classes.values(),
            default="influence",
            label="Classes of the plan",
            view=classes,
        )
        samples = types.RadioGroup()
        samples.add_choice("coverage", label="coverage (FAISS k-means on the run's backbone)")
        samples.add_choice("random", label="random")
        inputs.enum(
            "sample_choice",
            samples.values(),
            default="coverage",
            label="Samples of the plan",
            view=samples,
        )
        inputs.bool(
            "verify",
            default=True,
            label="Check at the full budget",
            description="sweep the full budget too, and train the plan against all "
            "classes, seed after seed until the verdict settles",
        )
        if ctx.params.get("verify", True):
            _forms.stopping_inputs(inputs, ctx, outcome=False)
        _forms.training_inputs(inputs, ctx)
        _forms.run_key_input(inputs, ctx, default="diversity")
        return types.Property(inputs, view=types.View(label="Plan class diversity"))

    def execute(self, ctx):
        from transferscope.diversity import plan_class_diversity

        p = ctx.params
        budgets = [int(b) for b in (p.get("budgets") or "").split(",") if b.strip()] or None
        summary = plan_class_diversity(
            ctx.dataset,
            p["influence_run"],
            key=p["run_key"],
            budgets=budgets,
            full_budget=p.get("full_budget"),
            num_points=p.get("num_points", 4),
            num_seeds=p.get("num_seeds", 3),
            class_choice=p.get("class_choice", "influence"),
            sample_choice=p.get("sample_choice", "coverage"),
            verify=p.get("verify", True),
            overwrite=p.get("overwrite", False),
            progress=_forms.progress_reporter(ctx, "models trained"),
            **_forms.stopping_kwargs(p, outcome=False),
            **_forms.executor_kwargs(p),
        )
        _forms.reload_if_immediate(ctx)
        traces, _ = summary.plotly()
        return {
            "report": summary.describe(),
            "error_vs_classes": traces,
            "saved_view": f"{p['run_key']}_plan",
        }

    def resolve_output(self, ctx):
        from transferscope.plots import DIVERSITY_TITLE

        outputs = types.Object()
        outputs.list("report", types.String(), label="Plan")
        outputs.plot(
            "error_vs_classes",
            layout={"title": {"text": DIVERSITY_TITLE}, "xaxis": {"type": "log"}},
        )
        outputs.str("saved_view", label="Saved view")
        return types.Property(outputs, view=types.View(label="Class diversity plan"))
