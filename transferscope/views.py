"""Between FiftyOne collections and arrays: validation, splits, image decoding."""

import functools
import keyword
import logging
import re
import warnings
from collections.abc import Callable

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.labels as fol
import numpy as np

from .compute import checks, images

logger = logging.getLogger(__name__)

# what the SDK takes for a dataset: a dataset, a view of one, or a dataset's name
DatasetLike = foc.SampleCollection | str
# a split: a tag, a field value or a saved view's name (as ``split_by`` says), or a view
SplitLike = str | foc.SampleCollection
# None/True: a progress bar (as FiftyOne's config says); False: none; or a callback
# progress(num_done, num_total)
Progress = bool | Callable[[int, int], None] | None

SPLIT_KINDS = ("tags", "field", "saved_view")
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# fields are named <key>_<suffix> and stores <key>/: keep both well inside limits
MAX_KEY_LENGTH = 64


class TransferScopeError(ValueError):
    """Bad input to a transferscope call; nothing was changed."""


def renamed_keywords(**new_name_of):
    """Accepts the keywords' old names for a deprecation period, with a warning.

    ``@renamed_keywords(run_key="influence_key")``: a call with ``run_key=``
    warns (``DeprecationWarning``) and passes it as ``influence_key=``; a
    call that names both is refused.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in new_name_of.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got {old}= and {new}=; pass only {new}=")
                warnings.warn(
                    f"{fn.__name__}({old}=...) is deprecated; use {new}=",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call

    return wrap


def load_dataset(dataset_or_name, role):
    if isinstance(dataset_or_name, str):
        if not fo.dataset_exists(dataset_or_name):
            raise TransferScopeError(f"{role}: no dataset named {dataset_or_name!r} exists")
        return fo.load_dataset(dataset_or_name)
    if isinstance(dataset_or_name, fo.core.collections.SampleCollection):
        return dataset_or_name
    raise TransferScopeError(
        f"{role} must be a FiftyOne dataset, view or dataset name; "
        f"got {type(dataset_or_name).__name__}"
    )


def validate_run_key(run_key):
    if (
        not isinstance(run_key, str)
        or not _KEY_RE.fullmatch(run_key)
        or keyword.iskeyword(run_key)
        or len(run_key) > MAX_KEY_LENGTH
    ):
        raise TransferScopeError(
            f"run_key must be a Python identifier starting with a letter "
            f"(letters, digits, underscores; at most {MAX_KEY_LENGTH} characters); "
            f"got {run_key!r}"
        )


def label_is(path, value):
    """``F(path) == value``, with ``value`` a literal: a label such as ``"$5"`` is
    never read as a field path."""
    return fo.ViewField(path) == fo.ViewExpression.literal(value)


def label_in(path, values):
    """``F(path).is_in(values)``, with every value a literal (see :func:`label_is`)."""
    return fo.ViewField(path).is_in([fo.ViewExpression.literal(v) for v in values])


def ids_with_labels(collection, path, values):
    """The ids of the samples whose ``path`` is one of ``values`` (compared in Python)."""
    wanted = set(values)
    ids, labels = collection.values(["id", path])
    return [i for i, label in zip(ids, labels) if label in wanted]


def step_reporter(progress, num_steps):
    """``report(step)`` for a job of ``num_steps`` steps: calls ``progress(step,
    num_steps)`` when ``progress`` is a callable, else does nothing."""
    if callable(progress):
        return lambda step: progress(step, num_steps)
    return lambda step: None


def check_count(value, name, minimum=1, maximum=None, note=""):
    """:func:`transferscope.compute.checks.check_int`, refusing with a TransferScopeError."""
    try:
        return checks.check_int(value, name, minimum, maximum, note)
    except ValueError as e:
        raise TransferScopeError(str(e)) from None


def check_number(value, name, low=None, high=None, low_open=False, high_open=False):
    """:func:`transferscope.compute.checks.check_number`, refusing with a TransferScopeError."""
    try:
        return checks.check_number(value, name, low, high, low_open, high_open)
    except ValueError as e:
        raise TransferScopeError(str(e)) from None


def validate_tag(tag):
    if not isinstance(tag, str) or not tag.strip() or tag != tag.strip():
        raise TransferScopeError(
            f"tag must be a non-empty string without surrounding spaces; got {tag!r}"
        )


def refresh_if_changed_elsewhere(dataset):
    """Reads ``dataset`` again when another process changed its fields, runs or
    saved views since this object was loaded; otherwise leaves it (and the
    samples a caller holds) as they are.

    A hard reload builds a new sample class, which samples already in memory
    do not follow, so it happens only when the stored document differs.
    """
    import fiftyone.core.odm as foo

    stored = foo.get_db_conn().datasets.find_one(
        {"_id": dataset._doc.id}, {"sample_fields": 1, "runs": 1, "saved_views": 1}
    )
    if stored is None:
        return
    doc = dataset._doc

    def outline(fields, name, nested):
        return sorted((name(f), outline(nested(f) or [], name, nested)) for f in fields)

    same = (
        outline(stored.get("sample_fields") or [], lambda f: f["name"], lambda f: f.get("fields"))
        == outline(doc.sample_fields or [], lambda f: f.name, lambda f: f.fields)
        and sorted((k, str(v)) for k, v in (stored.get("runs") or {}).items())
        == sorted((k, str(v.id if hasattr(v, "id") else v)) for k, v in (doc.runs or {}).items())
        and sorted(str(v) for v in stored.get("saved_views") or [])
        == sorted(str(getattr(v, "id", v)) for v in doc.saved_views or [])
    )
    if not same:
        dataset.reload()


def check_run_key_free(collection, run_key, overwrite, fields):
    """Refuses an existing run key (unless overwrite) or fields a run does not own,
    as the database has them now (another process may have committed a run
    since this dataset object was loaded)."""
    dataset = collection._root_dataset
    refresh_if_changed_elsewhere(dataset)
    if run_key in dataset.list_runs():
        if not overwrite:
            raise TransferScopeError(
                f"dataset {dataset.name!r} already has a run with key {run_key!r}; "
                f"pass overwrite=True or choose another run_key"
            )
        owned = set(dataset.get_run_info(run_key).config.__dict__.get("fields", []))
    else:
        owned = set()
    taken = [f for f in fields if dataset.has_sample_field(f) and f not in owned]
    if taken:
        raise TransferScopeError(
            f"dataset {dataset.name!r} already has field(s) {taken} that no "
            f"transferscope run with key {run_key!r} owns; choose another run_key"
        )


def check_classification_field(collection, field, role):
    schema = collection.get_field_schema(embedded_doc_type=fol.Classification)
    if field not in schema:
        all_fields = collection.get_field_schema()
        if field not in all_fields:
            raise TransferScopeError(
                f"{role} label field {field!r} does not exist on {collection._root_dataset.name!r}"
            )
        raise TransferScopeError(
            f"{role} label field {field!r} is not a Classification field "
            f"(found {all_fields[field]})"
        )


def classification_fields(collection):
    return sorted(collection.get_field_schema(embedded_doc_type=fol.Classification))


def resolve_split(collection, split, split_by="tags", split_field="split"):
    """The view of ``collection`` that forms one split.

    ``split_by``: ``"tags"`` (samples tagged ``split``), ``"field"`` (samples
    whose ``split_field`` equals ``split``) or ``"saved_view"`` (the saved view
    named ``split``). A view may also be passed directly as ``split``.
    """
    if isinstance(split, fo.core.collections.SampleCollection):
        view = split
    elif split_by == "tags":
        view = collection.match_tags(split)
    elif split_by == "field":
        if not collection.has_field(split_field):
            raise TransferScopeError(f"split field {split_field!r} does not exist")
        view = collection.match(label_is(split_field, split))
    elif split_by == "saved_view":
        dataset = collection._root_dataset
        if split not in dataset.list_saved_views():
            raise TransferScopeError(f"dataset {dataset.name!r} has no saved view named {split!r}")
        view = dataset.load_saved_view(split)
    else:
        raise TransferScopeError(f"split_by must be one of {SPLIT_KINDS}; got {split_by!r}")
    if len(view) == 0:
        raise TransferScopeError(
            f"split {split!r} (by {split_by}) of {collection._root_dataset.name!r} is empty"
        )
    return view


def labels_of(view, field, role):
    """Sample ids, filepaths and label strings; refuses missing labels."""
    ids, paths, labels = view.values(["id", "filepath", f"{field}.label"])
    missing = [i for i, l in zip(ids, labels) if l is None]
    if missing:
        raise TransferScopeError(
            f"{len(missing)} {role} sample(s) have no {field!r} label, e.g. {missing[:3]}"
        )
    return np.asarray(ids), list(paths), list(labels)


IMAGE_CACHE_ENV = images.IMAGE_CACHE_ENV  # a folder, or "off"


def decode_images(paths, ids, image_size, channels, resize="crop", num_workers=None):
    """Decodes images to uint8 ``(N, S, S, channels)``, once (see
    :func:`transferscope.compute.images.decode_images`: EXIF orientation,
    16-bit and float scaling, a centre crop or a squash, an on-disk cache
    keyed by each file's content); raises naming the samples whose images
    cannot be read."""
    try:
        return images.decode_images(paths, ids, image_size, channels, resize, num_workers)
    except images.UnreadableImagesError as e:
        raise TransferScopeError(str(e)) from None


def detect_channels(paths):
    """``(channels, note)``: 3 when any image is in colour, else 1, read from every
    file's header; ``note`` says how many of each a mixed set holds (else None)."""
    gray, colour, _ = images.count_grayscale(paths)
    if not colour:
        return 1, None
    if not gray:
        return 3, None
    note = (
        f"the images mix {gray} grayscale and {colour} colour file(s): read in RGB, "
        f"grayscale replicated to three channels (pass channels=1 to read all as grayscale)"
    )
    logger.warning(note)
    return 3, note
