"""Operator ``compute_sample_influence``: form -> SDK call -> progress -> reload."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms


class ComputeSampleInfluence(foo.Operator):
    @property
    def config(self):
        return _forms.operator_config(
            "compute_sample_influence",
            "transferscope: compute sample influence",
            (
                "Score how much each pretraining image helps or hurts each target "
                "test image (TRAK), with a class-influence run's protocol"
            ),
        )

    def resolve_input(self, ctx):
        from transferscope.sample_influence import compute_sample_influence

        d = _forms.defaults_of(compute_sample_influence)
        inputs = types.Object()
        influence_key, _ = _forms.influence_run_choice(inputs, ctx, name="influence_key")
        if influence_key is None:
            return types.Property(inputs, view=types.View(label="Compute sample influence"))
        inputs.int(
            "num_models",
            default=d["num_models"],
            label="Number of models",
            description="each trained on every pretraining image, with its own seed",
        )
        inputs.int(
            "proj_dim",
            default=d["proj_dim"],
            label="Projection dimension",
            description="of the per-image gradients (TRAK's random projection)",
        )
        inputs.float(
            "damping",
            default=d["damping"],
            label="Damping",
            description="ridge term, relative to the gradients' mean squared norm",
        )
        weighting = types.RadioGroup()
        weighting.add_choice("none", label="none: every pretraining image at full weight")
        weighting.add_choice(
            "trak", label="TRAK's 1 - p: images the model already fits count for little"
        )
        inputs.enum(
            "loss_weighting",
            weighting.values(),
            default=d["loss_weighting"],
            label="Loss weighting",
            view=weighting,
        )
        inputs.int(
            "top_k",
            default=d["top_k"],
            label="Images per target sample",
            description="most helpful and most harmful pretraining images kept on each",
        )
        inputs.int(
            "holdout_models",
            default=d["holdout_models"],
            label="Held-out models",
            description="models on random halves of the pretraining images, for the "
            "datamodeling score (0: none, else at least 3)",
        )
        _forms.device_input(inputs)
        _forms.run_key_input(inputs, ctx, default="samples")
        return types.Property(inputs, view=types.View(label="Compute sample influence"))

    def execute(self, ctx):
        from transferscope import compute_sample_influence
        from transferscope.influence_run import InfluenceRun

        p = ctx.params
        run = InfluenceRun.load(ctx.dataset, p["influence_key"])
        pretrain, target = run.datasets
        results = compute_sample_influence(
            pretrain,
            target,
            p["run_key"],
            influence_key=p["influence_key"],
            progress=_forms.progress_reporter(ctx, "steps (models, then scoring)"),
            **_forms.given(
                p,
                (
                    "num_models",
                    "proj_dim",
                    "damping",
                    "loss_weighting",
                    "top_k",
                    "holdout_models",
                    "device",
                    "overwrite",
                ),
            ),
        )
        _forms.reload_if_immediate(ctx)
        return {"run_key": p["run_key"], **results.metrics}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("run_key", label="Run key")
        outputs.int("num_models", label="Models")
        outputs.int("num_pretraining_samples", label="Pretraining images scored")
        outputs.int("num_target_samples", label="Target test images")
        outputs.float("lds", label="Linear datamodeling score on the held-out models")
        outputs.float(
            "class_spearman",
            label="Spearman: summed image scores per class vs the class influence",
        )
        return types.Property(outputs, view=types.View(label="Sample influence"))
