"""Subpopulations and failure explanations from a class-influence matrix.

Two uses of ``Infl[c -> t]`` from Jain et al. (CVPR 2023):

- the pretraining classes that help a target sample most reveal finer
  subpopulations than the target labels (birds that look like ostriches):
  group a target class's samples by their most helpful pretraining class, or
  cluster their influence vectors into ``k`` groups;
- the classes that push a misclassified sample toward its wrong answer
  explain the failure: the influence of class ``c`` on "model predicts the
  wrong label w for t" (from the stored per-model predictions).

Influence is compared in units of its own standard error (a t-statistic):
classes differ in size and so in noise, and the raw difference of means lets
a large noisy class win by chance.
"""

import dataclasses

import numpy as np

from .checks import check_int
from .curation import sequential_comparison
from .estimators import estimate_influence


def z_scores(influence, stderr):
    """``influence / stderr``, the standard error floored at 1% of its median.

    The floor keeps an effect that no model varies on (standard error 0, as
    when the class alone decides the answer) finite and on top, instead of
    dividing by zero.
    """
    influence = np.asarray(influence, dtype=np.float64)
    stderr = np.asarray(stderr, dtype=np.float64)
    positive = stderr[stderr > 0]
    floor = 0.01 * float(np.median(positive)) if len(positive) else 1.0
    return influence / np.maximum(stderr, floor)


@dataclasses.dataclass
class Grouping:
    """Subpopulations of one target class.

    Attributes:
        labels: ``(n,)`` group index of each sample
        names: per group, the pretraining class that characterises it: the
            top class (``k=None``), or the first of ``characteristic``
        characteristic: per group, the classes that help it most relative to
            the rest of the target class, strongest first (see
            :func:`distinguishing_classes`)
        strength: ``(n,)`` how firmly each sample belongs: its top class's
            z-score (``k=None``), or its silhouette in ``[-1, 1]`` (``k``)
    """

    labels: np.ndarray
    names: list
    characteristic: list
    strength: np.ndarray


def group_by_influence(z, class_names, k=None, seed=0, influence=None, num_characteristic=3):
    """Groups samples by the pretraining classes that help them most.

    Args:
        z: ``(n, C)`` influence z-scores of the ``n`` samples of one target class
        class_names: the ``C`` pretraining class names
        k: ``None``: a sample's group is its class of highest z-score; an
            integer: k-means on the z-score vectors (``2 <= k <= n``)
        seed: of k-means
        influence: ``(n, C)`` raw influence, to name the groups by effect size
            (default: ``z``). Measured on the demo: z-scores separate the
            groups better (k-means), raw influence names them better (a class
            with a large but variable effect has a modest z-score)
        num_characteristic: classes listed per group in ``characteristic``

    Returns:
        a :class:`Grouping`
    """
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    if z.ndim != 2 or z.shape[1] != len(class_names):
        raise ValueError(f"z must be (n, {len(class_names)}); got {z.shape}")
    if n == 0:
        raise ValueError("no samples to group")
    effect = z if influence is None else np.asarray(influence, dtype=np.float64)
    if effect.shape != z.shape:
        raise ValueError(f"influence must have the shape of z {z.shape}; got {effect.shape}")
    if k is None:
        top = z.argmax(axis=1)
        classes, labels = np.unique(top, return_inverse=True)
        names = [class_names[c] for c in classes]
        strength = z[np.arange(n), top]
    else:
        check_int(k, "k", 2)
        if k > n:
            raise ValueError(f"k={k} groups but the class has only {n} sample(s)")
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_samples

        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
        labels = np.searchsorted(np.unique(labels), labels)  # drop empty clusters
        if labels.max() < 1 or n <= k:
            strength = np.zeros(n)
        else:
            strength = silhouette_samples(z, labels)
        names = None
    characteristic = [
        [class_names[c] for c in order[:num_characteristic]]
        for order in distinguishing_classes(effect, labels)
    ]
    if names is None:
        names = _unique_names([c[0] for c in characteristic])
    return Grouping(labels, names, characteristic, strength)


def distinguishing_classes(effect, labels):
    """Per group, the classes ordered by how much more they help it than the other groups.

    A class that helps the whole target class (high everywhere) does not
    name a subpopulation; the one that helps this group more than the rest does.
    """
    groups = np.unique(labels)
    if len(groups) == 1:
        return [np.argsort(-effect.mean(axis=0), kind="stable")]
    return [
        np.argsort(
            -(effect[labels == g].mean(axis=0) - effect[labels != g].mean(axis=0)), kind="stable"
        )
        for g in groups
    ]


def _unique_names(names):
    """Suffixes repeats: two groups characterised by one class stay apart."""
    seen = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def culprit_verdicts(accuracy, decision, num_seeds, rule, outcome) -> dict:
    """The culprit's removal against the full model and against a random class's
    removal, paired by seed, decided sequentially on the blamed failures.

    Args:
        accuracy, decision: ``(3S,)`` per planned row, the mean over the blamed
            failures of correctness and of the decision outcome
    """
    acc = np.asarray(accuracy, np.float64).reshape(num_seeds, 3)
    dec = np.asarray(decision, np.float64).reshape(num_seeds, 3)

    def versus(j, i):
        return sequential_comparison(
            (acc[:, j], acc[:, i]), (dec[:, j], dec[:, i]), rule, None, outcome
        )

    return {"culprit_vs_full": versus(1, 0), "culprit_vs_random": versus(1, 2)}


def wrong_answers(predictions, labels):
    """Per target: the label the models give most often, and whether it is wrong.

    Args:
        predictions: ``(M, T)`` predicted target class of each model
        labels: ``(T,)`` true target class

    Returns:
        ``(modal prediction (T,), fraction of models that predict it (T,))``
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    num_classes = int(max(predictions.max(), np.max(labels))) + 1
    counts = np.stack([(predictions == c).sum(axis=0) for c in range(num_classes)])
    modal = counts.argmax(axis=0)
    return modal, counts.max(axis=0) / len(predictions)


def failure_influence(masks, predictions, wrong_labels):
    """Influence of each class on "the model predicts ``wrong_labels[t]``" for each target.

    Positive: models that saw the class give that wrong answer more often.

    Args:
        masks: ``(M, C)`` bool
        predictions: ``(M, F)`` predicted target class, for the ``F`` failures
        wrong_labels: ``(F,)`` the wrong answer of each failure

    Returns:
        ``(influence (C, F), z-scores (C, F))``
    """
    outputs = (np.asarray(predictions) == np.asarray(wrong_labels)[None, :]).astype(np.float64)
    est = estimate_influence(masks, outputs)  # the run's estimator and design-valid errors
    return est.influence, z_scores(est.influence, est.stderr)


def culprit_summary(z, class_names, top_k=3):
    """The classes behind the most failures.

    Returns rows ``{"class", "top1", "in_top_k", "mean_z"}``, sorted by how
    many failures have the class as their strongest culprit, then by how many
    have it among their ``top_k``.
    """
    z = np.asarray(z, dtype=np.float64)  # (C, F)
    k = min(top_k, z.shape[0])
    order = np.argsort(-z, axis=0, kind="stable")[:k]  # (k, F)
    top1 = np.bincount(order[0], minlength=z.shape[0])
    in_top = np.bincount(order.ravel(), minlength=z.shape[0])
    rows = [
        {
            "class": class_names[c],
            "top1": int(top1[c]),
            "in_top_k": int(in_top[c]),
            "mean_z": float(z[c].mean()),
        }
        for c in range(z.shape[0])
    ]
    rows.sort(key=lambda r: (-r["top1"], -r["in_top_k"], -r["mean_z"]))
    return rows


def plan_culprit_check(num_classes, culprit, num_seeds, seed=0):
    """Retraining rows for the counterfactual of one culprit class.

    Per seed ``s``: every class; every class but the culprit; every class but
    one other class drawn at random (a new draw per seed). Seed ``s`` is
    shared by the three arms, so they compare in pairs.

    Returns:
        ``(masks (3S, C), seeds (3S,), random classes (S,))``; rows ``3s``,
        ``3s + 1``, ``3s + 2`` are seed ``s``'s full, culprit-removed and
        random-removed models
    """
    check_int(num_seeds, "num_seeds", 1)
    if num_classes < 3:
        raise ValueError(
            "need at least 3 pretraining classes (one removed, others to draw a random one from)"
        )
    others = np.array([c for c in range(num_classes) if c != culprit])
    # a stream per seed: the rows of seed s do not depend on num_seeds
    randoms = np.array(
        [
            others[np.random.default_rng([seed, culprit, s]).integers(len(others))]
            for s in range(num_seeds)
        ]
    )
    masks, seeds = [], []
    for s in range(num_seeds):
        for removed in (None, culprit, randoms[s]):
            mask = np.ones(num_classes, dtype=bool)
            if removed is not None:
                mask[removed] = False
            masks.append(mask)
            seeds.append(s)
    return np.array(masks), np.array(seeds, dtype=np.int64), randoms


def flip_counts(correct, num_seeds):
    """Failures fixed and broken by each removal, paired with the full model of the same seed.

    Args:
        correct: ``(3S, F)`` 0/1 correctness of the planned rows on the failures

    Returns:
        per arm (``"full"``, ``"culprit_removed"``, ``"random_removed"``):
        ``correct`` (mean number of the failures a model gets right) and,
        for the removals, ``fixed`` / ``broken`` (mean per seed, against the
        full model of the same seed)
    """
    c = np.asarray(correct, dtype=bool).reshape(num_seeds, 3, -1)
    full = c[:, 0]
    out = {"full": {"correct": float(full.sum(axis=1).mean())}}
    for arm, j in (("culprit_removed", 1), ("random_removed", 2)):
        arm_c = c[:, j]
        out[arm] = {
            "correct": float(arm_c.sum(axis=1).mean()),
            "fixed": float((arm_c & ~full).sum(axis=1).mean()),
            "broken": float((~arm_c & full).sum(axis=1).mean()),
            "per_seed_fixed": (arm_c & ~full).sum(axis=1).tolist(),
        }
    return out
