"""``find_subpopulations`` and ``explain_failures``: two readings of a class-influence run.

    ts.find_subpopulations("digits", "influence", k=2)      # finer groups than the labels
    ts.explain_failures("digits", "influence")               # which classes cause the errors

Both read the run's stored influence and per-model outputs; only the
counterfactual check of ``explain_failures`` trains models (resumable).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import fiftyone as fo
import numpy as np

from . import compute as tsc
from . import views as tsv
from .compute import subpopulations as sp
from .influence_run import InfluenceRun, prepare_executor
from .plots import culprits_plotly, subpopulations_plotly
from .results import JobResults
from .retraining import (
    DEFAULT_MIN_EFFECT,
    DEFAULT_OUTCOME,
    describe_check,
    retrain_until_decided,
    stopping_rule,
)
from .runs import commit_run, open_write
from .views import DatasetLike, Progress, TransferScopeError

logger = logging.getLogger(__name__)

# top-class grouping makes a group per helpful class; tiny ones get no saved view
MIN_VIEW_SIZE = 5


def _run_and_labels(dataset, influence_key):
    """The run, its complete store, its test sample ids and their labels (as indices)."""
    run = InfluenceRun.load(dataset, influence_key)
    config = run.run_config
    target, results = run.datasets[1], run.results
    store = run.store()
    ids = list(results.target_ids)
    labels = target.select(ids, ordered=True).values(f"{config.target_label_field}.label")
    if len(labels) != len(ids) or any(l is None for l in labels):
        raise TransferScopeError(
            f"the test samples of run {influence_key!r} changed since it was computed (some are "
            f"gone or unlabelled); compute the run again"
        )
    index = {c: i for i, c in enumerate(results.target_classes)}
    unknown = sorted({l for l in labels if l not in index})
    if unknown:
        raise TransferScopeError(
            f"test labels {unknown} are not among the run's target classes; compute the run again"
        )
    return run, store, ids, np.array([index[l] for l in labels])


class SubpopulationResults(JobResults):
    """The groups :func:`find_subpopulations` found, per target class."""

    def describe(self):
        return describe_subpopulations(self)

    def plotly(self):
        return subpopulations_plotly(self)


class FailureResults(JobResults):
    """What :func:`explain_failures` found: failures, culprits, counterfactual."""

    def describe(self):
        return describe_failures(self)

    def plotly(self):
        return culprits_plotly(self)


def subpopulation_fields(key):
    return [key, f"{key}_strength"]


@tsv.renamed_keywords(run_key="influence_key")
def find_subpopulations(
    dataset: DatasetLike,
    influence_key: str,
    key: str | None = None,
    k: int | None = None,
    target_classes: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> SubpopulationResults:
    """Splits each target class into subpopulations by the pretraining classes that help it.

    For each target class, its test samples are grouped by their influence
    z-scores (``Infl[c -> t]`` over its standard error): with ``k=None`` by
    the single most helpful pretraining class, with ``k`` by k-means into
    ``k`` groups, each named by the class that helps it most relative to the
    rest of its target class (raw influence; the next ones are listed in the
    summary as ``characteristic_classes``).

    Writes on the run's target test samples ``<key>`` (a Classification
    ``"<target class> / <pretraining class>"``) and ``<key>_strength`` (the
    top class's z-score, or with ``k`` the sample's silhouette in [-1, 1]);
    a saved view ``"<key> <subpopulation>"`` per subpopulation of at least
    5 samples; and run ``key`` on the target dataset (deleting it removes
    all of this).

    Args:
        dataset: the run's target (or pretraining) dataset, or its name
        influence_key: a class-influence run
        key: run key of this analysis (default ``<influence_key>_subpops``)
        k: groups per target class, or None for top-class grouping
        target_classes: the target classes to split (default: all)
        seed: of k-means

    Returns:
        a :class:`SubpopulationResults`: per target class, each
        subpopulation's name, size, accuracy of the run's models on it and
        mean strength; with ``describe()`` and ``plotly()``
    """
    key = key or f"{influence_key}_subpops"
    tsv.validate_run_key(key)
    run, store, ids, labels = _run_and_labels(dataset, influence_key)
    target, results = run.datasets[1], run.results
    fields = subpopulation_fields(key)
    with open_write(target._root_dataset, key, "subpopulations", overwrite, fields) as write:
        names = list(results.target_classes)
        chosen = _check_target_classes(target_classes, names)
        members = {c: np.flatnonzero(labels == names.index(c)) for c in chosen}
        if k is not None:  # every class checked before anything is computed or written
            tsv.check_count(k, "k", 2, note=" (or None for the top class)")
            for c, cols in members.items():
                if k > len(cols):
                    raise TransferScopeError(
                        f"k={k} groups but target class {c!r} has only {len(cols)} test sample(s)"
                    )
        summary, label_of, strength_of = _group_classes(results, store, members, ids, k, seed)
        root = target._root_dataset
        label_f, strength_f = fields
        values = {
            label_f: {i: fo.Classification(label=label) for i, label in label_of.items()},
            strength_f: strength_of,
        }
        saved_views = {
            f"{key} {g['name']}": (
                lambda name=g["name"]: root.match(tsv.label_is(f"{label_f}.label", name)).sort_by(
                    strength_f, reverse=True
                )
            )
            for groups in summary["classes"].values()
            for g in groups
            if g["size"] >= MIN_VIEW_SIZE
        }
        summary["saved_views"] = list(saved_views)
        params = dict(run_key=influence_key, k=k, target_classes=chosen, seed=seed)
        commit_run(
            write,
            root,
            "subpopulations",
            {label_f: fo.Classification, strength_f: fo.FloatField},
            values,
            saved_views,
            summary,
            params,
        )
        return SubpopulationResults(summary)


def _check_target_classes(target_classes, names):
    chosen = names if target_classes is None else list(target_classes)
    if isinstance(target_classes, str) or not chosen:
        raise TransferScopeError(
            f"target_classes must be a non-empty list of names; got {target_classes!r}"
        )
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise TransferScopeError(f"unknown target class(es) {unknown}; the run has {names}")
    return chosen


def _group_classes(results, store, members, ids, k, seed):
    """Groups each target class's test samples; returns the summary and each
    grouped sample's subpopulation name and strength."""
    influence = np.asarray(results.influence).T  # (T, C)
    z = sp.z_scores(results.influence, results.stderr).T
    accuracy = store.outputs("correct").mean(axis=0)
    label_of, strength_of, summary = {}, {}, {"k": k, "classes": {}}
    for c, cols in members.items():
        if len(cols) == 0:
            continue
        try:
            grouping = sp.group_by_influence(
                z[cols], list(results.classes), k=k, seed=seed, influence=influence[cols]
            )
        except ValueError as e:
            raise TransferScopeError(f"target class {c!r}: {e}") from e
        groups = []
        for g, name in enumerate(grouping.names):
            in_g = grouping.labels == g
            label = f"{c} / {name}"
            groups.append(
                {
                    "name": label,
                    "pretraining_class": name,
                    "characteristic_classes": grouping.characteristic[g],
                    "size": int(in_g.sum()),
                    "accuracy": float(accuracy[cols[in_g]].mean()),
                    "mean_strength": float(grouping.strength[in_g].mean()),
                }
            )
            for t, strength in zip(cols[in_g], grouping.strength[in_g]):
                label_of[ids[t]] = label
                strength_of[ids[t]] = float(strength)
        groups.sort(key=lambda row: -row["size"])
        summary["classes"][c] = groups
    return summary, label_of, strength_of


def describe_subpopulations(summary, max_groups=4):
    """Lines of text: each target class's largest subpopulations."""
    lines = []
    for c, groups in summary["classes"].items():
        parts = [
            f"{'/'.join(g['characteristic_classes'][:2])} ({g['size']}, "
            f"{100 * g['accuracy']:.0f}% right)"
            for g in groups[:max_groups]
        ]
        more = f", +{len(groups) - max_groups} more" if len(groups) > max_groups else ""
        lines.append(f"  {c:>8s}: " + ", ".join(parts) + more)
    return lines


def failure_fields(key):
    return [f"{key}_wrong", f"{key}_culprits"]


@tsv.renamed_keywords(run_key="influence_key", num_seeds="max_seeds")
def explain_failures(
    dataset: DatasetLike,
    influence_key: str,
    key: str | None = None,
    pred_field: str | None = None,
    top_k: int = 3,
    check_top: bool = True,
    max_seeds: int = tsc.sequential.DEFAULT_MAX_SEEDS,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    progress: Progress = None,
    executor: str | tsc.Executor = "local",
    executor_options: dict | None = None,
    alpha: float = tsc.sequential.DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    round_seeds: int = tsc.sequential.DEFAULT_ROUND_SEEDS,
    outcome: str = DEFAULT_OUTCOME,
) -> FailureResults:
    """The pretraining classes that push misclassified target samples to their wrong answer.

    A failure is a test sample of the run whose prediction is wrong: by
    default the answer most of the run's models give, or the label of
    ``pred_field`` (a Classification field). The culprits of failure ``t``
    with wrong answer ``w`` are the classes with the highest influence on
    "a model predicts ``w`` for ``t``" (from the stored per-model
    predictions), in units of its standard error.

    With ``check_top``, the counterfactual: models are retrained (the run's
    protocol) on every class, on every class but the top culprit, and on
    every class but one drawn at random, seed after seed in rounds, until
    the verdict on the culprit (does removing it fix the failures blamed on
    it, on net, against the full model of the same seed?) is settled or
    ``max_seeds`` are spent: ``alpha``, ``min_effect``, ``round_seeds`` and
    ``outcome`` as in :func:`transferscope.evaluate_curation`. The summary
    reports how many blamed failures each removal fixes and breaks.

    Writes on the failures ``<key>_wrong`` (the wrong answer explained) and
    ``<key>_culprits`` (Classifications: the ``top_k`` culprits, with
    ``influence`` and ``z``); the saved view ``<key>_failures``; run ``key``.
    With no failure, writes nothing and says so in the summary.

    Returns:
        a :class:`FailureResults`: the summary dict (failures, culprit table,
        counterfactual), with ``describe()`` and ``plotly()``
    """
    key = key or f"{influence_key}_failures"
    tsv.validate_run_key(key)
    tsv.check_count(top_k, "top_k")
    stopping = (
        stopping_rule(alpha, min_effect, round_seeds, max_seeds, outcome) if check_top else None
    )
    run, store, ids, labels = _run_and_labels(dataset, influence_key)
    target, results = run.datasets[1], run.results
    fields = failure_fields(key)
    with open_write(target._root_dataset, key, "failure_explanation", overwrite, fields) as write:
        target_names = list(results.target_classes)
        predictions = store.outputs("pred")
        predicted, source = _predictions(target, ids, labels, pred_field, target_names, predictions)
        failed = np.flatnonzero((predicted >= 0) & (predicted != labels))
        summary = {"source": source, "num_test_samples": len(ids), "num_failures": int(len(failed))}
        if len(failed) == 0:
            summary["message"] = (
                f"no misclassified test sample according to {source}; nothing was written"
            )
            logger.info(summary["message"])
            return FailureResults(summary)

        wrong = predicted[failed]
        infl, z = sp.failure_influence(store.masks, predictions[:, failed], wrong)
        classes = list(results.classes)
        order = np.argsort(-z, axis=0, kind="stable")[: min(top_k, len(classes))].T  # (F, k)
        table = sp.culprit_summary(z, classes, top_k)
        summary["culprits"] = table[:20]
        summary["top_culprit"] = table[0]["class"]

        if check_top:
            culprit = classes.index(table[0]["class"])
            blamed = failed[(order == culprit).any(axis=1)]
            summary["counterfactual"] = _check_culprit(
                run,
                culprit,
                failed,
                blamed,
                stopping,
                outcome,
                seed,
                device,
                progress,
                executor,
                executor_options,
            )

        root = target._root_dataset
        wrong_f, culprits_f = fields
        failed_ids = [ids[t] for t in failed]
        values = {
            wrong_f: {
                i: fo.Classification(label=target_names[w]) for i, w in zip(failed_ids, wrong)
            },
            culprits_f: _culprit_labels(failed_ids, order, classes, infl, z),
        }
        view_name = f"{key}_failures"
        params = dict(
            run_key=influence_key,
            pred_field=pred_field,
            top_k=top_k,
            check_top=check_top,
            max_seeds=max_seeds,
            seed=seed,
        )
        # declared, so the App sidebar can filter on them
        subfields = [
            (culprits_f, f"classifications.{attr}", fo.FloatField) for attr in ("influence", "z")
        ]
        commit_run(
            write,
            root,
            "failure_explanation",
            {wrong_f: fo.Classification, culprits_f: fo.Classifications},
            values,
            {view_name: lambda: root.select(failed_ids)},
            summary,
            params,
            subfields=subfields,
        )
        summary["saved_view"] = view_name
        return FailureResults(summary)


def _predictions(target, ids, labels, pred_field, target_names, predictions):
    """Each test sample's predicted class index (-1: none) and where it comes from."""
    if pred_field is None:
        predicted, _ = sp.wrong_answers(predictions, labels)
        return predicted, "the run's models (majority answer)"
    tsv.check_classification_field(target, pred_field, "prediction")
    values = target.select(ids, ordered=True).values(f"{pred_field}.label")
    strange = sorted({v for v in values if v is not None and v not in target_names})
    if strange:
        raise TransferScopeError(
            f"{pred_field!r} holds labels that are not target classes of the run: {strange[:5]}"
        )
    predicted = np.array([-1 if v is None else target_names.index(v) for v in values])
    return predicted, f"field {pred_field!r}"


def _culprit_labels(failed_ids, order, classes, infl, z):
    """Each failure's top culprits as Classifications with ``influence`` and ``z``."""
    return {
        i: fo.Classifications(
            classifications=[
                fo.Classification(label=classes[c], influence=float(infl[c, f]), z=float(z[c, f]))
                for c in order[f]
            ]
        )
        for f, i in enumerate(failed_ids)
    }


def _check_culprit(
    run, culprit, failed, blamed, stopping, outcome, seed, device, progress, executor, options
):
    """Retrains without the culprit and without a random class, in rounds until the
    culprit's verdict settles; counts fixed failures."""
    results = run.results
    classes = list(results.classes)
    try:
        sp.plan_culprit_check(len(classes), culprit, stopping.max_seeds, seed)
        config = run.training_config_for(device)
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    labelled = run.labelled(unchanged_for="explaining failures")
    runner = prepare_executor(executor, options, config)
    data = labelled.decode(config.image_size, config.channels, config.resize)
    meta = {"classes": classes}

    def verdicts(rounds, num_seeds):
        masks, seeds, _ = sp.plan_culprit_check(len(classes), culprit, num_seeds, seed)
        name = "correct" if outcome == "accuracy" else outcome
        return sp.culprit_verdicts(
            rounds.outputs("correct", masks, seeds)[:, blamed].mean(axis=1),
            rounds.outputs(name, masks, seeds)[:, blamed].mean(axis=1),
            num_seeds,
            stopping,
            outcome,
        )

    rounds, num_seeds = retrain_until_decided(
        lambda n: sp.plan_culprit_check(len(classes), culprit, n, seed)[:2],
        tsc.run_retraining,
        config,
        data,
        runner,
        os.path.join(results.config.output_dir, "failures"),
        lambda rounds, n: verdicts(rounds, n)["culprit_vs_full"]["verdict"] != "undecided",
        stopping,
        progress,
        "Retraining without the top culprit",
        meta,
    )
    masks, seeds, randoms = sp.plan_culprit_check(len(classes), culprit, num_seeds, seed)
    correct = rounds.outputs("correct", masks, seeds)
    return {
        "culprit": classes[culprit],
        "random_classes": [classes[c] for c in randoms],
        "num_seeds": num_seeds,
        "stopping_rule": stopping.to_dict(),
        "outcome": outcome,
        "blamed_failures": int(len(blamed)),
        "on_blamed": sp.flip_counts(correct[:, blamed], num_seeds),
        "on_all_failures": sp.flip_counts(correct[:, failed], num_seeds),
        **verdicts(rounds, num_seeds),
    }


def describe_failures(summary, max_rows=8):
    """Lines of text that report :func:`explain_failures` honestly."""
    if summary["num_failures"] == 0:
        return [summary["message"]]
    lines = [
        f"{summary['num_failures']} of {summary['num_test_samples']} test samples are "
        f"misclassified ({summary['source']}). Classes behind the most failures:",
        f"  {'class':>12s}  {'strongest culprit of':>20s}  {'in top k of':>12s}",
    ]
    for row in summary["culprits"][:max_rows]:
        lines.append(f"  {row['class']:>12s}  {row['top1']:>20d}  {row['in_top_k']:>12d}")
    check = summary.get("counterfactual")
    if check:
        on = check["on_blamed"]
        lines.append(
            f"Counterfactual ({check['num_seeds']} seeds, paired): of the "
            f"{check['blamed_failures']} failures blamed on {check['culprit']!r}, removing it "
            f"fixes {on['culprit_removed']['fixed']:.1f} and breaks "
            f"{on['culprit_removed']['broken']:.1f} per model; removing a random class fixes "
            f"{on['random_removed']['fixed']:.1f} and breaks "
            f"{on['random_removed']['broken']:.1f} (the full model gets "
            f"{on['full']['correct']:.1f} of them right)"
        )
        if "culprit_vs_full" in check:  # verdicts on the blamed failures, paired by seed
            lines.append(describe_check("culprit removed - full", check["culprit_vs_full"]))
            lines.append(describe_check("culprit - random removed", check["culprit_vs_random"]))
    return lines
