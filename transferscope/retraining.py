"""One way to check a choice by retraining: seeds in rounds, stopped when the verdict settles.

Every retraining check (a class curation, an image curation, a failure's
culprit) trains the same arms for seed after seed and compares them in pairs.
:func:`retrain_in_rounds` adds ``rule.round_seeds`` seeds to every arm, looks,
and stops when the check's verdicts are decided or the seed budget is spent
(see :mod:`transferscope.compute.sequential`). :class:`RoundStores` keeps a
check's rounds when its rows are (mask, seed) pairs; the class-count
planner keeps its own (cells). Each round is its own resumable store named
by its rows, so a process killed anywhere, then the
same call again, trains only what is missing and reaches the same stopping
point (the decision after a round depends only on the stored outputs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

from . import compute as tsc
from .influence_run import run_with_progress
from .views import TransferScopeError

logger = logging.getLogger(__name__)

# What a check decides on: the per-model mean over the target's test samples,
# of 0/1 accuracy (the default: what users act on) or of the correct class's
# probability. Measured on the demo, the continuous outcome is no less noisy
# per seed in accuracy-equivalent points (3.77 against 3.83:
# benchmarks/results/paired_noise.json): the noise is the trained features',
# not the test set's.
DECISION_OUTCOMES = ("accuracy", "prob")
DEFAULT_OUTCOME = "accuracy"
# within one point an effect is too small to act on
DEFAULT_MIN_EFFECT = 0.01
_STORE_OUTPUT = {"prob": "prob", "accuracy": "correct"}


class RoundStores:
    """The rounds of a check whose rows are ``(mask, seed)`` pairs: one resumable
    store per round, named by its rows, and the outputs of every round so far
    read row by row of a plan.

    Args:
        plan_for: ``n -> (masks, seeds)``, every row of the check at ``n``
            seeds; the rows of seed ``s`` must not depend on ``n``
        train: ``(store, on_model_done) -> None``, trains a store's pending rows
        store_root: folder of the round stores
        open_store: ``(path, masks, seeds) -> store``
        rule: the stopping rule (its budget sizes the progress count)
        progress: as :func:`transferscope.compute_class_influence`; a callable
            gets ``(done, total)`` with ``total`` the models at the full budget
        start_msg: what the progress bar says
    """

    def __init__(self, plan_for, train, store_root, open_store, rule, progress, start_msg):
        self.plan_for, self.train, self.open_store = plan_for, train, open_store
        self.store_root, self.progress, self.start_msg = store_root, progress, start_msg
        self.max_seeds = rule.max_seeds
        self.total_rows = len(plan_for(rule.max_seeds)[1])
        self.stores = []

    def train_round(self, first, last):
        """Trains seeds ``first`` to ``last - 1`` of every arm (resumable)."""
        masks, seeds = self.plan_for(last)
        new = seeds >= first
        path = os.path.join(self.store_root, tsc.digests.digest(masks[new], seeds[new]))
        store = self.open_store(path, masks[new], seeds[new])
        run_with_progress(
            (store, lambda done: self.train(store, done)),
            _offset(self.progress, int((~new).sum()), self.total_rows),
            f"{self.start_msg} (seeds {first + 1}-{last} of at most {self.max_seeds})",
        )
        self.stores.append(store)

    def outputs(self, name, masks, seeds):
        """``(R, T)`` output ``name`` of each ``(mask, seed)`` row of a plan."""
        where = {}
        for store in self.stores:
            store_seeds = store.spec["meta"]["seeds"]
            for i, (mask, s) in enumerate(zip(store.masks, store_seeds)):
                where[(np.asarray(mask, bool).tobytes(), int(s))] = (store, i)
        rows = [where[(np.asarray(m, bool).tobytes(), int(s))] for m, s in zip(masks, seeds)]
        cache = {}
        out = []
        for store, i in rows:
            if id(store) not in cache:
                cache[id(store)] = store.outputs(name, only_completed=False)
            out.append(cache[id(store)][i])
        return np.stack(out)

    def per_model(self, outcome, masks, seeds):
        """``(R,)`` mean over test samples of a decision outcome (or ``"correct"``)."""
        name = _STORE_OUTPUT.get(outcome, outcome)
        return self.outputs(name, masks, seeds).astype(np.float64).mean(axis=1)


def stopping_rule(alpha, min_effect, round_seeds, max_seeds, outcome):
    """The checked :class:`StoppingRule` of a call, or ``TransferScopeError`` naming
    the bad argument (before anything is trained or written)."""
    try:
        tsc.checks.check_choice(outcome, "outcome", DECISION_OUTCOMES)
        rule = tsc.StoppingRule(
            alpha=alpha, min_effect=min_effect, round_seeds=round_seeds, max_seeds=max_seeds
        )
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    if not rule.can_decide():
        logger.warning(
            "a seed budget of %d cannot decide anything at alpha %g (the interval stays "
            "unbounded below about 7 seeds): every verdict will be undecided",
            max_seeds,
            alpha,
        )
    return rule


def retrain_in_rounds(
    train_round: Callable[[int, int], None],
    decided: Callable[[int], bool],
    rule: tsc.StoppingRule,
) -> int:
    """The one loop of every retraining check: trains round after round until
    ``decided`` or the budget; the number of seeds per arm it stopped at.

    ``train_round(first, last)`` trains seeds ``first`` to ``last - 1`` of
    every arm (resumably: a round already trained costs nothing);
    ``decided(n)`` looks at the evidence of the first ``n`` seeds. Looks come
    after every ``rule.round_seeds`` seeds (:meth:`StoppingRule.looks`), so
    the check stops where an uninterrupted call would, whatever was resumed.
    """
    done = 0
    for look in rule.looks():
        train_round(done, look)
        done = look
        if decided(look):
            break
    return done


def retrain_until_decided(
    plan_for,
    trainer,
    config,
    data,
    runner,
    store_root,
    decided,
    rule,
    progress,
    start_msg,
    meta=None,
):
    """A check whose rows are ``(mask, seed)`` pairs, trained round by round until
    ``decided(rounds, n)`` or the budget; ``(rounds, seeds per arm)``.

    ``trainer``: :func:`transferscope.compute.run_retraining` (class masks) or
    ``compute.engine.run_sample_retraining`` (image masks); ``config``,
    ``data``, ``runner``: what it trains with; ``meta``: kept in each round's
    store; the rest as :class:`RoundStores` and :func:`retrain_in_rounds`.
    """
    rounds = RoundStores(
        plan_for,
        lambda store, done: trainer(config, data, store, done, runner),
        store_root,
        lambda path, masks, seeds: tsc.open_retrain_store(path, config, data, masks, seeds, meta),
        rule,
        progress,
        start_msg,
    )
    return rounds, retrain_in_rounds(rounds.train_round, lambda n: decided(rounds, n), rule)


def _offset(progress, already, total):
    """A progress callback that counts earlier rounds' models and the full budget."""
    if not callable(progress):
        return progress
    return lambda done, _: progress(already + done, total)


def points_interval(interval):
    return f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"


def describe_check(label, row):
    """One line for a sequential paired check: the accuracy change, the decision
    outcome's interval and the verdict with its error level."""
    d = row.get("decision")
    if d is None:  # a summary stored before verdicts were sequential
        return (
            f"  {label:<26s} {100 * row['diff']:+.1f} points, 95% CI {points_interval(row['ci95'])}, "
            f"better in {row['wins']}/{row['num_pairs']} seeds"
        )
    decided_on = (
        f"; correct-class prob. {100 * d['diff']:+.2f} {points_interval(d['interval'])}"
        if d["outcome"] == "prob"
        else ""
    )
    return (
        f"  {label:<26s} {100 * row['diff']:+.1f} points {points_interval(row['ci95'])}"
        f"{decided_on}: {row['verdict']} (alpha {d['alpha']:.3g}, {row['num_pairs']} seeds, "
        f"better in {row['wins']})"
    )


def describe_stopping(summary):
    rule = summary.get("stopping_rule")
    if not rule:
        return []
    return [
        f"Verdicts decided sequentially on {summary['outcome']!r}: seeds added "
        f"{rule['round_seeds']} at a time, stopped at {summary['num_seeds']} of at most "
        f"{rule['max_seeds']}; intervals are anytime-valid, each verdict wrong with "
        f"probability at most its alpha; negligible means within "
        f"+-{100 * rule['min_effect']:g} points"
    ]
