"""Form helpers shared by the operators."""

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types


def operator_config(name, label, description, delegated=True):
    """The config every transferscope operator shares: dynamic form; long jobs
    delegated by default, short ones immediate only."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=delegated,
        default_choice_to_delegated=delegated,
    )


def block(inputs, name, message):
    """Shows ``message`` as a warning and blocks the form with it as the reason."""
    prop = inputs.view(name, types.Warning(label=message))
    prop.invalid = True
    prop.error_message = message
    return prop


def dataset_choice(inputs, ctx, name, label, description, default=None):
    """A dropdown of dataset names; returns the chosen name (or None)."""
    names = fo.list_datasets()
    choices = types.DropdownView()
    for n in names:
        choices.add_choice(n, label=n)
    if default not in names:
        default = None
    inputs.enum(
        name,
        names,
        label=label,
        description=description,
        default=default,
        required=True,
        view=choices,
    )
    return ctx.params.get(name, default)


def classification_field_choice(inputs, ctx, name, dataset_name, label, default="ground_truth"):
    """A dropdown of a dataset's Classification fields."""
    from transferscope.views import classification_fields

    if not dataset_name or not fo.dataset_exists(dataset_name):
        return None
    fields = classification_fields(fo.load_dataset(dataset_name))
    if not fields:
        prop = inputs.str(name, label=label, required=True)
        prop.invalid = True
        prop.error_message = f"{dataset_name!r} has no Classification field"
        return None
    choices = types.DropdownView()
    for f in fields:
        choices.add_choice(f, label=f)
    inputs.enum(
        name,
        fields,
        label=label,
        required=True,
        default=default if default in fields else fields[0],
        view=choices,
    )
    return ctx.params.get(name)


def run_key_input(inputs, ctx, default):
    from transferscope.views import TransferScopeError, validate_run_key

    inputs.str(
        "run_key",
        label="Run key",
        required=True,
        default=default,
        description="names the run and its fields (a Python identifier)",
    )
    key = ctx.params.get("run_key", default)
    try:
        validate_run_key(key)
    except TransferScopeError as e:
        block(inputs, "run_key_error", str(e))
    inputs.bool(
        "overwrite",
        default=False,
        label="Overwrite",
        description="replace an existing run with this key",
    )
    return key


def progress_reporter(ctx, what):
    """A ``callable(done, total)`` that reports to the App (or logs)."""

    def report(done, total):
        ctx.set_progress(progress=done / total, label=f"{done}/{total} {what}")

    return report


def reload_if_immediate(ctx):
    if not ctx.delegated:
        ctx.trigger("reload_dataset")


def influence_run_choice(inputs, ctx, pretraining_only=False, name="run_key"):
    """A dropdown (parameter ``name``) of the class-influence runs on the current dataset.

    Returns ``(run_key, config)``, or ``(None, None)`` (with the form marked
    invalid) when the dataset has none.
    """
    from transferscope.influence_run import influence_run_keys

    dataset = ctx.dataset
    keys = influence_run_keys(dataset, pretraining_only) if dataset is not None else []
    if not keys:
        what = "as its pretraining dataset " if pretraining_only else ""
        block(
            inputs,
            "no_runs",
            f"This dataset has no class-influence run {what}yet: "
            f"run 'compute class influence' first",
        )
        return None, None
    choices = types.DropdownView()
    for k in keys:
        choices.add_choice(k, label=k)
    inputs.enum(name, keys, default=keys[-1], required=True, label="Influence run", view=choices)
    key = ctx.params.get(name) or keys[-1]
    if key not in keys:
        return None, None
    return key, dataset.get_run_info(key).config


def class_label(name, influence, lo, hi, q=None):
    text = f"{name}   {influence:+.4f}  [{lo:+.4f}, {hi:+.4f}]"
    return text if q is None else f"{text}  q={q:.2g}"


def selection_rule_inputs(inputs, ctx, results, rules):
    """Radio of selection rules and the argument each needs; returns SDK kwargs."""
    labels = {
        "tagged": "the classes tagged for removal",
        "harmful_fdr": "harmful classes at a false-discovery level (Benjamini-Hochberg)",
        "ci_below_zero": "classes whose 95% interval lies below zero (no correction for "
        "testing many classes)",
        "most_harmful": "the k most harmful classes",
        "below_threshold": "classes with influence below a threshold",
        "classes": "classes I pick",
    }
    radio = types.RadioGroup()
    for r in rules:
        radio.add_choice(r, label=labels[r])
    inputs.enum("rule", radio.values(), default=rules[0], label="Choose classes", view=radio)
    rule = ctx.params.get("rule") or rules[0]
    if rule == "harmful_fdr":
        inputs.float(
            "fdr_level",
            default=0.1,
            required=True,
            label="False-discovery level",
            description="expected share of false discoveries among the classes selected, in (0, 1)",
        )
        level = ctx.params.get("fdr_level", 0.1)
        if level is not None and not 0 < level < 1:
            block(inputs, "fdr_error", "the false-discovery level must lie in (0, 1)")
        return {"rule": rule, "fdr_level": level}
    if rule == "most_harmful":
        inputs.int(
            "k",
            default=min(5, len(results.classes) - 2),
            required=True,
            label="k",
            description=f"of {len(results.classes)} classes",
        )
        return {"rule": rule, "k": ctx.params.get("k")}
    if rule == "below_threshold":
        inputs.float("threshold", default=0.0, required=True, label="Influence threshold")
        return {"rule": rule, "threshold": ctx.params.get("threshold")}
    if rule == "classes":
        order = results.class_influence.argsort(kind="stable")  # most harmful first
        names = [results.classes[i] for i in order]
        q = results.q_values
        view = types.DropdownView(multiple=True)
        for i in order:
            view.add_choice(
                results.classes[i],
                label=class_label(
                    results.classes[i],
                    results.class_influence[i],
                    results.class_ci_low[i],
                    results.class_ci_high[i],
                    None if q is None else q[i],
                ),
            )
        inputs.list(
            "classes",
            types.Enum(names),
            required=True,
            view=view,
            label="Classes (influence [95% CI] q-value, most harmful first)",
        )
        return {"rule": rule, "classes": ctx.params.get("classes")}
    if rule == "tagged":
        return {"rule": None}
    return {"rule": rule}


def selection_preview(inputs, results, kwargs):
    """Shows which classes a rule selects, or blocks the form saying why not."""
    from transferscope.curation import select_removed_classes
    from transferscope.views import TransferScopeError

    if kwargs.get("rule") is None:
        return None
    try:
        chosen = select_removed_classes(results, **kwargs)
    except TransferScopeError as e:
        block(inputs, "selection_error", str(e))
        return None
    shown = ", ".join(chosen[:20]) + (" ..." if len(chosen) > 20 else "")
    inputs.view("selection", types.Notice(label=f"{len(chosen)} class(es): {shown}"))
    return chosen


def embeddings_source_inputs(inputs, ctx, dataset_role):
    """Radio: a class-influence run's backbone, an embeddings field, or a model.

    Returns the SDK keyword arguments for the chosen source.
    """
    radio = types.RadioGroup()
    radio.add_choice("run", label="the backbone of a class-influence run")
    radio.add_choice("field", label="an embeddings field")
    radio.add_choice("model", label="a torchvision model with local weights")
    inputs.enum("source", radio.values(), default="run", label="Embeddings", view=radio)
    source = ctx.params.get("source", "run")
    if source == "run":  # the form calls the written run "run_key", the read one "influence_run"
        key, _ = influence_run_choice(inputs, ctx, name="influence_run")
        return {"influence_key": key}
    if source == "field":
        inputs.str(
            "embeddings_field",
            required=True,
            label="Embeddings field",
            description=f"a vector field on the {dataset_role}",
        )
        return {"embeddings_field": ctx.params.get("embeddings_field")}
    inputs.str("model", default="resnet18", required=True, label="torchvision architecture")
    inputs.str(
        "weights_path",
        required=False,
        label="Weights file (state dict)",
        description="loaded with torch.load(weights_only=True); nothing is downloaded",
    )
    inputs.int("image_size", default=64, label="Image size (px)")
    return {
        "model": ctx.params.get("model"),
        "weights_path": ctx.params.get("weights_path"),
        "image_size": ctx.params.get("image_size", 64),
    }


def index_and_device_inputs(inputs):
    index = types.RadioGroup()
    for k, label in (
        ("auto", "auto (exact up to 250k vectors, IVF beyond)"),
        ("flat", "exact"),
        ("ivf", "IVF"),
        ("hnsw", "HNSW (CPU)"),
    ):
        index.add_choice(k, label=label)
    inputs.enum("index", index.values(), default="auto", label="FAISS index", view=index)
    device_input(inputs)


def device_input(inputs):
    device = types.RadioGroup()
    for d in ("auto", "cpu", "cuda"):
        device.add_choice(d, label=d)
    inputs.enum("device", device.values(), default="auto", label="Device", view=device)


def training_inputs(inputs, ctx):
    """Device, and where the models train: here, or as tasks on a Ray cluster."""
    device_input(inputs)
    executor = types.RadioGroup()
    executor.add_choice("local", label="here (in the operator's process)")
    executor.add_choice("ray", label="on a Ray cluster (one task per model)")
    inputs.enum(
        "executor", executor.values(), default="local", label="Train the models", view=executor
    )
    if ctx.params.get("executor", "local") != "ray":
        inputs.int(
            "group_size",
            required=False,
            label="Models trained at once",
            description="empty: automatic (one at a time on a CPU, as many as fit in "
            "the GPU's memory on CUDA); resnet_small only",
        )
        group_size = ctx.params.get("group_size")
        if group_size is not None and group_size < 1:
            block(inputs, "group_size_error", "at least 1 model at once")
        return
    inputs.str(
        "ray_address",
        default="auto",
        required=True,
        label="Ray address",
        description="'auto' (the cluster this machine belongs to, or $RAY_ADDRESS), "
        "HOST:PORT or ray://HOST:PORT",
    )
    inputs.int("cpus_per_model", default=1, label="CPUs per model")
    inputs.float(
        "gpus_per_model",
        required=False,
        label="GPUs per model",
        description="empty: 1 when the device is cuda, or auto on a cluster with "
        "GPUs; fractions share a GPU",
    )
    if (ctx.params.get("cpus_per_model") or 1) < 1:
        block(inputs, "cpus_error", "at least 1 CPU per model")
    if (ctx.params.get("gpus_per_model") or 0) < 0:
        block(inputs, "gpus_error", "GPUs per model cannot be negative")


def stopping_inputs(inputs, ctx, outcome=True):
    """The sequential check's stopping rule: seed budget, round size, error level,
    minimal effect and the outcome verdicts are decided on; bad values block the form."""
    from transferscope.compute import sequential

    from transferscope.retraining import DEFAULT_MIN_EFFECT, DEFAULT_OUTCOME

    inputs.int(
        "max_seeds",
        default=sequential.DEFAULT_MAX_SEEDS,
        label="Seed budget per arm",
        description="seeds are added in rounds until the verdicts settle, at most this many",
    )
    inputs.int(
        "round_seeds",
        default=sequential.DEFAULT_ROUND_SEEDS,
        label="Seeds per round",
        description="models added to every arm between two looks at the evidence",
    )
    inputs.float(
        "alpha",
        default=sequential.DEFAULT_ALPHA,
        label="Error level",
        description="each verdict is wrong with probability at most this (0 to 0.5)",
    )
    inputs.float(
        "min_effect_points",
        default=100 * DEFAULT_MIN_EFFECT,
        label="Smallest effect that matters (points)",
        description="an interval within +- this is 'negligible'; 0: never",
    )
    if outcome:
        choices = types.RadioGroup()
        choices.add_choice("accuracy", label="accuracy")
        choices.add_choice("prob", label="correct-class probability")
        inputs.enum(
            "outcome", choices.values(), default=DEFAULT_OUTCOME, label="Decide on", view=choices
        )
    try:
        stopping_kwargs(ctx.params, checked=True)
    except ValueError as e:
        block(inputs, "stopping_error", str(e))


def stopping_kwargs(params, checked=False, outcome=True):
    """The stopping rule's keyword arguments from a form's params (``checked``:
    raise ``ValueError`` naming a bad one)."""
    from transferscope.compute import sequential

    from transferscope.retraining import DEFAULT_MIN_EFFECT, DEFAULT_OUTCOME

    def value(name, default):
        v = params.get(name)
        return default if v is None else v

    kwargs = dict(
        max_seeds=value("max_seeds", sequential.DEFAULT_MAX_SEEDS),
        round_seeds=value("round_seeds", sequential.DEFAULT_ROUND_SEEDS),
        alpha=value("alpha", sequential.DEFAULT_ALPHA),
        min_effect=value("min_effect_points", 100 * DEFAULT_MIN_EFFECT) / 100,
        outcome=value("outcome", DEFAULT_OUTCOME),
    )
    if checked:
        sequential.StoppingRule(**{k: v for k, v in kwargs.items() if k != "outcome"})
    if not outcome:
        del kwargs["outcome"]
    return kwargs


def executor_kwargs(params):
    """The SDK's ``device``, ``executor`` and ``executor_options`` from a form."""
    kwargs = {"device": params.get("device") or "auto", "executor": "local"}
    if params.get("executor", "local") == "local" and params.get("group_size") is not None:
        kwargs["executor_options"] = {"group_size": int(params["group_size"])}
    if params.get("executor") == "ray":
        gpus = params.get("gpus_per_model")
        kwargs.update(
            executor="ray",
            executor_options={
                "address": params.get("ray_address") or "auto",
                "cpus_per_model": int(params.get("cpus_per_model") or 1),
                "gpus_per_model": None if gpus is None else float(gpus),
            },
        )
    return kwargs


def embeddings_kwargs(params):
    """The SDK's embeddings arguments from a form's parameters."""
    source = params.get("source", "run")
    if source == "run":
        return {"influence_key": params.get("influence_run")}
    if source == "field":
        return {"embeddings_field": params.get("embeddings_field")}
    return {
        "model": params.get("model"),
        "weights_path": params.get("weights_path") or None,
        "image_size": params.get("image_size", 64),
    }


def defaults_of(fn):
    """The defaults of an SDK function's keyword arguments: what its form shows."""
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def given(params, names):
    """The form's values for ``names`` that are set: the SDK's defaults apply to the rest."""
    return {name: params[name] for name in names if params.get(name) is not None}


def panel_without_run(panel, title, what, operator_uri, button_label):
    """A panel's empty state: no run of its kind yet, and a button that opens the
    operator computing one."""
    panel.md(f"### {title}\nThis dataset has no {what} run yet.", name="empty")
    panel.btn(
        "compute", label=button_label, on_click=operator_uri, prompt=True, variant="contained"
    )
    return types.Property(panel, view=types.GridView(orientation="vertical"))


def panel_run_choice(panel, state, label, on_change):
    """The dropdown of a panel's runs (``state.runs``), the current one selected."""
    runs = types.DropdownView()
    for k in state.runs or []:
        runs.add_choice(k, label=k)
    panel.enum(
        "run_key",
        state.runs or [],
        default=state.run_key,
        label=label,
        view=runs,
        on_change=on_change,
    )
