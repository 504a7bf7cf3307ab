"""Operator ``tag_classes``: tag (or untag) the pretraining classes chosen for removal."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms

RULES = ("harmful_fdr", "ci_below_zero", "most_harmful", "below_threshold", "classes")


class TagClasses(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "tag_classes",
            "transferscope: tag classes for removal",
            (
                "Tag the pretraining samples of harmful classes (chosen from a "
                "class-influence run) and save the curated view without them"
            ),
            delegated=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key, _ = _forms.influence_run_choice(inputs, ctx, pretraining_only=True)
        if key is None:
            return types.Property(inputs, view=types.View(label="Tag classes for removal"))
        results = ctx.dataset.load_run_results(key, cache=False)
        from transferscope.runs import run_record

        record = run_record(ctx.dataset, key, "curation_tags")

        actions = types.RadioGroup()
        actions.add_choice("tag", label="tag classes")
        actions.add_choice("undo", label="undo the last tagging")
        inputs.enum("action", actions.values(), default="tag", label="Action", view=actions)
        if ctx.params.get("action", "tag") == "undo":
            if record:
                inputs.view(
                    "undo_notice",
                    types.Notice(
                        label=(
                            f"Removes tag {record['tag']!r} from the {len(record['tagged_ids'])} samples "
                            f"it was added to ({', '.join(record['classes'])}) and deletes the saved "
                            f"view {record['view_name']!r}; other tags stay"
                        )
                    ),
                )
            else:
                _forms.block(inputs, "undo_error", "This run has no tagged classes to undo")
            return types.Property(inputs, view=types.View(label="Tag classes for removal"))

        if record:
            inputs.view(
                "replace_notice",
                types.Notice(
                    label=(f"Replaces the current tagging ({', '.join(record['classes'])})")
                ),
            )
        kwargs = _forms.selection_rule_inputs(inputs, ctx, results, RULES)
        _forms.selection_preview(inputs, results, kwargs)
        inputs.str("tag", default="remove", required=True, label="Sample tag")
        inputs.str(
            "view_name",
            default=f"{key}_curated",
            required=True,
            label="Saved view without the tagged samples",
        )
        return types.Property(inputs, view=types.View(label="Tag classes for removal"))

    def execute(self, ctx):
        from transferscope.curation import tag_classes, untag_classes

        p = ctx.params
        if p.get("action", "tag") == "undo":
            record = untag_classes(ctx.dataset, p["run_key"])
            action = "untagged"
        else:
            record = tag_classes(
                ctx.dataset,
                p["run_key"],
                rule=p.get("rule", RULES[0]),
                k=p.get("k"),
                threshold=p.get("threshold"),
                classes=p.get("classes"),
                fdr_level=p.get("fdr_level", 0.1),
                tag=p.get("tag", "remove"),
                view_name=p.get("view_name"),
            )
            action = "tagged"
        _forms.reload_if_immediate(ctx)
        return {
            "action": action,
            "classes": record["classes"],
            "num_samples": len(record["tagged_ids"]),
            "tag": record["tag"],
            "view_name": record["view_name"],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("action", label="Done")
        outputs.list("classes", types.String(), label="Classes")
        outputs.int("num_samples", label="Samples whose tag changed")
        outputs.str("tag", label="Tag")
        outputs.str("view_name", label="Saved view (tagged samples excluded)")
        return types.Property(outputs, view=types.View(label="Tag classes for removal"))
