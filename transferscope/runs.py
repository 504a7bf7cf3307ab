"""FiftyOne run classes for transferscope: deleting a run deletes its fields.

A plain ``fo.RunConfig`` leaves the fields a run wrote behind; these
subclasses (in the manner of fiftyone.brain) list them and clean them up.
The class names follow FiftyOne's rule: the run class is the config class's
name without ``Config``.
"""

import contextlib

import fiftyone as fo
import fiftyone.core.runs as fors
import numpy as np

from . import compute as tsc
from . import views as tsv
from .writes import RunWrite, write_in_progress


class ClassInfluenceConfig(fors.RunConfig):
    """Config of a class-influence run; ``fields`` are the fields it wrote."""

    def __init__(self, fields=None, **kwargs):
        kwargs.setdefault("method", "class_influence")
        super().__init__(**kwargs)
        self.fields = list(fields or [])


class ClassInfluence(fors.Run):
    """Deleting the run deletes its fields, and the tags and saved view that
    tagging (``tag_classes``, ``tag_samples``) added for it."""

    def get_fields(self, samples, key):
        return list(self.config.fields)

    def cleanup(self, samples, key):
        dataset = samples._root_dataset
        existing = [f for f in self.config.fields if dataset.has_sample_field(f)]
        if existing:
            dataset.delete_sample_fields(existing)
        record = run_record(dataset, key, "curation_tags")
        if record:
            undo_writes(
                dataset,
                [],
                [record["view_name"]],
                {"tag": record["tag"], "ids": record["tagged_ids"]},
            )


class ClassInfluenceResults(fors.RunResults):
    """Class list, per-class figures and the run's ``(C, T)`` matrices.

    Attributes (all loaded as numpy arrays where they are arrays):
        classes: the C pretraining class names
        target_ids: the T target test sample ids (columns of ``influence``)
        influence: (C, T) ``Infl[c -> t]`` on the run's target function
        stderr: (C, T) standard errors
        class_influence, class_stderr, class_ci_low, class_ci_high: (C,)
        class_p_value, class_q_value: (C,) two-sided p-values and their
            Benjamini-Hochberg q-values (None for runs from before 0.2)
        metrics: dict of summary figures (design, estimator, split-half
            Spearman and z-score spread, LDS, accuracy, ...)
        matrix_paths: ``{"influence": path, "stderr": path}``, the two
            matrices as float32 ``.npy`` files in the run's store

    The matrices stay out of the database: the results hold the per-class
    figures and the two paths, and ``influence`` / ``stderr`` open the files
    memory-mapped on first use (a row costs one row's read). Runs from before
    0.3 hold both matrices inline and still load.
    """

    _CLASS_ARRAYS = (
        "class_influence",
        "class_stderr",
        "class_ci_low",
        "class_ci_high",
        "class_p_value",
        "class_q_value",
    )
    _MATRICES = ("influence", "stderr")

    def __init__(self, samples, config, key, backend=None, **kwargs):
        for name in self._CLASS_ARRAYS:
            if name in kwargs and kwargs[name] is not None:
                kwargs[name] = np.asarray(kwargs[name], dtype=np.float64)
        # inline matrices: a run from before 0.3, or one being written
        self._matrices = {
            name: np.asarray(kwargs.pop(name), dtype=np.float64)
            for name in self._MATRICES
            if kwargs.get(name) is not None
        }
        super().__init__(samples, config, key, backend=backend, **kwargs)

    @property
    def influence(self):
        return self._matrix("influence")

    @property
    def stderr(self):
        return self._matrix("stderr")

    def _matrix(self, name):
        if name not in self._matrices:
            paths = getattr(self, "matrix_paths", None) or {}
            if name not in paths:
                return None  # the pretraining side's results hold no matrix
            shape = (len(self.classes), len(self.target_ids))
            try:
                self._matrices[name] = tsc.load_array(paths[name], np.float32, shape)
            except (FileNotFoundError, tsc.StoreCorruptError) as e:
                raise tsv.TransferScopeError(
                    f"the {name} matrix of run {self.key!r} is unreadable ({e}); run "
                    f"compute_class_influence again with overwrite=True"
                ) from None
        return self._matrices[name]

    def attributes(self):
        return [a for a in super().attributes() if not a.startswith("_")]

    def serialize(self, reflective=True):
        d = super().serialize(reflective=reflective)
        if not getattr(self, "matrix_paths", None):  # an old run keeps its inline matrices
            d.update({name: value for name, value in self._matrices.items()})
        for name in (*self._CLASS_ARRAYS, *self._MATRICES):
            if isinstance(d.get(name), np.ndarray):
                d[name] = np.round(d[name], 7).tolist()
        return d

    def ranking(self):
        """``[(class, influence, ci_low, ci_high), ...]``, most helpful first."""
        order = np.argsort(-self.class_influence, kind="stable")
        return [
            (
                self.classes[i],
                float(self.class_influence[i]),
                float(self.class_ci_low[i]),
                float(self.class_ci_high[i]),
            )
            for i in order
        ]

    @property
    def q_values(self):
        """``(C,)`` Benjamini-Hochberg q-values, or None (a run from before 0.2)."""
        return getattr(self, "class_q_value", None)

    def describe_class(self, i):
        """``"bold  -0.0840 [-0.1000, -0.0680] q=2e-05"``: class ``i`` as the reports show it."""
        q = self.q_values
        text = (
            f"{self.classes[i]}  {self.class_influence[i]:+.4f}  "
            f"[{self.class_ci_low[i]:+.4f}, {self.class_ci_high[i]:+.4f}]"
        )
        return text if q is None else f"{text}  q={q[i]:.2g}"


class SampleInfluenceConfig(fors.RunConfig):
    """Config of a sample-influence run; ``fields`` are the fields it wrote on
    this dataset, ``output_dir`` its store (models and the score matrix)."""

    def __init__(self, fields=None, **kwargs):
        kwargs.setdefault("method", "sample_influence")
        super().__init__(**kwargs)
        self.fields = list(fields or [])


class SampleInfluence(ClassInfluence):
    """As :class:`ClassInfluence`, and its store goes with the last of the run's
    two sides."""

    def cleanup(self, samples, key):
        super().cleanup(samples, key)
        dataset = samples._root_dataset
        # a write of this key replacing the run keeps the models it can reuse
        if write_in_progress(dataset, key):
            return
        others = [self.config.pretrain_dataset, self.config.target_dataset]
        for name in set(others) - {dataset.name}:
            if fo.dataset_exists(name) and key in fo.load_dataset(name).list_runs():
                return
        tsc.clear_dir(self.config.output_dir)


class SampleInfluenceResults(fors.RunResults):
    """Ids and summary figures of a sample-influence run; the ``(N, T)`` score
    matrix stays in the run's store (:meth:`scores`).

    Attributes:
        pretrain_ids: the N pretraining sample ids (rows of the scores)
        target_ids: the T target test sample ids (columns)
        metrics: dict of summary figures (models, projection, damping, and
            with a class-influence run, ``class_spearman``)
    """

    def attributes(self):
        return [a for a in super().attributes() if not a.startswith("_")]

    def scores(self):
        """The ``(N, T)`` float32 scores, memory-mapped (read-only)."""
        path = self.config.scores_path
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise tsv.TransferScopeError(
                f"the score matrix of run {self.key!r} is missing ({path}); run "
                f"compute_sample_influence again with overwrite=True"
            ) from None


class TransferScopeRunConfig(fors.RunConfig):
    """Config of a leakage or near-duplicate run.

    ``fields`` and ``saved_views`` are what the run wrote; the tag it added
    and the samples it added it to are in the results (``tagged``).
    """

    def __init__(self, method=None, fields=None, saved_views=None, **kwargs):
        kwargs["method"] = method
        super().__init__(**kwargs)
        self.fields = list(fields or [])
        self.saved_views = list(saved_views or [])


class TransferScopeRun(fors.Run):
    def get_fields(self, samples, key):
        return list(self.config.fields)

    def cleanup(self, samples, key):
        dataset = samples._root_dataset
        undo_writes(
            dataset,
            self.config.fields,
            self.config.saved_views,
            getattr(dataset.load_run_results(key, cache=False), "tagged", None),
        )


def run_record(dataset, key, name):
    """A record a job keeps with run ``key`` (``"curation_tags"``, ``"curation"``):
    an attribute of the run's config (updated atomically), or for runs from
    before 0.2, of its results."""
    config = dataset.get_run_info(key).config
    value = getattr(config, name, None)
    if value is None and not getattr(config, "records_in_config", False):
        value = getattr(dataset.load_run_results(key, cache=False), name, None)
    return value


def undo_writes(dataset, fields, saved_views, tagged=None):
    """Deletes fields and saved views, and removes a tag from the samples it was added to.

    ``tagged``: ``{"tag": ..., "ids": [...]}``; only those samples lose the tag.
    """
    present = [f for f in fields if dataset.has_sample_field(f)]
    if present:
        dataset.delete_sample_fields(present)
    for name in saved_views:
        if dataset.has_saved_view(name):
            dataset.delete_saved_view(name)
    if tagged and tagged.get("ids"):
        dataset.select(tagged["ids"]).untag_samples(tagged["tag"])


@contextlib.contextmanager
def open_write(root, key, method, overwrite, fields, others=()):
    """The :class:`~transferscope.writes.RunWrite` of a job on ``root`` (and
    ``others``): takes the key's lock (undoing what an interrupted write of
    the same key left), then refuses a key in use unless ``overwrite``.
    ``fields``: the fields the job writes on ``root``."""
    tsv.validate_run_key(key)
    with RunWrite(key, method, [root, *others], overwrite) as write:
        write.check_key_free(root, fields)
        yield write


def commit_run(
    write, root, method, fields, values, saved_views, summary, params, tagged=None, subfields=()
):
    """Writes an analysis run's fields, tag, saved views and record in one commit.

    Args:
        write: the job's :class:`~transferscope.writes.RunWrite`
        fields: ``{name: type}``; a type is a field class or a label class
            (``fo.Classification``)
        values: ``{name: {sample id: value}}``
        saved_views: ``{name: callable() -> view}`` (built on the final fields)
        tagged: ``(ids, tag)`` or None: the tag goes to those lacking it
        subfields: ``[(field, path, type)]`` dynamic attributes to declare
    """
    for field, ftype in fields.items():
        write.add_field(root, field, ftype)
    for field, path, ftype in subfields:
        write.declare_subfield(root, field, path, ftype)
    for field, vals in values.items():
        if vals:
            write.set_values(root, field, vals, view=root.select(list(vals)))
    record = write.tag(root, *tagged) if tagged else {"tag": None, "ids": []}
    for name, make_view in saved_views.items():
        write.save_view(root, name, make_view)
    config = TransferScopeRunConfig(
        method=method, fields=list(fields), saved_views=list(saved_views), **params
    )
    write.register(
        root, config, fors.RunResults(root, config, write.key, tagged=record, summary=summary)
    )
    write.commit()
    return record


def sample_run_keys(dataset):
    """The sample-influence runs on ``dataset``, oldest first (a panel opens on
    the last: the run computed most recently)."""
    infos = {k: dataset.get_run_info(k) for k in dataset.list_runs()}
    keys = [
        k for k, info in infos.items() if getattr(info.config, "method", None) == "sample_influence"
    ]
    return sorted(keys, key=lambda k: (infos[k].timestamp is None, infos[k].timestamp, k))


def load_sample_run(dataset, key, role="dataset"):
    """``(root dataset, config)`` of a sample-influence run on ``dataset``; refuses
    an unknown dataset or key, or a run of another kind, naming it."""
    tsv.validate_run_key(key)
    root = tsv.load_dataset(dataset, role)._root_dataset
    if key not in root.list_runs():
        raise tsv.TransferScopeError(
            f"dataset {root.name!r} has no run {key!r}; its sample-influence runs: "
            f"{sample_run_keys(root)}"
        )
    config = root.get_run_info(key).config
    if getattr(config, "method", None) != "sample_influence":
        raise tsv.TransferScopeError(
            f"run {key!r} on {root.name!r} is not a transferscope sample-influence run"
        )
    return root, config
