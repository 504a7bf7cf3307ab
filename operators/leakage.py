"""Operators ``detect_leakage`` and ``find_near_duplicates`` (FAISS)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms

# each way to set the cut, and the form values of the other ways
CUTS = {
    "pixels": ("max_distance", "false_positive_rate", "calibration_split"),
    "distance": ("false_positive_rate", "calibration_split"),
    "calibrated": ("max_distance", "match_threshold"),
}
# pixel matching: the form's choices, "off" for none
AUGMENTATION_CHOICES = {
    "standard": "shifts, rotations, crops (default)",
    "shifts": "shifts only",
    "none": "untransformed pixels only",
    "off": "no pixel matching",
}


class DetectLeakage(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "detect_leakage",
            "transferscope: detect leakage from the pretraining set",
            "Find target samples that (nearly) copy a pretraining image",
        )

    def resolve_input(self, ctx):
        from transferscope.leakage import DEFAULT_MAX_DISTANCE, detect_leakage

        d = _forms.defaults_of(detect_leakage)

        inputs = types.Object()
        kwargs = _forms.embeddings_source_inputs(inputs, ctx, "target and pretraining datasets")
        if ctx.params.get("source", "run") != "run":
            _forms.dataset_choice(
                inputs,
                ctx,
                "pretrain_dataset",
                "Pretraining dataset",
                "the dataset that may contain copies",
            )
            inputs.str(
                "target_split",
                required=False,
                label="Target split (tag)",
                description="only samples with this tag (default: all)",
            )
        _pixel_inputs(inputs, ctx, d)
        cuts = types.RadioGroup()
        cuts.add_choice("pixels", label="verified pixel matches (embeddings propose candidates)")
        cuts.add_choice("distance", label="also at an embedding distance I choose")
        cuts.add_choice("calibrated", label="calibrated for a false-positive rate")
        inputs.enum("cut", list(CUTS), default="pixels", label="Tagging cut", view=cuts)
        cut = ctx.params.get("cut", "pixels")
        if cut == "distance":
            inputs.float(
                "max_distance",
                default=DEFAULT_MAX_DISTANCE,
                label="Max cosine distance",
                description="closeness is 1 for a copy and 0 at this distance",
            )
        elif cut == "calibrated":
            inputs.float(
                "false_positive_rate",
                default=0.01,
                label="False-positive rate, in (0, 1)",
                description="calibrated on target images that are not checked",
            )
            if ctx.params.get("source", "run") != "run":
                inputs.str(
                    "calibration_split",
                    required=True,
                    label="Reference split (tag)",
                    description="target samples that are not leaks nor checked, e.g. train",
                )
        inputs.float("threshold", default=d["threshold"], label="Leak score threshold, in (0, 1]")
        if kwargs.get("influence_key") is not None:
            inputs.float(
                "influence_weight",
                default=d["influence_weight"],
                label="Weight of the influence signal",
            )
        thr = ctx.params.get("threshold", d["threshold"])
        if thr is not None and not 0 < thr <= 1:
            _forms.block(inputs, "threshold_error", "the threshold must lie in (0, 1]")
        _forms.index_and_device_inputs(inputs)
        inputs.str("tag", default=d["tag"], label="Tag for likely leaks")
        _forms.run_key_input(inputs, ctx, default="leakage")
        return types.Property(inputs, view=types.View(label="Detect leakage"))

    def execute(self, ctx):
        from transferscope.leakage import detect_leakage

        p = dict(ctx.params)
        for name in CUTS[p.get("cut", "pixels")]:  # the other cuts' values stay unused
            p.pop(name, None)
        augmentations = p.get("augmentations", "standard")
        summary = detect_leakage(
            ctx.dataset,
            pretrain_dataset=p.get("pretrain_dataset"),
            key=p["run_key"],
            target_split=p.get("target_split") or None,
            augmentations=None if augmentations == "off" else augmentations,
            **_forms.given(
                p,
                (
                    "max_distance",
                    "match_threshold",
                    "false_positive_rate",
                    "calibration_split",
                    "threshold",
                    "influence_weight",
                    "index",
                    "device",
                    "tag",
                    "overwrite",
                ),
            ),
            progress=_forms.progress_reporter(ctx, "steps"),
            **_forms.embeddings_kwargs(p),
        )
        _forms.reload_if_immediate(ctx)
        return {
            k: summary[k]
            for k in ("num_targets", "num_leaks", "num_exact_file_copies", "index", "recall_at_1")
        } | {"saved_view": f"{p['run_key']}_likely_leaks"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_targets", label="Target samples checked")
        outputs.int("num_leaks", label="Likely leaks (tagged)")
        outputs.int("num_exact_file_copies", label="Byte-identical copies")
        outputs.str("index", label="FAISS index")
        outputs.float("recall_at_1", label="Index recall@1 (1.0 for exact)")
        outputs.str("saved_view", label="Saved view")
        return types.Property(outputs, view=types.View(label="Leakage"))


def _pixel_inputs(inputs, ctx, defaults):
    choices = types.Dropdown()
    for name, label in AUGMENTATION_CHOICES.items():
        choices.add_choice(name, label=label)
    inputs.enum(
        "augmentations",
        list(AUGMENTATION_CHOICES),
        default="standard",
        label="Pixel matching",
        description="searched transformations of each target image, verified by correlation",
        view=choices,
    )
    on = ctx.params.get("augmentations", "standard") != "off"
    if on and ctx.params.get("cut", "pixels") != "calibrated":
        inputs.float(
            "match_threshold",
            default=defaults["match_threshold"],
            label="Match correlation, in (0, 1)",
            description="a verified match with this normalised cross-correlation reaches "
            "the leak score threshold",
        )


class FindNearDuplicates(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "find_near_duplicates",
            "transferscope: find near-duplicate groups",
            "Group near-identical images of this dataset (FAISS and file hashes)",
        )

    def resolve_input(self, ctx):
        from transferscope.leakage import find_near_duplicates

        d = _forms.defaults_of(find_near_duplicates)

        inputs = types.Object()
        _forms.embeddings_source_inputs(inputs, ctx, "dataset")
        inputs.float("max_distance", default=d["max_distance"], label="Max cosine distance")
        inputs.int(
            "num_neighbors", default=d["num_neighbors"], label="Neighbours checked per sample"
        )
        _forms.index_and_device_inputs(inputs)
        inputs.str("tag", default=d["tag"], label="Tag for grouped samples")
        _forms.run_key_input(inputs, ctx, default="near_duplicates")
        return types.Property(inputs, view=types.View(label="Find near-duplicates"))

    def execute(self, ctx):
        from transferscope.leakage import find_near_duplicates

        p = ctx.params
        summary = find_near_duplicates(
            ctx.dataset,
            key=p["run_key"],
            **_forms.given(
                p, ("max_distance", "num_neighbors", "index", "device", "tag", "overwrite")
            ),
            progress=_forms.progress_reporter(ctx, "steps"),
            **_forms.embeddings_kwargs(p),
        )
        _forms.reload_if_immediate(ctx)
        return {
            "num_groups": summary["num_groups"],
            "num_grouped_samples": summary["num_grouped_samples"],
            "saved_view": f"{p['run_key']}_groups",
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_groups", label="Groups")
        outputs.int("num_grouped_samples", label="Samples in a group (tagged)")
        outputs.str("saved_view", label="Saved view")
        return types.Property(outputs, view=types.View(label="Near-duplicates"))
