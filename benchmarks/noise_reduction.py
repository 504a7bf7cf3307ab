"""Does averaging the weights over the end of training cut the noise of a retraining check?

Trains, with the demo's protocol, pairs of models that differ only in one
class (every class, and every class but ``bold``), paired by model seed as
the product's checks are. From each training run two models are read out:

- ``final``: the weights at the last step (what the engine uses);
- ``tail_average``: the weights and BatchNorm statistics averaged uniformly
  over the last ``--tail`` fraction of the steps (stochastic weight
  averaging along the same trajectory: no extra training).

For each, the paired spread per seed of the test accuracy difference, its
mean (the effect) and the standardised effect ``mean / spread``, which sets
the seeds a verdict needs (about ``1 / effect^2``).

    .venv/bin/python benchmarks/noise_reduction.py --seeds 12

Writes benchmarks/results/noise_reduction.json (or ``--results``).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ray_benchmark import demo_transfer_data  # noqa: E402


def tail_averaging_fit(original, tail):
    """``_fit`` that also keeps the uniform average of the weights and buffers over
    the last ``tail`` of its steps, as ``net.tail_average`` (a state dict)."""
    from transferscope.compute import train as tr

    def fit(net, x, y, config, epochs, batch_size, lr, gen, device, shift=0, rows=None):
        total, _ = tr.batch_schedule(len(y), epochs, batch_size, torch.Generator())
        start = int((1 - tail) * total)
        state = {"step": 0, "sum": None, "count": 0}
        step = torch.optim.SGD.step

        def counting_step(opt, *a, **kw):
            out = step(opt, *a, **kw)
            if state["step"] >= start:
                current = {k: v.detach().double().clone() for k, v in net.state_dict().items()}
                if state["sum"] is None:
                    state["sum"] = current
                else:
                    for k, v in current.items():
                        state["sum"][k] += v
                state["count"] += 1
            state["step"] += 1
            return out

        torch.optim.SGD.step = counting_step
        try:
            original(net, x, y, config, epochs, batch_size, lr, gen, device, shift, rows)
        finally:
            torch.optim.SGD.step = step
        ref = net.state_dict()
        net.tail_average = {
            k: (v / state["count"]).to(ref[k].dtype) for k, v in state["sum"].items()
        }

    return fit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--tail", type=float, default=0.25, help="fraction of steps averaged")
    parser.add_argument("--removed", default="bold", help="the class the second arm lacks")
    parser.add_argument("--results", default=os.path.join(HERE, "results", "noise_reduction.json"))
    args = parser.parse_args(argv)

    from transferscope.compute import InfluenceConfig
    from transferscope.compute import train as tr
    from transferscope.compute.engine import RETRAIN_INDEX_BASE

    from transferscope.demo import DEFAULTS
    from transferscope.demo_data import SUBPOP_STYLES, glyph_classes

    names = [n for n, _ in glyph_classes()] + list(SUBPOP_STYLES)
    data = demo_transfer_data()
    config = InfluenceConfig(epochs=DEFAULTS["epochs"], seed=0, device="cpu", precision="fp32")
    tr._fit = tail_averaging_fit(tr._fit, args.tail)
    every = np.ones(data.num_pretrain_classes, dtype=bool)
    without = every.copy()
    without[names.index(args.removed)] = False
    acc = {v: {"full": [], "without": []} for v in ("final", "tail_average")}
    start = time.perf_counter()
    for s in range(args.seeds):
        for arm, mask in (("full", every), ("without", without)):
            net, gen, device = tr.pretrain_network(config, RETRAIN_INDEX_BASE + s, mask, data)
            final = tr.transfer_outputs(config, net, gen, data, device)
            acc["final"][arm].append(float(final["correct"].mean()))
            net.load_state_dict(net.tail_average)
            averaged = tr.transfer_outputs(config, net, gen, data, device)
            acc["tail_average"][arm].append(float(averaged["correct"].mean()))
        print(
            f"seed {s}: "
            + "; ".join(
                f"{v} {100 * (a['without'][-1] - a['full'][-1]):+.2f}" for v, a in acc.items()
            )
        )
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "seeds": args.seeds,
        "tail": args.tail,
        "removed": args.removed,
        "seconds": time.perf_counter() - start,
    }
    for variant, arms in acc.items():
        d = 100 * (np.array(arms["without"]) - np.array(arms["full"]))
        out[variant] = {
            "effect_points": float(d.mean()),
            "spread_points": float(d.std(ddof=1)),
            "standardised_effect": float(d.mean() / d.std(ddof=1)),
            "accuracy_full": float(np.mean(arms["full"])),
            "per_seed_points": d.round(3).tolist(),
        }
        print(
            f"{variant:13s} effect {d.mean():+.2f} points, spread {d.std(ddof=1):.2f} a seed, "
            f"standardised {d.mean() / d.std(ddof=1):.2f}, full-set accuracy "
            f"{100 * np.mean(arms['full']):.1f}%"
        )
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(out, f, indent=1)
    print(f"written {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
