"""Every verdict and headline figure of several demo runs, side by side.

Reads the ``demo_report.json`` each run of ``transferscope demo`` wrote (for
example a run with 2 threads, one with ``OMP_NUM_THREADS=1``, and the one in
the test suite's acceptance tier) and prints one row per verdict with one
column per run, so a reader sees whether they agree.

    .venv/bin/python benchmarks/demo_verdicts.py LABEL=PATH [LABEL=PATH ...]

Writes benchmarks/results/demo_verdicts.json (or ``--results``).
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _pts(x):
    return f"{100 * x:+.1f}"


def _check(row):
    """``verdict (diff [lo, hi], n seeds)`` of a paired check in a report."""
    if not row:
        return "-"
    lo, hi = row["ci95"]
    verdict = row.get("verdict") or "no verdict (fixed seeds)"
    return f"{verdict} ({_pts(row['diff'])} [{_pts(lo)}, {_pts(hi)}], {row['num_pairs']} seeds)"


def verdict_rows(report):
    """``{row label: cell}`` of one demo report."""
    cur = report.get("curation") or {}
    fails = report.get("failures") or {}
    check = fails.get("counterfactual") or {}
    samples = (report.get("sample_influence") or {}).get("curation") or {}
    div = report.get("diversity") or {}
    pred, ver = div.get("prediction") or {}, div.get("verification") or {}
    leak = report.get("leakage") or {}
    each = cur.get("each_removed_vs_full", {})
    helpful = cur.get("helpful_first_vs_full_by_k", {})
    h16 = helpful.get("16") or helpful.get(16)
    lo, hi = report["harmful_ci95"]
    return {
        "bold: rank, influence, q": f"{report['harmful_rank_from_most_negative']}, "
        f"{report['harmful_influence']:+.3f} [{lo:+.3f}, {hi:+.3f}], q = "
        f"{report['harmful_q_value']:.1e}",
        "harmful at FDR 0.1": ", ".join(report["harmful_at_fdr_0.1"]) or "none",
        "bold removed vs full": _check(each.get(report["harmful_class"])),
        "curated vs random removal": _check(cur.get("curated_vs_random")),
        "16 most helpful removed vs full (8 seeds)": (
            f"{_pts(h16['diff'])} [{_pts(h16['ci95'][0])}, {_pts(h16['ci95'][1])}]" if h16 else "-"
        ),
        "failures: top culprit, removing it vs full": f"{fails.get('top_culprit')}: "
        + _check(check.get("culprit_vs_full")),
        "100 most harmful images removed vs full": _check(samples.get("curated_vs_full")),
        "planner: plan, plan vs all classes": f"{pred.get('K_plan')} x {pred.get('n_plan')}: "
        + _check(ver.get("plan_vs_all_classes")),
        "leak search: recall / precision": f"{leak.get('recall', float('nan')):.2f} / "
        f"{leak.get('precision') or float('nan'):.2f}",
        "subpopulations of the 9s (ARI)": f"{report['subpopulations']['adjusted_rand_index']:.3f}"
        if report.get("subpopulations")
        else "-",
        "split-half z spread; LDS": f"{report['split_half_z_sd']:.2f}; {report['lds']:.2f}",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=PATH of a demo_report.json")
    parser.add_argument("--results", default=os.path.join(HERE, "results", "demo_verdicts.json"))
    args = parser.parse_args(argv)
    columns = {}
    for spec in args.runs:
        label, _, path = spec.partition("=")
        with open(path) as f:
            columns[label] = verdict_rows(json.load(f))
    labels = list(columns)
    rows = list(next(iter(columns.values())))
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(columns[c][row] for c in labels) + " |")
    print("\n".join(lines))
    with open(args.results, "w") as f:
        json.dump(columns, f, indent=1)
    print(f"written {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
