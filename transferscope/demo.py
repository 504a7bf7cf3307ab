"""The demo: real handwritten digits as the target task, rendered glyphs as
the pretraining set, class influence computed through the SDK.

``transferscope demo`` (or ``python -m transferscope demo``) builds the
datasets once (idempotent), computes influence and prints what it found
against the planted truth.
"""

import json
import logging
import os
import shutil
import time

import fiftyone as fo
import numpy as np
from PIL import Image

from . import compute as tsc
from . import demo_data
from . import embeddings as tse
from .compute import subpopulations as sp
from .curation import evaluate_curation, tag_classes, tag_samples
from .diversity import plan_class_diversity
from .influence import compute_class_influence
from .influence_run import InfluenceRun, prepare_executor
from .leakage import detect_leakage, find_near_duplicates
from .plots import save_culprits_png, save_curation_png, save_diversity_png, save_subpopulations_png
from .sample_influence import compute_sample_influence
from .subpopulations import explain_failures, find_subpopulations

logger = logging.getLogger(__name__)

TARGET_NAME = "transferscope-demo-digits"
PRETRAIN_NAME = "transferscope-demo-glyphs"
RUN_KEY = "demo_influence"
LEAKAGE_KEY = "demo_leakage"
DUPLICATES_KEY = "demo_duplicates"
DIVERSITY_KEY = "demo_diversity"
SUBPOPS_KEY = "demo_subpops"
FAILURES_KEY = "demo_failures"
SAMPLES_KEY = "demo_samples"
# example-level curation: the most harmful images tagged, and the seed budget per arm
SAMPLE_CURATION = dict(k=100, max_seeds=16)
# explain_failures' counterfactual: the seed budget per arm (full, culprit removed, random)
FAILURE_SEEDS = 16
# the diversity planner: small budgets, the full budget it predicts, and its check
# (num_seeds per sweep point; the plan's check against all classes in rounds, at
# most max_seeds)
DIVERSITY = dict(budgets=[165, 330], full_budget=660, num_points=5, num_seeds=8, max_seeds=16)
# bump when the generated data changes, so old demo datasets are rebuilt
DEMO_VERSION = 7  # 7: the second (transformed) planted leak

# one folded block of the orthogonal design for the demo's 68 classes; measured
# (benchmarks/subset_designs.py): at 144 models the default's intervals are as
# narrow as the paper's design gives with 280, and bold stands out at q ~ 1e-15
DEFAULTS = dict(num_models=144, epochs=4, alpha=0.5, seed=0)
# the curation counterfactual: the seed budget per arm (seeds come in rounds of 4
# until the verdicts settle), and the sweep of classes removed (over 8 seeds)
CURATION = dict(max_seeds=64, sweep_ks=[4, 8, 16])


def data_dir():
    return os.environ.get(
        "TRANSFERSCOPE_DATA_DIR",
        os.path.join(os.path.expanduser("~"), "transferscope", "demo_data"),
    )


def load_or_build_demo(
    root=None,
    target_name=TARGET_NAME,
    pretrain_name=PRETRAIN_NAME,
    per_class=80,
    seed=0,
    rebuild=False,
):
    """The demo datasets ``(pretrain, target)``, built only when missing or stale."""
    root = os.path.abspath(root or data_dir())
    spec = {"version": DEMO_VERSION, "per_class": per_class, "seed": seed, "root": root}
    if not rebuild and _is_current(target_name, pretrain_name, spec):
        return fo.load_dataset(pretrain_name), fo.load_dataset(target_name)

    for name in (target_name, pretrain_name):
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    arrays = demo_data.make_demo_arrays(per_class=per_class, seed=seed)
    target_dir = os.path.join(root, "digits")
    pretrain_dir = os.path.join(root, "glyphs")
    for d in (target_dir, pretrain_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    target = fo.Dataset(target_name, persistent=True)
    samples = []
    for split, images, labels, index in (
        ("train", arrays.train_images, arrays.train_labels, arrays.train_digits_index),
        ("test", arrays.test_images, arrays.test_labels, arrays.test_digits_index),
    ):
        for img, label, idx in zip(images, labels, index):
            path = os.path.join(target_dir, f"{split}_{idx:04d}.png")
            Image.fromarray(img).save(path)
            samples.append(
                fo.Sample(
                    filepath=path,
                    tags=[split],
                    ground_truth=fo.Classification(label=str(label)),
                    digits_index=int(idx),
                )
            )
    target_ids = target.add_samples(samples, progress=False)
    test_ids = target_ids[len(arrays.train_labels) :]

    pretrain = fo.Dataset(pretrain_name, persistent=True)
    planted_truth = arrays.planted
    variants = planted_truth.leak_variants + planted_truth.transformed_leak_variants
    copies = {v["pretrain_index"]: v for v in variants}
    samples = []
    for i, (img, label) in enumerate(zip(arrays.pretrain_images, arrays.pretrain_labels)):
        name = arrays.class_names[label]
        path = os.path.join(pretrain_dir, f"{i:05d}.png")
        Image.fromarray(img).save(path)
        sample = fo.Sample(filepath=path, ground_truth=fo.Classification(label=name))
        if i in copies:  # planted truth: the target test sample it copies
            sample["leak_of"] = test_ids[copies[i]["test_index"]]
            sample["leak_kind"] = copies[i]["kind"]
        samples.append(sample)
    pretrain.add_samples(samples, progress=False)

    planted = arrays.planted.to_dict()
    planted["leaked_test_ids"] = [test_ids[t] for t in planted["leaked_test_indices"]]
    # the second leak, by kind of copy: {test id: kind}
    planted["transformed_leak_kind_by_id"] = {
        test_ids[v["test_index"]]: v["kind"] for v in planted["transformed_leak_variants"]
    }
    planted["subpop_styles_by_id"] = {
        test_ids[int(t)]: style for t, style in planted["subpop_test_styles"].items()
    }
    target.info = {"transferscope_demo": spec, "planted": planted}
    target.save()
    pretrain.info = {"transferscope_demo": spec, "planted": planted}
    pretrain.save()
    return pretrain, target


def _is_current(target_name, pretrain_name, spec):
    if not (fo.dataset_exists(target_name) and fo.dataset_exists(pretrain_name)):
        return False
    for name in (target_name, pretrain_name):
        ds = fo.load_dataset(name)
        if ds.info.get("transferscope_demo") != spec or len(ds) == 0:
            return False
        if not os.path.exists(ds.first().filepath):
            return False
    return True


def subpopulation_report(results, target, planted):
    """Adjusted Rand index of the found subpopulations of the planted digit vs its
    styles: of the k=2 groups written by the demo, and of top-class grouping."""
    from collections import Counter

    from sklearn.metrics import adjusted_rand_score

    truth = planted["subpop_styles_by_id"]
    ids = sorted(truth)
    styles = [truth[i] for i in ids]
    found = dict(zip(*target.select(ids).values(["id", f"{SUBPOPS_KEY}.label"])))
    k2 = [found[i] for i in ids]
    cols = [list(results.target_ids).index(i) for i in ids]
    z = sp.z_scores(results.influence, results.stderr)[:, cols].T
    top = sp.group_by_influence(z, list(results.classes))
    top_names = [top.names[g] for g in top.labels]
    return {
        "digit": planted["subpop_digit"],
        "samples": len(ids),
        "adjusted_rand_index": float(adjusted_rand_score(styles, k2)),
        "planted_style_to_found_group": {
            f"{a} -> {b}": n for (a, b), n in sorted(Counter(zip(styles, k2)).items())
        },
        "top_class_grouping": {
            "adjusted_rand_index": float(adjusted_rand_score(styles, top_names)),
            "groups": len(top.names),
            "top_class_by_style": {
                s: Counter(n for n, t in zip(top_names, styles) if t == s).most_common(3)
                for s in sorted(set(styles))
            },
        },
    }


def planted_report(results, target, curation=None, leakage=None, duplicates=None, pretrain=None):
    """What the run (curation, leakage search) found, against the planted truth."""
    planted = target.info["planted"]
    classes = list(results.classes)
    infl = results.class_influence
    order = list(np.argsort(infl, kind="stable"))  # most harmful first
    harm = classes.index(planted["harmful_class"])
    leak = classes.index(planted["leak_class"])

    test_ids = list(results.target_ids)
    pos = {t: i for i, t in enumerate(test_ids)}
    copied = np.array([pos[t] for t in planted["leaked_test_ids"]])
    labels = np.array(target.select(test_ids, ordered=True).values("ground_truth.label"))
    same_digit = np.setdiff1d(np.flatnonzero(labels == planted["leak_class"]), copied)
    matrix = results.influence

    # leak concentration: Infl[leak -> copies] - Infl[leak -> other tests of
    # that digit], with a Welch interval over the models' own differences,
    # on each target function the store holds
    store = tsc.ResultsStore.load(results.config.output_dir)
    concentration = {}
    for fn in tsc.TARGET_FUNCTIONS:
        y = store.outputs(fn)
        per_model_gap = y[:, copied].mean(axis=1) - y[:, same_digit].mean(axis=1)
        gap = tsc.aggregate_influence(store.masks, per_model_gap[:, None])
        concentration[fn] = {
            "gap": float(gap.influence[leak]),
            "ci95": [float(gap.ci_low[leak]), float(gap.ci_high[leak])],
        }
    helpful_rank = np.argsort(np.argsort(-matrix, axis=0, kind="stable"), axis=0)[leak] + 1

    top3 = np.argsort(-matrix, axis=0, kind="stable")[:3].T  # (T, 3)
    own_glyph = {}
    for d in sorted(set(labels), key=int):
        rows = np.flatnonzero(labels == d)
        own_glyph[d] = float(np.isin(top3[rows], classes.index(d)).any(axis=1).mean())

    report = {
        "harmful_class": planted["harmful_class"],
        "harmful_rank_from_most_negative": int(order.index(harm)) + 1,
        "harmful_influence": float(infl[harm]),
        "harmful_ci95": [float(results.class_ci_low[harm]), float(results.class_ci_high[harm])],
        "harmful_q_value": float(results.q_values[harm]),
        "harmful_at_fdr_0.1": [
            classes[i] for i in order if infl[i] < 0 and results.q_values[i] < 0.1
        ],
        "leak_class": planted["leak_class"],
        "leak_num_copied_tests": int(len(copied)),
        "leak_influence_on_copied_tests": float(matrix[leak, copied].mean()),
        "leak_influence_on_other_tests_same_digit": float(matrix[leak, same_digit].mean()),
        "leak_concentration_by_target_function": concentration,
        "leak_class_mean_helpful_rank_on_copied": float(helpful_rank[copied].mean()),
        "leak_class_mean_helpful_rank_on_other_same_digit": float(helpful_rank[same_digit].mean()),
        "leak_class_top1_helpful_fraction_on_copied": float((helpful_rank[copied] == 1).mean()),
        "leak_class_top1_helpful_fraction_on_other_same_digit": float(
            (helpful_rank[same_digit] == 1).mean()
        ),
        "own_glyph_in_top3_fraction_by_digit": own_glyph,
        "own_glyph_in_top3_fraction": float(np.mean(list(own_glyph.values()))),
        "split_half_spearman": results.metrics["split_half_spearman"],
        "split_half_z_sd": results.metrics["split_half_z_sd"],
        "lds": results.metrics.get("lds"),
        "lds_mean_output": results.metrics.get("lds_mean_output"),
        "design": results.metrics["design"],
        "estimator": results.metrics["estimator"],
        "mean_test_accuracy_of_subset_models": results.metrics["mean_test_accuracy"],
        "num_models": results.metrics["num_models"],
    }
    if curation is not None:
        report["curation"] = _curation_report(curation, planted)
    if leakage is not None:
        report["leakage"] = _leakage_report(leakage, planted)
    if duplicates is not None and pretrain is not None:
        report["near_duplicates"] = _duplicates_report(duplicates, pretrain)
    return report


def _curation_report(curation, planted):
    cells = {(c["arm"], c["k"]): c for c in curation["cells"]}
    k = curation["num_removed"]
    return {
        "rule": curation["rule"],
        "removed": curation["removed"],
        "harmful_class_removed": planted["harmful_class"] in curation["removed"],
        "num_seeds": curation["num_seeds"],
        **{
            f"accuracy_{arm}": cells[(arm, kk)]["accuracy"]
            for arm, kk in (("full", 0), ("curated", k), ("random", k), ("helpful_first", k))
        },
        **_paired_figures(
            curation, ("curated_vs_full", "curated_vs_random", "most_helpful_removed_vs_full")
        ),
        "helpful_first_vs_full_by_k": {
            row["k"]: {"diff": row["diff"], "ci95": row["ci95"]}
            for row in curation["vs_full"]
            if row["arm"] == "helpful_first"
        },
        "harmful_first_vs_full_by_k": {
            row["k"]: {"diff": row["diff"], "ci95": row["ci95"]}
            for row in curation["vs_full"]
            if row["arm"] == "harmful_first"
        },
        "each_removed_vs_full": {
            row["class"]: {key: row[key] for key in PAIRED_KEYS}
            for row in curation.get("each_removed_vs_full", [])
        },
        "confirmed_by_retraining": curation.get("confirmed", []),
    }


# what the report keeps of a paired check: the accuracy change, its interval, the
# verdict and the decision outcome's figures
PAIRED_KEYS = ("diff", "ci95", "wins", "num_pairs", "verdict", "decision")


def _paired_figures(summary, names):
    """The paired comparisons ``names`` of a curation summary, as the report keeps them."""
    return {name: {key: summary[name][key] for key in PAIRED_KEYS} for name in names}


def _leakage_report(leakage, planted):
    report = leak_recall_report(leakage["leak_ids"], planted)
    report.update(
        exact_file_copies=leakage["num_exact_file_copies"],
        pixel_copies=leakage["num_pixel_copies"],
        transformed_copies=leakage.get("num_transformed_copies"),
        index=leakage["index"],
        seconds=leakage["seconds"],
    )
    return report


def leak_recall_report(flagged_ids, planted):
    """Recall (overall, of the first leak, and of the second by kind of copy)
    and precision of flagged target ids against both planted leaks."""
    first = set(planted["leaked_test_ids"])
    kind_of = planted.get("transformed_leak_kind_by_id", {})
    truth = first | set(kind_of)
    found = set(flagged_ids)
    hits = len(truth & found)
    by_kind = {}
    for test_id, kind in kind_of.items():
        by_kind.setdefault(kind, []).append(test_id in found)
    return {
        "planted_leaked_tests": len(truth),
        "flagged": len(found),
        "true_positives": hits,
        "recall": hits / len(truth),
        "precision": hits / len(found) if found else None,
        "recall_first_leak": len(first & found) / len(first),
        "recall_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
    }


def _duplicates_report(duplicates, pretrain):
    group_f = f"{DUPLICATES_KEY}_group"
    # the first leak's copies (ten per scan); the second leak's have no sibling to group with
    copies = pretrain.match(
        fo.ViewField("leak_of").is_in(pretrain.info["planted"]["leaked_test_ids"])
    )
    grouped = copies.exists(group_f)
    of, groups = grouped.values(["leak_of", group_f]) if len(grouped) else ([], [])
    by_group = {}
    for test_id, g in zip(of, groups):
        by_group.setdefault(g, set()).add(test_id)
    return {
        "groups": duplicates["num_groups"],
        "grouped_samples": duplicates["num_grouped_samples"],
        "planted_copies_grouped": len(grouped),
        "planted_copies": len(copies),
        # a group holding copies of one test image only, and every copy of it
        "copy_groups_pure": sum(len(v) == 1 for v in by_group.values()),
        "copy_groups": len(by_group),
    }


def run_demo(
    num_models=DEFAULTS["num_models"],
    epochs=DEFAULTS["epochs"],
    alpha=DEFAULTS["alpha"],
    seed=DEFAULTS["seed"],
    overwrite=True,
    curation_seeds=CURATION["max_seeds"],
    sweep_ks=CURATION["sweep_ks"],
    out=print,
    executor="local",
    executor_options=None,
):
    """Builds the demo (if needed), computes influence, curates, prints the findings.

    ``curation_seeds`` is the curation check's seed budget per arm; with 0
    the curation step is skipped. ``executor`` and
    ``executor_options`` (as in :func:`compute_class_influence`) say where
    every model trains; the figures are the same on either.
    """
    where = dict(executor=executor, executor_options=executor_options)
    # an unreachable cluster is refused before the demo data is built
    prepare_executor(executor, executor_options, tsc.InfluenceConfig(num_models=num_models))
    pretrain, target = load_or_build_demo()
    out(
        f"Target:      {target.name}: {len(target)} digit scans "
        f"({len(target.match_tags('train'))} train, {len(target.match_tags('test'))} test)"
    )
    out(
        f"Pretraining: {pretrain.name}: {len(pretrain)} glyph images, "
        f"{len(pretrain.distinct('ground_truth.label'))} classes"
    )
    results = compute_class_influence(
        pretrain,
        target,
        RUN_KEY,
        num_models=num_models,
        epochs=epochs,
        alpha=alpha,
        seed=seed,
        overwrite=overwrite,
        **where,
    )
    _print_influence(results, out)
    subpop_report = _demo_subpopulations(results, target, out)
    failures = _demo_failures(target, where, out)
    summary = _demo_curation(pretrain, target, curation_seeds, sweep_ks, where, out)
    # every step that trains runs before FAISS: after a FAISS call torch trains on one
    # thread in this process (they share OpenMP's setting; see the README's limits)
    diversity = _demo_diversity(pretrain, target, where, out)
    samples = _demo_sample_influence(pretrain, target, out)
    leakage, duplicates = _demo_leaks(pretrain, target, out)
    report = planted_report(results, target, summary, leakage, duplicates, pretrain)
    report["leakage_calibrated"] = _demo_calibrated_leaks(target, out)
    report["leakage_brain"] = _demo_brain_leaks(pretrain, target, out)
    report["subpopulations"] = subpop_report
    report["failures"] = _failures_report(failures, target.info["planted"]["harmful_class"])
    report["sample_influence"] = samples
    report["diversity"] = {
        "prediction": diversity["prediction"],
        "verification": diversity["verification"],
        "per_budget": diversity["per_budget"],
    }
    _write_report(report, pretrain, target, out)
    return results, report


def _print_influence(results, out):
    order = np.argsort(results.class_influence, kind="stable")
    m = results.metrics
    out(
        f"\n{m['num_models']} models, {m['design']} design, {m['estimator']} estimate"
        + (f" ({m['design_note']})" if m["design_note"] else "")
    )
    out(
        f"Reliability: split-half Spearman {m['split_half_spearman']:.2f}, split-half "
        f"z-score spread {m['split_half_z_sd']:.2f} (1 when the intervals are right), "
        f"LDS {m.get('lds', float('nan')):.3f} on {m.get('num_holdout_models', 0)} "
        f"held-out models"
    )
    out(
        "\nMost helpful pretraining classes (influence on correct-class probability, "
        "95% CI, q-value):"
    )
    for i in order[::-1][:8]:
        out(f"  {results.describe_class(i)}")
    out("Most harmful pretraining classes:")
    for i in order[:8]:
        out(f"  {results.describe_class(i)}")


def _demo_subpopulations(results, target, out):
    out("\nSubpopulations (k=2 per digit, by the pretraining classes that help each sample):")
    subpops = find_subpopulations(target, RUN_KEY, key=SUBPOPS_KEY, k=2, overwrite=True)
    out("\n".join(subpops.describe()))
    subpop_report = subpopulation_report(results, target, target.info["planted"])
    out(
        f"  planted styles of the {subpop_report['digit']}s recovered: adjusted Rand index "
        f"{subpop_report['adjusted_rand_index']:.3f}"
    )
    png = save_subpopulations_png(subpops, os.path.join(data_dir(), "subpopulations.png"))
    out(f"Plot: {png}; saved views '{SUBPOPS_KEY} <digit> / <class>'")
    return subpop_report


def _demo_failures(target, where, out):
    out(
        "\nExplaining the failures (retraining without the top culprit, in rounds until "
        f"its verdict settles, at most {FAILURE_SEEDS} seeds) ..."
    )
    failures = explain_failures(
        target, RUN_KEY, key=FAILURES_KEY, max_seeds=FAILURE_SEEDS, overwrite=True, **where
    )
    out("\n".join(failures.describe()))
    png = save_culprits_png(failures, os.path.join(data_dir(), "culprits.png"))
    out(f"Plot: {png}; saved view {FAILURES_KEY}_failures")
    return failures


def _demo_curation(pretrain, target, curation_seeds, sweep_ks, where, out):
    if not curation_seeds:
        return None
    record = tag_classes(pretrain, RUN_KEY)  # harmful at false-discovery level 0.1
    out(
        f"\nTagged {len(record['classes'])} class(es) harmful at false-discovery level "
        f"{record['fdr_level']} ({', '.join(record['classes'])}): {record['num_samples']} "
        f"pretraining samples tagged {record['tag']!r}; saved view {record['view_name']!r}"
    )
    out(
        "Retraining to check the curation (full / curated / random / helpful removed / "
        f"each tagged class alone; seeds in rounds until the verdicts settle, at most "
        f"{curation_seeds}; sweep k={sweep_ks}) ..."
    )
    summary = evaluate_curation(
        target, RUN_KEY, max_seeds=curation_seeds, sweep_ks=sweep_ks, **where
    )
    out("\n".join(summary.describe()))
    png = save_curation_png(summary, os.path.join(data_dir(), "curation.png"))
    out(f"Plot: {png}")
    return summary


def _demo_diversity(pretrain, target, where, out):
    out(
        f"\nPlanning the number of classes (budgets {DIVERSITY['budgets']} -> "
        f"{DIVERSITY['full_budget']}, {DIVERSITY['num_seeds']} seeds per point) ..."
    )
    diversity = plan_class_diversity(
        target, RUN_KEY, key=DIVERSITY_KEY, overwrite=True, **DIVERSITY, **where
    )
    out("\n".join(diversity.describe()))
    png = save_diversity_png(diversity, os.path.join(data_dir(), "diversity.png"))
    out(f"Plot: {png}; saved view {DIVERSITY_KEY}_plan on {pretrain.name}")
    return diversity


def _demo_sample_influence(pretrain, target, out):
    """Example-level attribution with the defaults, against the planted copies and
    the planted harmful class, and its curation checked by retraining."""
    out("\nWhich pretraining images help or hurt (sample influence, TRAK) ...")
    t0 = time.perf_counter()
    results = compute_sample_influence(
        pretrain, target, SAMPLES_KEY, influence_key=RUN_KEY, overwrite=True
    )
    seconds = time.perf_counter() - t0
    report = dict(
        sample_influence_report(results, pretrain, target.info["planted"]),
        seconds=seconds,
        **{k: results.metrics.get(k) for k in ("lds", "class_spearman", "num_models")},
    )
    out(
        f"  {report['num_models']} models, {seconds:.0f} s; datamodeling score "
        f"{report['lds']:.3f} on held-out models; summed image scores per class vs class "
        f"influence: Spearman {report['class_spearman']:.2f}"
    )
    first = report["first_leak"]
    out(
        f"  a leaked test 7's copies among its 10 most helpful images: recall "
        f"{first['recall_at_10']:.2f} (10 random images of class {first['copies_class']!r}: "
        f"{first['recall_at_10_random_same_class']:.3f}); the transformed copies in their "
        f"test image's top 10: {report['second_leak']['recall_at_10']:.2f}"
    )
    harmful = report["harmful_class_images"]
    out(
        f"  images of the harmful class {harmful['class']!r} among the "
        f"{harmful['k']} most harmful images: {harmful['precision_at_k']:.2f} "
        f"(its share of the set: {harmful['base_rate']:.3f})"
    )
    record = tag_samples(pretrain, SAMPLES_KEY, k=SAMPLE_CURATION["k"])
    out(
        f"  tagged the {record['num_samples']} most harmful images {record['tag']!r}; "
        f"retraining to check (at most {SAMPLE_CURATION['max_seeds']} seeds per arm) ..."
    )
    summary = evaluate_curation(target, SAMPLES_KEY, max_seeds=SAMPLE_CURATION["max_seeds"])
    out("\n".join("  " + line for line in summary.describe()))
    report["curation"] = {
        "num_removed": summary["num_removed"],
        "num_seeds": summary["num_seeds"],
        "harmful_class_images_removed": harmful["in_top_k"],
        **{c["arm"]: c["accuracy"] for c in summary["cells"]},
        **_paired_figures(summary, ("curated_vs_full", "curated_vs_random")),
    }
    return report


def sample_influence_report(results, pretrain, planted, k=10, harmful_k=SAMPLE_CURATION["k"]):
    """A sample-influence run against the planted truth: recall@k of each
    leaked test image's copies among its k most helpful pretraining images
    (with what k random images of the copies' class would give), and how many
    of the most harmful images belong to the planted harmful class."""
    ids, of, labels = pretrain.values(["id", "leak_of", "ground_truth.label"])
    row = {sid: i for i, sid in enumerate(results.pretrain_ids)}
    column = {tid: t for t, tid in enumerate(results.target_ids)}
    label_of = dict(zip(ids, labels))
    copies = {}
    for sid, target_id in zip(ids, of):
        if target_id is not None and sid in row:
            copies.setdefault(target_id, []).append(row[sid])
    scores = results.scores()

    def recall(test_ids):
        found = []
        for test_id in test_ids:
            rows = copies[test_id]
            top = np.argsort(-np.asarray(scores[:, column[test_id]]), kind="stable")[:k]
            found.append(len(set(top) & set(rows)) / min(k, len(rows)))
        return float(np.mean(found))

    first = list(planted["leaked_test_ids"])
    copies_class = planted["leak_class"]
    class_size = sum(1 for sid in results.pretrain_ids if label_of[sid] == copies_class)
    per_leak = float(np.mean([len(copies[t]) for t in first]))
    second = list(planted.get("transformed_leak_kind_by_id", {}))
    pretrain_ids = list(results.pretrain_ids)
    score_of = dict(zip(*pretrain.select(pretrain_ids).values(["id", f"{results.key}_score"])))
    most_harmful = sorted(pretrain_ids, key=lambda sid: score_of[sid])[:harmful_k]
    harmful_class = planted["harmful_class"]
    in_top = sum(label_of[sid] == harmful_class for sid in most_harmful)
    num_harmful = sum(label_of[sid] == harmful_class for sid in pretrain_ids)
    return {
        "first_leak": {
            "leaked_test_images": len(first),
            "copies_class": copies_class,
            "recall_at_10": recall(first),
            # k random images of the copies' class hold this share of a test image's copies
            "recall_at_10_random_same_class": min(k, class_size)
            / class_size
            * per_leak
            / min(k, per_leak),
        },
        "second_leak": {"leaked_test_images": len(second), "recall_at_10": recall(second)},
        "harmful_class_images": {
            "class": harmful_class,
            "k": harmful_k,
            "in_top_k": int(in_top),
            "precision_at_k": in_top / harmful_k,
            "recall_at_k": in_top / num_harmful,
            "base_rate": num_harmful / len(pretrain_ids),
        },
    }


def _demo_leaks(pretrain, target, out):
    out("\nLooking for leaks (FAISS on the run's backbone embeddings, file hashes, influence) ...")
    leakage = detect_leakage(target, key=LEAKAGE_KEY, influence_key=RUN_KEY, overwrite=True)
    out(
        f"  {leakage['num_leaks']} of {leakage['num_targets']} test samples tagged 'leak' "
        f"({leakage['num_exact_file_copies']} byte-identical, {leakage['num_pixel_copies']} "
        f"pixel-identical, {leakage['num_transformed_copies']} matched after a transformation); "
        f"saved view {LEAKAGE_KEY}_likely_leaks"
    )
    found = leak_recall_report(leakage["leak_ids"], target.info["planted"])
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in found["recall_by_kind"].items())
    out(
        f"  against the planted leaks: recall {found['recall']:.2f} (first leak "
        f"{found['recall_first_leak']:.2f}; transformed copies by kind: {kinds}), "
        f"precision {found['precision'] or 0:.2f}"
    )
    duplicates = find_near_duplicates(
        pretrain, key=DUPLICATES_KEY, influence_key=RUN_KEY, overwrite=True
    )
    out(
        f"  {duplicates['num_groups']} near-duplicate groups ({duplicates['num_grouped_samples']}"
        f" pretraining samples) tagged 'near_duplicate'; saved view {DUPLICATES_KEY}_groups"
    )
    return leakage, duplicates


def _demo_calibrated_leaks(target, out):
    """The same search with its cuts calibrated on the train split for a 2%
    false-positive rate (1% each for the embeddings and the pixel matches: the
    least that 100 reference scans support)."""
    leakage = detect_leakage(
        target,
        key=f"{LEAKAGE_KEY}_calibrated",
        influence_key=RUN_KEY,
        false_positive_rate=0.02,
        tag="leak_calibrated",
        overwrite=True,
    )
    cal = leakage["calibration"]
    report = dict(_leakage_report(leakage, target.info["planted"]), calibration=cal)
    out(
        f"  calibrated for a 2% false-positive rate on the {cal['reference_size']} train "
        f"scans: embedding cut {cal['cut_distance']:.4g}, match correlation "
        f"{cal['match_threshold']:.4g}; {leakage['num_leaks']} tagged (expected false "
        f"positives {cal['expected_false_positives']:.1f}), recall {report['recall']:.2f}, "
        f"precision {report['precision'] or 0:.2f}"
    )
    return report


def _demo_brain_leaks(pretrain, target, out):
    """FiftyOne Brain's ``compute_leaky_splits`` at its defaults on the same data and
    the same (run backbone) embeddings, for comparison."""
    import fiftyone.brain as fob  # only this step uses the Brain

    pre, tgt = tse.from_run(InfluenceRun.load(target, RUN_KEY))
    path_of = dict(zip(*pretrain.values(["id", "filepath"])))
    path_of.update(zip(*target.values(["id", "filepath"])))
    both = fo.Dataset()  # both sides as splits of one dataset, as the Brain expects
    try:
        rows = [(str(i), "pretrain") for i in pre.ids] + [(str(i), "test") for i in tgt.ids]
        new_ids = both.add_samples(
            [fo.Sample(filepath=path_of[i], tags=[split], source_id=i) for i, split in rows],
            progress=False,
        )
        both.set_values("emb", list(np.concatenate([pre.vectors, tgt.vectors])))
        t0 = time.perf_counter()
        index = fob.compute_leaky_splits(
            both, splits=["pretrain", "test"], embeddings="emb", progress=False
        )
        seconds = time.perf_counter() - t0
        source_of = dict(zip(new_ids, (i for i, _ in rows)))
        flagged = {source_of[i] for i in index.leak_ids if i in source_of}
        flagged &= {str(i) for i in tgt.ids}
    finally:
        both.delete()
    report = dict(leak_recall_report(flagged, target.info["planted"]), seconds=seconds)
    out(
        f"  FiftyOne Brain compute_leaky_splits (threshold 0.2, same embeddings): "
        f"{report['flagged']} flagged, recall {report['recall']:.2f}, precision "
        f"{report['precision'] or 0:.2f}, {seconds:.1f} s"
    )
    return report


def _failures_report(failures, planted_harmful_class):
    check = failures.get("counterfactual", {})
    on_blamed = check.get("on_blamed", {})
    return {
        "num_failures": failures["num_failures"],
        "top_culprit": failures.get("top_culprit"),
        "top_culprit_is_planted_harmful_class": failures.get("top_culprit")
        == planted_harmful_class,
        "culprits": failures.get("culprits", [])[:5],
        "blamed_failures": check.get("blamed_failures"),
        "fixed_per_model_removing_culprit": on_blamed.get("culprit_removed", {}).get("fixed"),
        "fixed_per_model_removing_random_class": on_blamed.get("random_removed", {}).get("fixed"),
        "culprit_verdict": check.get("culprit_vs_full", {}).get("verdict"),
        "num_seeds": check.get("num_seeds"),
        "counterfactual": check,
    }


def _write_report(report, pretrain, target, out):
    out("\nAgainst the planted truth:")
    out(json.dumps(report, indent=2))
    report_path = os.path.join(data_dir(), "demo_report.json")
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    out(f"(also written to {report_path})")
    out(
        f"\nOpen the App to explore: fiftyone app launch {target.name}  "
        f"(fields {RUN_KEY}_helpful / _harmful / _accuracy; on {pretrain.name}: "
        f"{RUN_KEY}_influence, tag 'remove', saved view {RUN_KEY}_curated)"
    )
