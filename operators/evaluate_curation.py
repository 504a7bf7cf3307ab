"""Operator ``evaluate_curation``: retrain to prove a curation (the paper's counterfactual)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms

RULES = ("harmful_fdr", "ci_below_zero", "most_harmful", "below_threshold")


class EvaluateCuration(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "evaluate_curation",
            "transferscope: evaluate a curation by retraining",
            (
                "Retrain on the full, curated and randomly curated pretraining "
                "sets, seed after seed until the verdicts settle, and compare"
            ),
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key, config = _forms.influence_run_choice(inputs, ctx)
        if key is None:
            return types.Property(inputs, view=types.View(label="Evaluate a curation"))
        results = ctx.dataset.load_run_results(key, cache=False)
        tagged = _tagging_record(config, key)
        rules = (("tagged",) if tagged else ()) + RULES
        kwargs = _forms.selection_rule_inputs(inputs, ctx, results, rules)
        if kwargs["rule"] is None:
            inputs.view(
                "selection",
                types.Notice(
                    label=f"{len(tagged['classes'])} tagged class(es): {', '.join(tagged['classes'])}"
                ),
            )
        else:
            _forms.selection_preview(inputs, results, kwargs)

        num_classes = len(results.classes)
        _forms.stopping_inputs(inputs, ctx)
        inputs.bool(
            "confirm_each",
            default=True,
            label="Confirm each class",
            description="also retrain without each curated class alone, to confirm each selection",
        )
        inputs.bool(
            "sweep",
            default=True,
            label="Sweep the number of classes removed",
            description="also k = step, 2*step, ... up to the maximum, in three orders",
        )
        if ctx.params.get("sweep", True):
            inputs.int("sweep_max", default=min(16, num_classes - 2), label="Up to k =")
            inputs.int("sweep_step", default=4, label="in steps of")
        _forms.training_inputs(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Evaluate a curation"))

    def execute(self, ctx):
        from transferscope.curation import evaluate_curation

        p = ctx.params
        sweep_ks = None
        if p.get("sweep", True):
            step = max(1, int(p.get("sweep_step") or 4))
            sweep_ks = list(range(step, int(p.get("sweep_max") or 0) + 1, step))
        summary = evaluate_curation(
            ctx.dataset,
            p["run_key"],
            rule=p.get("rule") if p.get("rule") != "tagged" else None,
            k=p.get("k"),
            threshold=p.get("threshold"),
            fdr_level=p.get("fdr_level", 0.1),
            confirm_each=p.get("confirm_each", True),
            sweep_ks=sweep_ks,
            progress=_forms.progress_reporter(ctx, "models retrained"),
            **_forms.stopping_kwargs(p),
            **_forms.executor_kwargs(p),
        )
        traces, _ = summary.plotly()
        return {"report": summary.describe(), "accuracy_vs_removed": traces}

    def resolve_output(self, ctx):
        from transferscope.plots import CURATION_LAYOUT

        outputs = types.Object()
        outputs.list("report", types.String(), label="Counterfactual")
        outputs.plot("accuracy_vs_removed", layout=CURATION_LAYOUT)
        return types.Property(outputs, view=types.View(label="Curation evaluated"))


def _tagging_record(config, key):
    import fiftyone as fo

    from transferscope.runs import run_record

    if not fo.dataset_exists(config.pretrain_dataset):
        return None
    return run_record(fo.load_dataset(config.pretrain_dataset), key, "curation_tags")
