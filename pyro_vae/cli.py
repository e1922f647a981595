"""The ``pyro-vae`` command line: train, evaluate, sample, and list data sets, pairs, objectives."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from pyro_vae.config import FIELDS, ConfigError, load_toml, resolve
from pyro_vae.data import BINARIZATIONS, DATASETS, DataError
from pyro_vae.objectives import OBJECTIVES, ObjectiveError
from pyro_vae.pairs import PAIRS, PairError
from pyro_vae.train import TrainingError

USER_ERRORS = (ConfigError, DataError, ObjectiveError, PairError, TrainingError)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object like '{{\"z_dim\": 20}}': {text!r}"
        )
    return value


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a VAE by SVI and write a run directory",
        description="Train a model/guide pair by SVI. Flags override --config; unset flags "
        "take the config file's value, then the data set's default.",
    )
    p.add_argument(
        "--config", metavar="FILE.toml", help="TOML file with the same keys as the flags"
    )
    p.add_argument("--dataset", help=f"data set name ({', '.join(DATASETS)}) or a .npy/.npz path")
    p.add_argument(
        "--data-dir", help="root holding the data files (else $PYRO_VAE_DATA_DIR, cache)"
    )
    p.add_argument(
        "--download",
        action="store_const",
        const=True,
        default=None,
        help="download missing data files (checksum-verified) into the cache",
    )
    p.add_argument(
        "--base-url", metavar="URL", help="with --download: fetch the files from this mirror"
    )
    p.add_argument("--binarize", choices=BINARIZATIONS, help="default: the data set's")
    p.add_argument("--pair", help=f"built-in ({', '.join(PAIRS)}), FILE.py:NAME or module:NAME")
    p.add_argument(
        "--pair-kwargs",
        type=_json_object,
        metavar="JSON",
        help="keyword arguments for the pair, e.g. '{\"z_dim\": 50}'",
    )
    p.add_argument("--model", metavar="SPEC", help="model function, FILE.py:NAME or module:NAME")
    p.add_argument("--guide", metavar="SPEC", help="guide function, FILE.py:NAME or module:NAME")
    p.add_argument("--objective", choices=list(OBJECTIVES))
    p.add_argument("--num-particles", type=int, metavar="K")
    p.add_argument("--alpha", type=float, help="Renyi alpha for --objective renyi (default 0.5)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--train-limit", type=int, metavar="N", help="train on the first N points only")
    p.add_argument(
        "--drop-last",
        action="store_const",
        const=True,
        default=None,
        help="drop the last short batch of each epoch",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(run=_run_train)  # fmt: skip


def _run_train(args) -> int:
    from pyro_vae.train import read_config, train

    file_values = load_toml(args.config) if args.config else {}
    flags = {name: getattr(args, name, None) for name in FIELDS}
    if args.resume and args.out and not args.config:
        # resuming takes the run's own resolved config; flags may still raise --epochs
        try:
            file_values = read_config(args.out).to_dict()
        except ConfigError:
            file_values = {}
    config = resolve(file_values, flags)
    result = train(config, resume=args.resume, progress=args.progress)
    last = result.history[-1] if result.history else None
    if last:
        print(
            f"done: {result.run_dir}  epoch {last['epoch']}  "
            f"best valid ELBO {result.best_valid_elbo:.3f}"
        )
    return 0


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="importance-sampled log p(x) and ELBO of a run",
        description="Estimate log p(x) per data point by importance sampling with the guide "
        "(log-mean-exp of K weights p(x,z)/q(z|x)) and the ELBO; print the means.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--num-samples", type=int, default=1000, metavar="K")
    p.add_argument("--split", choices=("test", "valid", "train"), default="test")
    p.add_argument("--limit", type=int, metavar="N", help="first N points of the split")
    p.add_argument("--batch-size", type=int, default=100, help="data points per chunk")
    p.add_argument("--checkpoint", choices=("best.pt", "checkpoint.pt"), default="best.pt")
    p.add_argument("--device", help="default: the run's device")
    p.add_argument("--data-dir", help="where the data files are, if not where training found them")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from pyro_vae.evaluate import evaluate

    summary = evaluate(
        args.run_dir,
        num_samples=args.num_samples,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        checkpoint=args.checkpoint,
        device=args.device,
        data_dir=args.data_dir,
        progress=args.progress,
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['split']}: {summary['num_points']} points, K={summary['num_samples']}\n"
            f"  log p(x) ~ {summary['log_px']:.3f} +- {summary['log_px_stderr']:.3f} nats\n"
            f"  ELBO       {summary['elbo']:.3f} +- {summary['elbo_stderr']:.3f} nats\n"
            f"  gap        {summary['gap']:.3f} nats   ({summary['seconds']:.1f}s)"
        )
    return 0


def _add_sample(subparsers) -> None:
    p = subparsers.add_parser("sample", help="PNG grid of data, reconstructions, prior samples")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--num", type=int, default=10, help="images per row")
    p.add_argument("--split", choices=("test", "valid", "train"), default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from pyro_vae.plots import sample_figure

    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    path = sample_figure(args.run_dir, args.out, num=args.num, split=args.split,
                         seed=args.seed, device=args.device)  # fmt: skip
    print(f"wrote {path}")
    return 0


def _add_list(subparsers) -> None:
    p = subparsers.add_parser("list", help="the built-in data sets, pairs and objectives")
    p.set_defaults(run=_run_list)


def _run_list(args) -> int:
    print("data sets (--dataset):")
    for name, spec in DATASETS.items():
        print(f"  {name:16s} {spec.description}")
    print("pairs (--pair):")
    for name, spec in PAIRS.items():
        print(f"  {name:16s} {spec.description}")
    print("objectives (--objective):")
    for name, spec in OBJECTIVES.items():
        print(f"  {name:16s} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_sample, _add_list):
        add(subparsers)
    return parser


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f"; resume with: pyro-vae train --out {out} --resume" if out else ""
        print(
            f"pyro-vae {args.command}: interrupted; the last finished epoch's checkpoint is "
            f"kept{hint}",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
