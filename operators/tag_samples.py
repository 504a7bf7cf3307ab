"""Operator ``tag_samples``: tag the pretraining images a sample-influence run finds most harmful."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms


class TagSamples(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "tag_samples",
            "transferscope: tag images for removal",
            (
                "Tag the pretraining images a sample-influence run scores most harmful "
                "and save the curated view without them"
            ),
            delegated=False,
        )

    def resolve_input(self, ctx):
        from transferscope.curation import DEFAULT_IMAGE_TAG, SAMPLE_RULES
        from transferscope.runs import sample_run_keys

        inputs = types.Object()
        label = "Tag images for removal"
        keys = sample_run_keys(ctx.dataset) if ctx.dataset is not None else []
        keys = [
            k
            for k in keys
            if ctx.dataset.get_run_info(k).config.pretrain_dataset == ctx.dataset.name
        ]
        if not keys:
            _forms.block(
                inputs,
                "no_runs",
                "This dataset is the pretraining dataset of no sample-influence run yet: "
                "run 'compute sample influence' first",
            )
            return types.Property(inputs, view=types.View(label=label))
        runs = types.DropdownView()
        for k in keys:
            runs.add_choice(k, label=k)
        inputs.enum(
            "influence_key",
            keys,
            default=keys[-1],
            required=True,
            label="Sample-influence run",
            view=runs,
        )
        rules = types.RadioGroup()
        rules.add_choice("most_harmful", label="the k most harmful images")
        rules.add_choice("below_threshold", label="every image scoring below a threshold")
        inputs.enum("rule", list(SAMPLE_RULES), default="most_harmful", label="Choose", view=rules)
        if ctx.params.get("rule", "most_harmful") == "most_harmful":
            inputs.int("k", default=100, required=True, label="Number of images (k)")
        else:
            inputs.float("threshold", default=0.0, required=True, label="Score threshold")
        inputs.str("tag", default=DEFAULT_IMAGE_TAG, required=True, label="Tag")
        return types.Property(inputs, view=types.View(label=label))

    def execute(self, ctx):
        from transferscope import tag_samples

        p = ctx.params
        record = tag_samples(
            ctx.dataset,
            p["influence_key"],
            **_forms.given(p, ("rule", "k", "threshold", "tag")),
        )
        ctx.trigger("reload_dataset")
        return {k: record[k] for k in ("num_samples", "tag", "view_name")}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_samples", label="Images tagged")
        outputs.str("tag", label="Tag")
        outputs.str("view_name", label="Saved view without them")
        return types.Property(outputs, view=types.View(label="Images tagged"))
