"""Command line: ``transferscope demo`` (``--planner``), ``evaluate-curation``,
``plot-curation``, ``install-plugin`` and ``cache``."""

import argparse
import logging
import os
import sys

from .compute import images


def main(argv=None):
    parser = argparse.ArgumentParser(prog="transferscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build the demo datasets and compute class influence")
    demo.add_argument(
        "--planner",
        action="store_true",
        help="the class-count planner's demo instead (budgets over a 16x range, about 15 min)",
    )
    demo.add_argument("--num-models", type=int, default=None)
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the models train (ray: one task per model)",
    )
    demo.add_argument(
        "--ray-address",
        default="auto",
        help="with --executor ray: auto, HOST:PORT or ray://HOST:PORT",
    )
    demo.add_argument(
        "--cpus-per-model",
        type=int,
        default=1,
        help="with --executor ray: CPUs (and torch threads) per model",
    )
    demo.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="local executor: models trained at once (default: automatic, "
        "1 on a CPU, as many as fit on a GPU)",
    )
    _curation_parser(sub)
    plot = sub.add_parser("plot-curation", help="write a run's stored curation plot as PNG")
    plot.add_argument("dataset")
    plot.add_argument("run_key")
    plot.add_argument("--out", required=True, help="PNG path")
    plug = sub.add_parser(
        "install-plugin", help="link this plugin into FiftyOne's plugins directory"
    )
    plug.add_argument("--plugins-dir", default=None, help="default: fiftyone.config.plugins_dir")
    cache = sub.add_parser(
        "cache", help="the decoded image cache: its size, or clear it ($TRANSFERSCOPE_IMAGE_CACHE)"
    )
    cache.add_argument("action", choices=("info", "clear"))
    args = parser.parse_args(argv)
    # our own messages only: FiftyOne prints its own through its handler, and
    # a root handler would print those twice
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("transferscope")
    ours.setLevel(logging.INFO)
    ours.addHandler(handler)
    from .views import TransferScopeError

    try:
        return _dispatch(args)
    except TransferScopeError as e:  # bad input: say what, no traceback
        print(f"transferscope {args.command}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args):
    if args.command == "demo" and args.planner:
        from .planner_demo import run_planner_demo

        run_planner_demo()
    elif args.command == "demo":
        from .demo import DEFAULTS, run_demo

        kwargs = {
            k: v
            for k, v in (
                ("num_models", args.num_models),
                ("epochs", args.epochs),
                ("seed", args.seed),
            )
            if v is not None
        }
        if args.executor == "ray":
            kwargs.update(
                executor="ray",
                executor_options={
                    "address": args.ray_address,
                    "cpus_per_model": args.cpus_per_model,
                },
            )
        elif args.group_size is not None:
            kwargs.update(executor_options={"group_size": args.group_size})
        run_demo(**{**DEFAULTS, **kwargs})
    elif args.command == "evaluate-curation":
        from .curation import evaluate_curation
        from .plots import save_curation_png

        sweep = [int(k) for k in args.sweep.split(",") if k.strip()]
        summary = evaluate_curation(
            args.dataset,
            args.run_key,
            rule=args.rule,
            k=args.k,
            threshold=args.threshold,
            max_seeds=args.max_seeds,
            round_seeds=args.round_seeds,
            alpha=args.alpha,
            min_effect=args.min_effect,
            outcome=args.outcome,
            fdr_level=args.fdr_level,
            sweep_ks=sweep,
        )
        print("\n".join(summary.describe()))
        if args.png:
            print(f"plot: {save_curation_png(summary, args.png)}")
    elif args.command == "plot-curation":
        from .curation import curation_of
        from .plots import save_curation_png

        print(save_curation_png(curation_of(args.dataset, args.run_key), args.out))
    elif args.command == "install-plugin":
        print(install_plugin(args.plugins_dir))
    elif args.command == "cache":
        if images.image_cache_dir() is None:
            print(f"the image cache is off (${images.IMAGE_CACHE_ENV}=off)")
        elif args.action == "clear":
            print(f"freed {images.clear_cache() / 1e9:.2f} GB in {images.image_cache_dir()}")
        else:
            info = images.cache_info()
            print(
                f"{info['folder']}: {info['sets']} decoded set(s), {info['bytes'] / 1e9:.2f} GB "
                f"of {info['limit_bytes'] / 1e9:.0f} GB (${images.CACHE_LIMIT_ENV})"
            )
    return 0


def plugin_root():
    """The folder holding fiftyone.yml: the repository root of this checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if not os.path.exists(os.path.join(root, "fiftyone.yml")):
        raise RuntimeError(
            "fiftyone.yml not found next to the transferscope package; install "
            "from a checkout with `pip install -e .`"
        )
    return root


def install_plugin(plugins_dir=None):
    """Symlinks the plugin into FiftyOne's plugins dir; returns the link path."""
    import fiftyone as fo

    plugins_dir = os.path.abspath(os.path.expanduser(plugins_dir or fo.config.plugins_dir))
    os.makedirs(plugins_dir, exist_ok=True)
    link = os.path.join(plugins_dir, "transferscope")
    if os.path.islink(link):
        if os.path.realpath(link) == os.path.realpath(plugin_root()):
            return link
        os.remove(link)  # a link to another checkout: point it at this one
    elif os.path.exists(link):
        raise RuntimeError(f"{link} exists and is not a link to this plugin; remove it first")
    os.symlink(plugin_root(), link)
    return link


def _curation_parser(sub):
    """``transferscope evaluate-curation``: its arguments, the SDK call's."""
    cur = sub.add_parser(
        "evaluate-curation", help="retrain on the full, curated and random sets; print and plot"
    )
    cur.add_argument("dataset", help="the run's target or pretraining dataset")
    cur.add_argument("run_key", help="a class-influence run")
    cur.add_argument(
        "--rule",
        default=None,
        help="harmful_fdr, ci_below_zero, most_harmful, below_threshold "
        "(default: the tagged classes, else harmful_fdr)",
    )
    cur.add_argument(
        "--fdr-level", type=float, default=0.1, help="with harmful_fdr: the false-discovery level"
    )
    cur.add_argument("--k", type=int, default=None)
    cur.add_argument("--threshold", type=float, default=None)
    cur.add_argument(
        "--max-seeds", type=int, default=64, help="seed budget per arm (seeds come in rounds)"
    )
    cur.add_argument("--round-seeds", type=int, default=4, help="seeds added per round")
    cur.add_argument("--alpha", type=float, default=0.05, help="error level of each verdict")
    cur.add_argument(
        "--min-effect",
        type=float,
        default=0.01,
        help="smallest effect that matters (0.01: 1 point)",
    )
    cur.add_argument("--outcome", default="accuracy", help="decide on 'accuracy' or 'prob'")
    cur.add_argument("--sweep", default="", help="comma-separated k values, e.g. 4,8,16")
    cur.add_argument("--png", default=None, help="write the accuracy-vs-removed plot here")


if __name__ == "__main__":
    sys.exit(main())
