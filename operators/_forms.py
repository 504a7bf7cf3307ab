"""Form helpers shared by the operators."""

import fiftyone as fo
import fiftyone.operators.types as types


def dataset_choice(inputs, ctx, name, label, description, default=None):
    """A dropdown of dataset names; returns the chosen name (or None)."""
    names = fo.list_datasets()
    choices = types.DropdownView()
    for n in names:
        choices.add_choice(n, label=n)
    if default not in names:
        default = None
    inputs.enum(name, names, label=label, description=description,
                default=default, required=True, view=choices)
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
    inputs.enum(name, fields, label=label, required=True,
                default=default if default in fields else fields[0], view=choices)
    return ctx.params.get(name)


def run_key_input(inputs, ctx, default):
    from transferscope.views import TransferScopeError, validate_run_key

    inputs.str("run_key", label="Run key", required=True, default=default,
               description="names the run and its fields (a Python identifier)")
    key = ctx.params.get("run_key", default)
    try:
        validate_run_key(key)
    except TransferScopeError as e:
        prop = inputs.str("run_key_error", label="Run key", view=types.Warning(label=str(e)))
        prop.invalid = True
        prop.error_message = str(e)
    inputs.bool("overwrite", default=False, label="Overwrite",
                description="replace an existing run with this key")
    return key


def progress_reporter(ctx, what):
    """A ``callable(done, total)`` that reports to the App (or logs)."""

    def report(done, total):
        ctx.set_progress(progress=done / total, label=f"{done}/{total} {what}")

    return report


def reload_if_immediate(ctx):
    if not ctx.delegated:
        ctx.trigger("reload_dataset")
