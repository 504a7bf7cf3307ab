"""FiftyOne run classes for transferscope: deleting a run deletes its fields.

A plain ``fo.RunConfig`` leaves the fields a run wrote behind; these
subclasses (in the manner of fiftyone.brain) list them and clean them up.
The class names follow FiftyOne's rule: the run class is the config class's
name without ``Config``.
"""

import numpy as np
import fiftyone as fo
import fiftyone.core.labels as fol
import fiftyone.core.runs as fors


class ClassInfluenceConfig(fors.RunConfig):
    """Config of a class-influence run; ``fields`` are the fields it wrote."""

    def __init__(self, fields=None, **kwargs):
        kwargs.setdefault("method", "class_influence")
        super().__init__(**kwargs)
        self.fields = list(fields or [])


class ClassInfluence(fors.Run):
    def get_fields(self, samples, key):
        return list(self.config.fields)

    def cleanup(self, samples, key):
        dataset = samples._root_dataset
        existing = [f for f in self.config.fields if dataset.has_sample_field(f)]
        if existing:
            dataset.delete_sample_fields(existing)
        # the tags and saved view that tag_classes added for this run go with it
        results = dataset.load_run_results(key, cache=False)
        record = getattr(results, "curation_tags", None)
        if record:
            from .curation import undo_tagging

            undo_tagging(dataset, record)


class ClassInfluenceResults(fors.RunResults):
    """Class list, influence matrix and its intervals, as numpy arrays.

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
    """

    _ARRAYS = ("influence", "stderr", "class_influence", "class_stderr",
               "class_ci_low", "class_ci_high", "class_p_value", "class_q_value")

    def __init__(self, samples, config, key, backend=None, **kwargs):
        for name in self._ARRAYS:
            if name in kwargs and kwargs[name] is not None:
                kwargs[name] = np.asarray(kwargs[name], dtype=np.float64)
        super().__init__(samples, config, key, backend=backend, **kwargs)

    def attributes(self):
        return [a for a in super().attributes() if not a.startswith("_")]

    def serialize(self, reflective=True):
        d = super().serialize(reflective=reflective)
        for name in self._ARRAYS:
            if isinstance(d.get(name), np.ndarray):
                d[name] = np.round(d[name], 7).tolist()
        return d

    def ranking(self):
        """``[(class, influence, ci_low, ci_high), ...]``, most helpful first."""
        order = np.argsort(-self.class_influence, kind="stable")
        return [
            (self.classes[i], float(self.class_influence[i]),
             float(self.class_ci_low[i]), float(self.class_ci_high[i]))
            for i in order
        ]

    @property
    def q_values(self):
        """``(C,)`` Benjamini-Hochberg q-values, or None (a run from before 0.2)."""
        return getattr(self, "class_q_value", None)

    def describe_class(self, i):
        """``"bold  -0.0840 [-0.1000, -0.0680] q=2e-05"``: class ``i`` as the reports show it."""
        q = self.q_values
        text = (f"{self.classes[i]}  {self.class_influence[i]:+.4f}  "
                f"[{self.class_ci_low[i]:+.4f}, {self.class_ci_high[i]:+.4f}]")
        return text if q is None else f"{text}  q={q[i]:.2g}"


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
        undo_writes(dataset, self.config.fields, self.config.saved_views,
                    getattr(dataset.load_run_results(key, cache=False), "tagged", None))


def newly_tagged(dataset, ids, tag):
    """``{"tag", "ids"}``: the samples among ``ids`` that do not carry ``tag`` yet
    (only these lose it again on undo)."""
    already = set(dataset.select(ids).match_tags(tag).values("id"))
    return {"tag": tag, "ids": [i for i in ids if i not in already]}


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


def commit_run(root, key, overwrite, method, fields, field_types, write_values, saved_views,
               summary, params, tagged=None):
    """Writes a run's fields, tag, saved views and record together; undoes all of it on failure.

    Args:
        fields, field_types: declared first (values may all be None); a type
            is a field class or a label class (``fo.Classification``)
        write_values: ``callable()`` that sets the fields' values
        saved_views: ``{name: callable() -> view}``
        tagged: ``{"tag", "ids"}`` from :func:`newly_tagged`, or None
    """
    if overwrite and key in root.list_runs():
        root.delete_run(key)  # its cleanup removes the old fields, tags and views
    tagged = tagged or {"tag": None, "ids": []}
    try:
        for field, ftype in zip(fields, field_types):
            if issubclass(ftype, fol.Label):
                root.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=ftype)
            else:
                root.add_sample_field(field, ftype)
        write_values()
        if tagged["ids"]:
            root.select(tagged["ids"]).tag_samples(tagged["tag"])
        for name, make_view in saved_views.items():
            root.save_view(name, make_view(), overwrite=True)
        config = TransferScopeRunConfig(method=method, fields=fields,
                                        saved_views=list(saved_views), **params)
        root.register_run(key, config, results=fors.RunResults(
            root, config, key, tagged=tagged, summary=summary))
    except BaseException:
        undo_writes(root, fields, list(saved_views), tagged)
        if key in root.list_runs():
            root.delete_run(key, cleanup=False)
        raise
