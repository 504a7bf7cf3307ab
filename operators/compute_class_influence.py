"""Operator ``compute_class_influence``: form -> SDK call -> progress -> reload."""

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms

# the form's settings passed to the SDK as they are (empty ones: its defaults)
FORM_SETTINGS = (
    "split_by",
    "split_field",
    "num_models",
    "alpha",
    "design",
    "estimator",
    "epochs",
    "arch",
    "image_size",
    "resize",
    "transfer",
    "seed",
    "overwrite",
    "precision",
)


class ComputeClassInfluence(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "compute_class_influence",
            "transferscope: compute class influence",
            (
                "Train models on random halves of the pretraining classes, "
                "transfer each to the target task, and score how much each "
                "pretraining class helps or hurts each target test sample"
            ),
        )

    def resolve_input(self, ctx):
        from transferscope.influence import influence_defaults

        d = influence_defaults()  # the SDK's defaults, so the form cannot drift from them
        inputs = types.Object()
        tgt = _dataset_inputs(inputs, ctx)
        _split_inputs(inputs, ctx, tgt)
        _design_inputs(inputs, ctx, d)
        _protocol_inputs(inputs, ctx, d)
        _forms.training_inputs(inputs, ctx)
        precision = types.RadioGroup()
        for value, label in (
            ("auto", "auto (bf16 on CUDA, fp32 on a CPU)"),
            ("fp32", "fp32"),
            ("bf16", "bf16 autocast"),
        ):
            precision.add_choice(value, label=label)
        inputs.enum(
            "precision",
            precision.values(),
            default=d["precision"],
            label="Precision",
            view=precision,
        )
        inputs.int("seed", default=d["seed"], label="Seed")
        _forms.run_key_input(inputs, ctx, default="influence")
        return types.Property(inputs, view=types.View(label="Compute class influence"))

    def execute(self, ctx):
        from transferscope import compute_class_influence
        from transferscope.influence import influence_defaults

        p, d = ctx.params, influence_defaults()
        # what the form left empty takes the SDK's own default
        chosen = _forms.given(p, FORM_SETTINGS)
        results = compute_class_influence(
            p["pretrain_dataset"],
            p["target_dataset"],
            p["run_key"],
            pretrain_label_field=p["pretrain_label_field"],
            target_label_field=p["target_label_field"],
            train_split=p["train_split"],
            test_split=p["test_split"],
            holdout_models=int(p.get("holdout_models", d["holdout_models"]) or 0),
            channels=None if p.get("channels", "auto") == "auto" else int(p["channels"]),
            augment_shift=int(p.get("augment_shift") or 0),
            progress=_forms.progress_reporter(ctx, "models trained"),
            **chosen,
            **_forms.executor_kwargs(p),
        )
        _forms.reload_if_immediate(ctx)
        order = results.class_influence.argsort(kind="stable")
        m = results.metrics
        return {
            "run_key": p["run_key"],
            "design": f"{m['design']}, {m['num_models']} models; {m['design_note']}".rstrip("; "),
            "most_helpful": [results.describe_class(i) for i in order[::-1][:5]],
            "most_harmful": [results.describe_class(i) for i in order[:5]],
            "num_harmful_at_fdr": m["num_harmful_at_fdr_0.1"],
            "split_half_spearman": m["split_half_spearman"],
            "split_half_z_sd": m["split_half_z_sd"],
            "lds": m.get("lds"),
            "mean_test_accuracy": m["mean_test_accuracy"],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("run_key", label="Run key")
        outputs.str("design", label="Design")
        outputs.list(
            "most_helpful",
            types.String(),
            label="Most helpful classes (influence [95% CI] q-value)",
        )
        outputs.list(
            "most_harmful",
            types.String(),
            label="Most harmful classes (influence [95% CI] q-value)",
        )
        outputs.int("num_harmful_at_fdr", label="Harmful classes at false-discovery level 0.1")
        outputs.float("split_half_spearman", label="Split-half Spearman of the class ranking")
        outputs.float(
            "split_half_z_sd",
            label="Split-half z-score spread (about 1 when the intervals are right)",
        )
        outputs.float("lds", label="Linear datamodeling score on the held-out models")
        outputs.float("mean_test_accuracy", label="Mean target test accuracy of the models")
        return types.Property(outputs, view=types.View(label="Class influence"))


def _dataset_inputs(inputs, ctx):
    """The two datasets and their label fields; the target dataset's name."""
    current = ctx.dataset.name if ctx.dataset is not None else None
    pre = _forms.dataset_choice(
        inputs,
        ctx,
        "pretrain_dataset",
        "Pretraining dataset",
        "the dataset whose classes are scored",
        default=current,
    )
    _forms.classification_field_choice(
        inputs, ctx, "pretrain_label_field", pre, "Pretraining label field"
    )
    tgt = _forms.dataset_choice(
        inputs,
        ctx,
        "target_dataset",
        "Target dataset",
        "the downstream task (train and test splits)",
        default=current,
    )
    _forms.classification_field_choice(inputs, ctx, "target_label_field", tgt, "Target label field")
    return tgt


def _split_inputs(inputs, ctx, tgt):
    """How the target's train and test splits are given, and which they are."""
    split_kinds = types.RadioGroup()
    for kind, label in (
        ("tags", "sample tags"),
        ("field", "a field's value"),
        ("saved_view", "saved views"),
    ):
        split_kinds.add_choice(kind, label=label)
    inputs.enum(
        "split_by",
        split_kinds.values(),
        default="tags",
        label="Splits are given by",
        view=split_kinds,
    )
    split_by = ctx.params.get("split_by", "tags")
    if split_by == "field":
        inputs.str("split_field", default="split", label="Split field")
    options = _split_options(tgt, split_by)
    for name, default in (("train_split", "train"), ("test_split", "test")):
        label = name.replace("_", " ").capitalize()
        if options:
            view = types.DropdownView()
            for o in options:
                view.add_choice(o, label=o)
            inputs.enum(
                name,
                options,
                default=default if default in options else None,
                required=True,
                label=label,
                view=view,
            )
        else:
            inputs.str(name, default=default, required=True, label=label)


def _design_inputs(inputs, ctx, d):
    """How many models, on which subsets, estimated how."""
    inputs.int(
        "num_models",
        default=d["num_models"],
        label="Number of models",
        description="more models, tighter estimates (about 3 s each on a 2-core "
        "CPU for the demo); an orthogonal design rounds up to whole "
        "blocks (a block is about twice the number of classes)",
    )
    designs = types.RadioGroup()
    for value, label in (
        ("orthogonal", "orthogonal array (balanced, other classes cancel)"),
        ("independent", "independent random halves (the paper's)"),
        ("balanced", "balanced random halves"),
        ("pairs", "complementary pairs (before 0.2)"),
    ):
        designs.add_choice(value, label=label)
    inputs.enum(
        "design", designs.values(), default=d["design"], label="Subset design", view=designs
    )
    estimators = types.RadioGroup()
    for value, label in (
        ("auto", "auto (least squares where identified)"),
        ("regression", "least squares on the masks"),
        ("difference_of_means", "difference of means (the paper's)"),
    ):
        estimators.add_choice(value, label=label)
    inputs.enum(
        "estimator",
        estimators.values(),
        default=d["estimator"],
        label="Estimator",
        view=estimators,
    )
    inputs.int(
        "holdout_models",
        default=d["holdout_models"],
        label="Held-out models",
        description="extra models for the linear datamodeling score (0: none)",
    )
    holdout = ctx.params.get("holdout_models", d["holdout_models"])
    if holdout is not None and (holdout < 0 or 0 < holdout < 3):
        _forms.block(inputs, "holdout_error", "held-out models: 0, or at least 3")


def _protocol_inputs(inputs, ctx, d):
    """How each model pretrains and transfers."""
    inputs.float(
        "alpha",
        default=d["alpha"],
        label="Subset fraction (alpha)",
        description="fraction of pretraining classes each model sees, in (0, 1)",
    )
    alpha = ctx.params.get("alpha", d["alpha"])
    if alpha is not None and not 0 < alpha < 1:
        _forms.block(inputs, "alpha_error", "alpha must lie in (0, 1)")
    inputs.int("epochs", default=d["epochs"], label="Pretraining epochs")
    inputs.str(
        "arch",
        default=d["arch"],
        label="Architecture",
        description="'resnet_small' or a torchvision model name (e.g. resnet18)",
    )
    inputs.int("image_size", default=d["image_size"], label="Image size (px)")
    channels = types.RadioGroup()
    channels.add_choice("auto", label="auto (RGB when any image is in colour)")
    channels.add_choice("1", label="grayscale")
    channels.add_choice("3", label="RGB")
    inputs.enum("channels", channels.values(), default="auto", label="Channels", view=channels)
    resize = types.RadioGroup()
    resize.add_choice("crop", label="the shorter side, then the centre square (torchvision)")
    resize.add_choice("squash", label="the whole image to a square")
    inputs.enum("resize", resize.values(), default="crop", label="Resize", view=resize)
    transfer = types.RadioGroup()
    transfer.add_choice("linear", label="linear probe (frozen features)")
    transfer.add_choice("finetune", label="full fine-tuning")
    inputs.enum(
        "transfer", transfer.values(), default=d["transfer"], label="Transfer", view=transfer
    )
    inputs.int(
        "augment_shift",
        default=d["augment_shift"],
        label="Shift augmentation (px)",
        description="pretraining images shifted at random by up to this many "
        "pixels, on the device; 0: none",
    )
    if (ctx.params.get("augment_shift") or 0) < 0:
        _forms.block(inputs, "augment_shift_error", "the shift cannot be negative")


def _split_options(dataset_name, split_by):
    if not dataset_name or not fo.dataset_exists(dataset_name):
        return []
    ds = fo.load_dataset(dataset_name)
    if split_by == "tags":
        return sorted(ds.distinct("tags"))
    if split_by == "saved_view":
        return sorted(ds.list_saved_views())
    return []
