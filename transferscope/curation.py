"""Curation: tag the pretraining classes (or images) that hurt, and prove it by retraining.

``tag_classes`` / ``untag_classes`` act on the pretraining dataset of a
class-influence run; ``evaluate_curation`` retrains on the full, curated and
randomly curated sets (the counterfactual of Jain et al., CVPR 2023) and
stores the result in the run. At the level of images, ``tag_samples`` and
``evaluate_sample_curation`` do the same for a sample-influence run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from . import compute as tsc
from . import views as tsv
from .influence_run import (
    SPLIT_DEFAULTS,
    InfluenceRun,
    collect_labels,
    influence_config_of,
    prepare_executor,
)
from .plots import curation_plotly
from .results import JobResults
from .retraining import (
    DEFAULT_MIN_EFFECT,
    DEFAULT_OUTCOME,
    describe_check,
    describe_stopping,
    points_interval,
    retrain_until_decided,
    stopping_rule,
)
from .runs import load_sample_run, run_record
from .views import DatasetLike, Progress, TransferScopeError
from .writes import RunWrite

logger = logging.getLogger(__name__)

DEFAULT_TAG = "remove"
DEFAULT_RULE = "harmful_fdr"
DEFAULT_FDR = 0.1
# the sweep's arms draw a plot, not a verdict: they stop at this many seeds
DEFAULT_SWEEP_SEEDS = 8


class CurationResults(JobResults):
    """What :func:`evaluate_curation` measured (accuracy per arm with 95% CIs,
    paired tests, the removals retraining confirms)."""

    def describe(self):
        return describe_curation(self)

    def plotly(self):
        return curation_plotly(self)


def curated_view_name(influence_key):
    return f"{influence_key}_curated"


def select_removed_classes(
    results, rule=DEFAULT_RULE, k=None, threshold=None, classes=None, fdr_level=DEFAULT_FDR
):
    """The class names a rule selects from a run, most harmful first."""
    try:
        idx = tsc.select_classes(
            results.classes,
            results.class_influence,
            results.class_ci_high,
            rule=rule,
            k=k,
            threshold=threshold,
            classes=classes,
            q_values=results.q_values,
            fdr_level=fdr_level,
        )
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    return [results.classes[i] for i in idx]


def _pretraining_run(dataset, influence_key):
    """The run's pretraining dataset and results; refuses its target dataset."""
    run = InfluenceRun.load(dataset, influence_key)
    root, config = run.root, run.run_config
    if config.pretrain_dataset != root.name:
        raise TransferScopeError(
            f"{root.name!r} is not the pretraining dataset of run {influence_key!r} "
            f"(that is {config.pretrain_dataset!r}); tag classes there"
        )
    return root, run.results_here()


@tsv.renamed_keywords(run_key="influence_key")
def tag_classes(
    pretrain_dataset: DatasetLike,
    influence_key: str,
    rule: str = DEFAULT_RULE,
    k: int | None = None,
    threshold: float | None = None,
    classes: Sequence[str] | None = None,
    tag: str = DEFAULT_TAG,
    view_name: str | None = None,
    fdr_level: float = DEFAULT_FDR,
) -> dict:
    """Tags the pretraining samples of the classes a rule selects for removal.

    Chooses classes from the class-influence run ``influence_key`` by ``rule``
    (see :func:`transferscope.compute.select_classes`: ``"harmful_fdr"``
    (the default: negative influence, q-value below ``fdr_level``),
    ``"most_harmful"`` with ``k``, ``"below_threshold"`` with
    ``threshold``, ``"ci_below_zero"`` or ``"classes"`` with a list of
    names), adds ``tag`` to their samples, saves the view of the pretraining
    dataset without ``tag``-ged samples as ``view_name`` (default
    ``<influence_key>_curated``) and records the choice in the run. Tagging again
    replaces the previous choice; :func:`untag_classes` undoes it. Bad input
    raises before anything changes; a process killed while tagging leaves
    nothing that the same call, run again, does not put right.

    Returns:
        the record stored in the run (a dict)
    """
    dataset, results = _pretraining_run(pretrain_dataset, influence_key)
    tsv.validate_tag(tag)
    view_name = curated_view_name(influence_key) if view_name is None else view_name
    if not isinstance(view_name, str) or not view_name.strip():
        raise TransferScopeError(f"view_name must be a non-empty string; got {view_name!r}")
    removed = select_removed_classes(results, rule, k, threshold, classes, fdr_level)
    label_path = f"{results.config.pretrain_label_field}.label"
    _check_classes_unchanged(dataset, results, label_path)

    with RunWrite(influence_key, "tagging", [dataset]) as write:
        previous = run_record(dataset, influence_key, "curation_tags")
        if previous:  # replaced at commit, once everything new is known
            write.replace_old(
                dataset,
                tags=[{"tag": previous["tag"], "ids": previous["tagged_ids"]}],
                views=[previous["view_name"]],
            )
        ids = tsv.ids_with_labels(dataset, label_path, removed)
        tagged = write.tag(dataset, ids, tag)
        index = {c: i for i, c in enumerate(results.classes)}
        q = results.q_values
        record = {
            "rule": rule,
            "k": k,
            "threshold": threshold,
            "tag": tag,
            "view_name": view_name,
            "fdr_level": fdr_level if rule == "harmful_fdr" else None,
            "classes": removed,
            "influence": [float(results.class_influence[index[c]]) for c in removed],
            "ci95": [
                [float(results.class_ci_low[index[c]]), float(results.class_ci_high[index[c]])]
                for c in removed
            ],
            "q_value": [float(q[index[c]]) for c in removed] if q is not None else None,
            "num_samples": len(ids),
        }
        write.save_view(dataset, view_name, lambda: dataset.match_tags(tag, bool=False))
        # only the samples that lacked the tag at commit lose it again on undo
        write.set_record(dataset, "curation_tags", lambda: dict(record, tagged_ids=tagged["ids"]))
        write.commit()
    return dict(record, tagged_ids=tagged["ids"])


def _check_classes_unchanged(dataset, results, label_path):
    current = set(dataset.distinct(label_path))
    missing = sorted(set(results.classes) - current)
    if missing:
        raise TransferScopeError(
            f"class(es) {missing[:5]} of run {results.key!r} are no longer labels of "
            f"{dataset.name!r} (renamed or removed since the run); compute the run again "
            f"before tagging"
        )


@tsv.renamed_keywords(run_key="influence_key")
def untag_classes(pretrain_dataset: DatasetLike, influence_key: str) -> dict:
    """Undoes :func:`tag_classes`: removes the tag from the samples it tagged
    (other tags, and samples tagged before, are left alone) and deletes the
    saved view it created."""
    dataset, results = _pretraining_run(pretrain_dataset, influence_key)
    with RunWrite(influence_key, "untagging", [dataset]) as write:
        record = run_record(dataset, influence_key, "curation_tags")
        if not record:
            raise TransferScopeError(
                f"run {influence_key!r} on {dataset.name!r} has no tagged classes to undo; "
                f"nothing changed"
            )
        write.replace_old(
            dataset,
            tags=[{"tag": record["tag"], "ids": record["tagged_ids"]}],
            views=[record["view_name"]],
        )
        write.set_record(dataset, "curation_tags", None)
        write.commit()
    return record


@tsv.renamed_keywords(run_key="influence_key", num_seeds="max_seeds")
def evaluate_curation(
    dataset: DatasetLike,
    influence_key: str,
    rule: str | None = None,
    k: int | None = None,
    threshold: float | None = None,
    classes: Sequence[str] | None = None,
    max_seeds: int = tsc.sequential.DEFAULT_MAX_SEEDS,
    sweep_ks: Sequence[int] | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: Progress = None,
    executor: str | tsc.Executor = "local",
    executor_options: dict | None = None,
    fdr_level: float = DEFAULT_FDR,
    confirm_each: bool = True,
    alpha: float = tsc.sequential.DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    round_seeds: int = tsc.sequential.DEFAULT_ROUND_SEEDS,
    outcome: str = DEFAULT_OUTCOME,
    sweep_seeds: int = DEFAULT_SWEEP_SEEDS,
) -> CurationResults:
    """Proves (or refutes) a curation by retraining: the paper's counterfactual.

    Retrains from scratch, with the run's own protocol (architecture, epochs,
    transfer), on each of: the full pretraining set; the curated set; the
    same number of classes removed at random (a new draw per seed); and the
    most helpful classes removed. Seed ``s`` is shared by all arms, so arms
    compare in pairs. With ``confirm_each`` (the default), every curated
    class is also removed on its own.

    Seeds are added in rounds of ``round_seeds`` until every verdict that
    decides the curation (each class removed alone, and the curated set
    against the full set) is settled, or ``max_seeds`` are spent. A verdict
    is ``"confirmed"`` (the gain is above zero), ``"refuted"`` (below zero),
    ``"negligible"`` (within ``min_effect`` of zero) or ``"undecided"`` at
    the budget; each is wrong with probability at most ``alpha``, however
    many rounds were looked at (anytime-valid intervals, see
    :mod:`transferscope.compute.sequential`). Verdicts are decided on
    ``outcome``: ``"accuracy"`` (the default) or ``"prob"`` (the target
    test set's mean correct-class probability); accuracy is always reported. With ``sweep_ks`` (e.g. ``[4, 8, 12]``)
    each ``k`` is also tried most-harmful-first, most-helpful-first and at
    random over the first ``sweep_seeds`` seeds, for the
    accuracy-vs-classes-removed plot.

    For a sample-influence run, the curation removes images instead: see
    :func:`evaluate_sample_curation`.

    The curated set is chosen by ``rule`` (as :func:`tag_classes`); by
    default, the classes last tagged with :func:`tag_classes`, else the
    harmful classes at false-discovery level ``fdr_level``.

    Models go to resumable stores under the run's output directory (one per
    round); calling again after a crash trains only the unfinished ones and
    stops where an uninterrupted call would. The summary is stored in the
    run (``results.curation`` on both datasets).

    Args:
        dataset: the run's target or pretraining dataset (or its name)
        influence_key: a class-influence run
        max_seeds: the seed budget per arm (``num_seeds`` is its old name)
        sweep_ks: optional numbers of classes to remove for the sweep
        seed: seed of the random-removal draws
        device: override the run's device (``"cpu"``, ``"cuda"``, ``"auto"``)
        alpha, min_effect, round_seeds, outcome: the stopping rule (above)
        progress, executor, executor_options: as
            :func:`transferscope.compute_class_influence`

    Returns:
        a :class:`CurationResults`: the summary dict (accuracy per arm with
        anytime-valid 95% intervals, the verdicts, the seeds used), with
        ``describe()`` and ``plotly()``
    """
    stopping = stopping_rule(alpha, min_effect, round_seeds, max_seeds, outcome)
    if _is_sample_run(dataset, influence_key):
        if classes is not None or sweep_ks:
            raise TransferScopeError(
                f"run {influence_key!r} scores images, not classes: classes= and sweep_ks= "
                f"do not apply (see evaluate_sample_curation)"
            )
        return evaluate_sample_curation(
            dataset,
            influence_key,
            rule,
            k,
            threshold,
            max_seeds=max_seeds,
            seed=seed,
            device=device,
            progress=progress,
            executor=executor,
            executor_options=executor_options,
            alpha=alpha,
            min_effect=min_effect,
            round_seeds=round_seeds,
            outcome=outcome,
        )
    run = InfluenceRun.load(dataset, influence_key)
    pretrain, target = run.datasets
    results = run.results
    run.store()

    removed, rule_label = _curated_classes(
        pretrain, influence_key, results, rule, k, threshold, classes, fdr_level
    )
    index = {c: i for i, c in enumerate(results.classes)}

    def plan_for(num_seeds):
        return tsc.plan_curation(
            results.class_influence,
            [index[c] for c in removed],
            num_seeds,
            sweep_ks or (),
            seed,
            each=confirm_each,
            sweep_seeds=sweep_seeds,
        )

    try:
        plan_for(stopping.max_seeds)  # bad arguments are refused before any training
        train_config = run.training_config_for(device)
    except ValueError as e:
        raise TransferScopeError(str(e)) from e

    labelled = run.labelled(unchanged_for="evaluating a curation")
    runner = prepare_executor(executor, executor_options, train_config)
    data = labelled.decode(train_config.image_size, train_config.channels, train_config.resize)
    path = os.path.join(results.config.output_dir, "curation")
    summary = _retrain_classes(
        plan_for, train_config, data, runner, path, results.classes, stopping, outcome, progress
    )
    summary.update(
        rule=rule_label,
        k=k,
        threshold=threshold,
        seed=seed,
        store=path,
        target_dataset=target.name,
        pretrain_dataset=pretrain.name,
    )
    _record_curation(influence_key, target, pretrain, summary)
    return CurationResults(summary)


def _retrain_classes(plan_for, config, data, runner, path, classes, stopping, outcome, progress):
    """Retrains a class curation's plan in rounds until its verdicts settle; the summary."""
    meta = {"classes": list(classes)}

    def summarize(rounds, num_seeds):
        plan = plan_for(num_seeds)
        return tsc.summarize_curation(
            plan,
            rounds.per_model("accuracy", plan.masks, plan.seeds),
            classes,
            rounds.per_model(outcome, plan.masks, plan.seeds),
            stopping,
            outcome,
        )

    def rows_for(num_seeds):
        plan = plan_for(num_seeds)
        return plan.masks, plan.seeds

    rounds, num_seeds = retrain_until_decided(
        rows_for,
        tsc.run_retraining,
        config,
        data,
        runner,
        path,
        lambda rounds, n: tsc.curation.curation_decided(summarize(rounds, n)),
        stopping,
        progress,
        "Retraining for the curation counterfactual",
        meta,
    )
    return summarize(rounds, num_seeds)


def _curated_classes(pretrain, key, results, rule, k, threshold, classes, fdr_level):
    """``(removed class names, rule label)``: the classes last tagged when ``rule``
    is None, else those ``rule`` selects (the default rule without tags)."""
    rule_label = rule
    if rule is None:
        tagged = run_record(pretrain, key, "curation_tags")
        if tagged:
            rule, classes = "classes", tagged["classes"]
            rule_label = f"tagged ({tagged['rule']})"
        else:
            rule = rule_label = DEFAULT_RULE
    return select_removed_classes(results, rule, k, threshold, classes, fdr_level), rule_label


def _record_curation(key, target, pretrain, summary):
    """Stores a curation summary in run ``key`` on both datasets, atomically."""
    with RunWrite(key, "curation", [target, pretrain]) as write:
        for ds in (target, pretrain):
            write.set_record(ds, "curation", summary)
        write.commit()


def _is_sample_run(dataset, key):
    root = tsv.load_dataset(dataset, "dataset")._root_dataset
    return (
        isinstance(key, str)
        and key in root.list_runs()
        and getattr(root.get_run_info(key).config, "method", None) == "sample_influence"
    )


@tsv.renamed_keywords(run_key="influence_key")
def curation_of(dataset: DatasetLike, influence_key: str) -> CurationResults:
    """The stored summary of :func:`evaluate_curation` for a run."""
    root = InfluenceRun.load(dataset, influence_key).root
    summary = run_record(root, influence_key, "curation")
    if not summary:
        raise TransferScopeError(
            f"run {influence_key!r} on {root.name!r} has no curation evaluation; "
            f"run evaluate_curation first"
        )
    return CurationResults(summary)


def describe_curation(summary):
    """Lines of text that report a curation summary honestly."""

    def pct(x):
        return f"{100 * x:.1f}%"

    cells = {(c["arm"], c["k"]): c for c in summary["cells"]}
    k = summary["num_removed"]
    full, cur = cells[("full", 0)], cells[("curated", k)]
    rnd, helpful = cells[("random", k)], cells[("helpful_first", k)]
    lines = [
        f"Curated set: {k} class(es) removed by rule {summary['rule']!r}: "
        f"{', '.join(summary['removed'])}",
        *describe_stopping(summary),
        f"Target accuracy over {summary['num_seeds']} seeds (mean, 95% interval):",
    ]
    for label, cell in (
        ("full pretraining set", full),
        (f"curated ({k} removed)", cur),
        (f"{k} random classes removed", rnd),
        (f"{k} most helpful removed", helpful),
    ):
        lo, hi = cell["ci95"]
        lines.append(f"  {label:<28s} {pct(cell['accuracy'])}  [{pct(lo)}, {pct(hi)}]")
    lines.append("Paired by seed (accuracy change in points; the verdict's outcome):")
    for row in summary.get("each_removed_vs_full", []):
        lines.append(describe_check(f"only {row['class']} removed - full", row))
    for name, label in (
        ("curated_vs_full", "curated - full"),
        ("curated_vs_random", "curated - random"),
        ("most_helpful_removed_vs_full", "helpful removed - full"),
    ):
        lines.append(describe_check(label, summary[name]))
    ks = sorted({row["k"] for row in summary.get("vs_full", [])})
    if len(ks) > 1:
        by = {(row["arm"], row["k"]): row for row in summary["vs_full"]}
        fixed = [row["num_pairs"] for row in summary["vs_full"] if row.get("interval_kind")]
        kind = (
            f"paired 95% t-intervals over the first {fixed[0]} seeds; at k = "
            f"{summary['num_removed']} anytime-valid over all {summary['num_seeds']}"
            if fixed
            else "95% interval"
        )
        lines.append(f"Sweep, accuracy change against the full set (points, {kind}):")
        lines.append(
            f"  {'k':>4s}  {'most harmful first':>22s}  {'most helpful first':>22s}  "
            f"{'random':>22s}"
        )
        for kk in ks:
            cols = [
                f"{100 * by[(o, kk)]['diff']:+5.1f} {points_interval(by[(o, kk)]['ci95'])}"
                for o in ("harmful_first", "helpful_first", "random")
            ]
            lines.append(f"  {kk:>4d}  " + "  ".join(f"{c:>22s}" for c in cols))
    return lines


# --- images: a sample-influence run ---------------------------------------------


DEFAULT_IMAGE_TAG = "remove_image"
SAMPLE_RULES = ("most_harmful", "below_threshold")


class SampleCurationResults(JobResults):
    """What :func:`evaluate_sample_curation` measured: accuracy per arm (full,
    curated, random removal) with 95% CIs, and paired tests."""

    def describe(self):
        return describe_sample_curation(self)

    def plotly(self):
        arms = self["cells"]
        trace = {
            "type": "bar",
            "x": [c["arm"] for c in arms],
            "y": [c["accuracy"] for c in arms],
            "error_y": {
                "type": "data",
                "symmetric": False,
                "array": [c["ci95"][1] - c["accuracy"] for c in arms],
                "arrayminus": [c["accuracy"] - c["ci95"][0] for c in arms],
            },
        }
        layout = {
            "title": {"text": f"Target accuracy, {self['num_removed']} images removed"},
            "yaxis": {"title": {"text": "accuracy (mean, 95% CI)"}},
        }
        return [trace], layout


def select_samples(pretrain_ids, scores, rule="most_harmful", k=None, threshold=None):
    """The pretraining sample ids a rule selects, most harmful first.

    ``scores``: each sample's overall score (``<key>_score``); ``"most_harmful"``
    takes the ``k`` lowest, ``"below_threshold"`` those below ``threshold``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    if rule == "most_harmful":
        tsv.check_count(k, "k", 1, len(scores) - 1, note="pretraining images, less one")
        chosen = order[:k]
    elif rule == "below_threshold":
        tsv.check_number(threshold, "threshold")
        chosen = [i for i in order if scores[i] < threshold]
        if not chosen:
            raise TransferScopeError(f"no pretraining image scores below {threshold}")
        if len(chosen) == len(scores):
            raise TransferScopeError(
                f"every pretraining image scores below {threshold}; removing all is no curation"
            )
    else:
        raise TransferScopeError(f"rule must be one of {SAMPLE_RULES}; got {rule!r}")
    return [pretrain_ids[i] for i in chosen]


def _pretraining_side(dataset, key):
    root, config = load_sample_run(dataset, key)
    if config.pretrain_dataset != root.name:
        raise TransferScopeError(
            f"{root.name!r} is not the pretraining dataset of run {key!r} (that is "
            f"{config.pretrain_dataset!r}); tag images there"
        )
    return root, root.load_run_results(key, cache=False)


@tsv.renamed_keywords(run_key="influence_key")
def tag_samples(
    pretrain_dataset: DatasetLike,
    influence_key: str,
    rule: str = "most_harmful",
    k: int | None = None,
    threshold: float | None = None,
    tag: str = DEFAULT_IMAGE_TAG,
    view_name: str | None = None,
) -> dict:
    """Tags the pretraining images a sample-influence run finds most harmful.

    ``rule``: ``"most_harmful"`` (the ``k`` images with the lowest
    ``<influence_key>_score``) or ``"below_threshold"`` (those scoring below
    ``threshold``). Adds ``tag`` to them, saves the pretraining dataset
    without them as ``view_name`` (default ``<influence_key>_curated``) and
    records the choice in the run; tagging again replaces the previous
    choice. Bad input raises before anything changes.

    Returns:
        the record stored in the run (a dict)
    """
    dataset, results = _pretraining_side(pretrain_dataset, influence_key)
    tsv.validate_tag(tag)
    view_name = f"{influence_key}_curated" if view_name is None else view_name
    if not isinstance(view_name, str) or not view_name.strip():
        raise TransferScopeError(f"view_name must be a non-empty string; got {view_name!r}")
    ids = list(results.pretrain_ids)
    score_field = f"{influence_key}_score"
    by_id = dict(zip(*dataset.select(ids).values(["id", score_field])))
    missing = [i for i in ids if by_id.get(i) is None]
    if missing:
        raise TransferScopeError(
            f"{len(missing)} pretraining sample(s) of run {influence_key!r} have no "
            f"{score_field!r} any more (deleted or cleared); compute the run again"
        )
    chosen = select_samples(ids, [by_id[i] for i in ids], rule, k, threshold)

    with RunWrite(influence_key, "tagging", [dataset]) as write:
        previous = run_record(dataset, influence_key, "curation_tags")
        if previous:
            write.replace_old(
                dataset,
                tags=[{"tag": previous["tag"], "ids": previous["tagged_ids"]}],
                views=[previous["view_name"]],
            )
        tagged = write.tag(dataset, chosen, tag)
        record = {
            "rule": rule,
            "k": k,
            "threshold": threshold,
            "tag": tag,
            "view_name": view_name,
            "sample_ids": chosen,
            "num_samples": len(chosen),
        }
        write.save_view(dataset, view_name, lambda: dataset.match_tags(tag, bool=False))
        write.set_record(dataset, "curation_tags", lambda: dict(record, tagged_ids=tagged["ids"]))
        write.commit()
    return dict(record, tagged_ids=tagged["ids"])


@tsv.renamed_keywords(run_key="influence_key", num_seeds="max_seeds")
def evaluate_sample_curation(
    dataset: DatasetLike,
    influence_key: str,
    rule: str | None = None,
    k: int | None = None,
    threshold: float | None = None,
    max_seeds: int = tsc.sequential.DEFAULT_MAX_SEEDS,
    seed: int = 0,
    device: str | None = None,
    progress: Progress = None,
    executor: str | tsc.Executor = "local",
    executor_options: dict | None = None,
    sample_ids: Sequence[str] | None = None,
    alpha: float = tsc.sequential.DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    round_seeds: int = tsc.sequential.DEFAULT_ROUND_SEEDS,
    outcome: str = DEFAULT_OUTCOME,
) -> SampleCurationResults:
    """Checks an example-level curation by retraining, with the run's protocol.

    Retrains on each of: every pretraining image; every image but those the
    curation removes; every image but as many drawn at random (a new draw
    per seed). Seed ``s`` is shared by the three arms, so they compare in
    pairs. Seeds are added in rounds until the curated set's verdict against
    the full set is settled or ``max_seeds`` are spent, as in
    :func:`evaluate_curation` (``alpha``, ``min_effect``, ``round_seeds``,
    ``outcome``). The curation is the images last tagged with
    :func:`tag_samples`, those ``rule`` selects (as there), or the
    pretraining images ``sample_ids`` names (a hand-picked set, say the
    selection in the App). Resumable; the summary is stored in the run
    (``curation`` on both datasets).
    """
    stopping = stopping_rule(alpha, min_effect, round_seeds, max_seeds, outcome)
    root, config = load_sample_run(dataset, influence_key)
    pretrain, target = (
        tsv.load_dataset(n, "the run's dataset")
        for n in (config.pretrain_dataset, config.target_dataset)
    )
    results = pretrain.load_run_results(influence_key, cache=False)
    if sample_ids is not None:
        if rule is not None:
            raise TransferScopeError("pass rule= or sample_ids=, not both")
        removed = _given_images(sample_ids, results.pretrain_ids, influence_key)
        rule_label = "given images"
    elif rule is None:
        tagged = run_record(pretrain, influence_key, "curation_tags")
        if not tagged:
            raise TransferScopeError(
                f"run {influence_key!r} has no tagged images; tag them with tag_samples "
                f"or pass rule= and k= or threshold="
            )
        removed, rule_label = tagged["sample_ids"], f"tagged ({tagged['rule']})"
    else:
        ids = list(results.pretrain_ids)
        scores = dict(zip(*pretrain.select(ids).values(["id", f"{influence_key}_score"])))
        removed = select_samples(ids, [scores[i] for i in ids], rule, k, threshold)
        rule_label = rule
    row = {sample_id: i for i, sample_id in enumerate(results.pretrain_ids)}

    def plan_for(num_seeds):
        return tsc.curation.plan_sample_curation(
            len(row), [row[i] for i in removed], num_seeds, seed
        )

    try:
        plan_for(stopping.max_seeds)
        train_config = influence_config_of(results)
        if device is not None:
            train_config = tsc.InfluenceConfig.from_dict(
                {**train_config.to_dict(), "device": device}
            )
            tsc.resolve_device(train_config.device)
    except (ValueError, RuntimeError) as e:
        raise TransferScopeError(str(e)) from e

    labelled = _labelled_unchanged(pretrain, target, config, results)
    runner = prepare_executor(executor, executor_options, train_config)
    data = labelled.decode(train_config.image_size, train_config.channels, train_config.resize)

    def summarize(rounds, num_seeds):
        masks, seeds, arms = plan_for(num_seeds)
        return tsc.curation.summarize_sample_curation(
            arms,
            seeds,
            rounds.per_model("accuracy", masks, seeds),
            rounds.per_model(outcome, masks, seeds),
            stopping,
            outcome,
        )

    path = os.path.join(config.output_dir, "curation")
    rounds, num_seeds = retrain_until_decided(
        lambda n: plan_for(n)[:2],
        tsc.engine.run_sample_retraining,
        train_config,
        data,
        runner,
        path,
        lambda rounds, n: tsc.curation.sample_curation_decided(summarize(rounds, n)),
        stopping,
        progress,
        "Retraining for the image curation counterfactual",
    )
    summary = summarize(rounds, num_seeds)
    summary.update(
        rule=rule_label,
        k=k,
        threshold=threshold,
        seed=seed,
        num_removed=len(removed),
        store=path,
        target_dataset=target.name,
        pretrain_dataset=pretrain.name,
    )
    _record_curation(influence_key, target, pretrain, summary)
    return SampleCurationResults(summary)


def _given_images(sample_ids, pretrain_ids, key):
    """``sample_ids`` checked: distinct pretraining images of run ``key``,
    some but not all of them."""
    message = "sample_ids must be a list of pretraining sample ids (strings)"
    if isinstance(sample_ids, str):
        raise TransferScopeError(message)
    try:
        ids = list(sample_ids)  # once: a generator is read here only
    except TypeError:
        raise TransferScopeError(message) from None
    if not all(isinstance(i, str) for i in ids):
        raise TransferScopeError(message)
    if not ids:
        raise TransferScopeError("sample_ids is empty: name at least one pretraining image")
    if len(set(ids)) != len(ids):
        raise TransferScopeError("sample_ids names an image more than once")
    known = set(pretrain_ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise TransferScopeError(
            f"{len(unknown)} of sample_ids are not pretraining images of run {key!r} "
            f"(first: {unknown[0]!r})"
        )
    if len(ids) == len(known):
        raise TransferScopeError(
            "sample_ids names every pretraining image; removing all is no curation"
        )
    return ids


def _labelled_unchanged(pretrain, target, config, results):
    """The run's transfer problem read again, refused if its images changed."""
    labelled = collect_labels(pretrain, target, *(getattr(config, n) for n in SPLIT_DEFAULTS))
    if [str(i) for i in labelled.pre_ids] != list(results.pretrain_ids) or [
        str(i) for i in labelled.test_ids
    ] != list(results.target_ids):
        raise TransferScopeError(
            f"the datasets of run {results.key!r} changed since it was computed (pretraining "
            f"or test images differ); compute the run again before evaluating a curation"
        )
    return labelled


def describe_sample_curation(summary):
    """Lines of text that report an example-level curation check."""

    def pct(x):
        return f"{100 * x:.1f}%"

    lines = [
        f"Curated set: {summary['num_removed']} pretraining images removed by rule "
        f"{summary['rule']!r}",
        *describe_stopping(summary),
        f"Target accuracy over {summary['num_seeds']} seeds (mean, 95% interval):",
    ]
    names = {"full": "every image", "curated": "curated", "random": "as many random removed"}
    for cell in summary["cells"]:
        lo, hi = cell["ci95"]
        lines.append(f"  {names[cell['arm']]:<24s} {pct(cell['accuracy'])}  [{pct(lo)}, {pct(hi)}]")
    for name, label in (
        ("curated_vs_full", "curated - full"),
        ("curated_vs_random", "curated - random"),
    ):
        lines.append(describe_check(label, summary[name]))
    return lines
