"""The ``pyro-vae`` command line: train, evaluate, sample, and list data sets, pairs, objectives."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pyro_vae.analysis.diagnose import DiagnoseError
from pyro_vae.data import BINARIZATIONS, DATASETS, DataError
from pyro_vae.infer.compiled import COMPILE_MODES
from pyro_vae.infer.distributed import (
    DistributedError,
    check_batch_divides,
    exit_now,
    launch,
    launched_by_torchrun,
    world,
)
from pyro_vae.infer.estimators import ESTIMATORS, EstimatorError
from pyro_vae.infer.gradients import BASELINES, GRADIENT_ESTIMATORS
from pyro_vae.infer.objectives import ENUMERATE_STRATEGIES, OBJECTIVES, ObjectiveError
from pyro_vae.infer.optimizers import IWAE_EPOCHS, OPTIMIZERS, SCHEDULES
from pyro_vae.pairs import PAIRS, PairError
from pyro_vae.pairs.labels import LABEL_ENCODINGS, LabelError
from pyro_vae.runs.checkpoints import CheckpointError
from pyro_vae.runs.config import FIELDS, PIXEL_SCALE_CHOICES, ConfigError, load_toml, resolve
from pyro_vae.runs.files import WriteError, jsonable
from pyro_vae.runs.lock import RunInUseError
from pyro_vae.training.train import TrainingError, prepare_run_dir

USER_ERRORS = (
    CheckpointError,
    ConfigError,
    DataError,
    DiagnoseError,
    EstimatorError,
    LabelError,
    ObjectiveError,
    PairError,
    RunInUseError,
    TrainingError,
    WriteError,
)


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
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="adam, adamw, sgd (torch.optim) or clipped-adam (Pyro's) (default adam)",
    )
    p.add_argument(
        "--adam-betas",
        type=float,
        nargs=2,
        metavar=("BETA1", "BETA2"),
        help="Adam's betas (default 0.9 0.999)",
    )
    p.add_argument("--adam-eps", type=float, help="Adam's eps (default 1e-8; Burda et al. 1e-4)")
    p.add_argument(
        "--weight-decay",
        type=float,
        help="L2 (adam, sgd) or decoupled (adamw) weight decay (default 0)",
    )
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    p.add_argument(
        "--clip-norm",
        type=float,
        help="clip each parameter tensor's gradient to this norm (default: no clip)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=SCHEDULES,
        help="learning rate per epoch: none, step, exponential, cosine, or iwae "
        "(Burda et al. 2016: 3^i epochs at lr x 10^(-i/7), i=0..7; sets --epochs to "
        f"{IWAE_EPOCHS} unless given) (default none)",
    )
    p.add_argument(
        "--lr-gamma", type=float, help="factor of the step and exponential schedules (default 0.5)"
    )
    p.add_argument(
        "--lr-step-size", type=int, help="epochs between steps of the step schedule (default 10)"
    )
    p.add_argument("--lr-min", type=float, help="last rate of the cosine schedule (default 0)")
    p.add_argument(
        "--valid-size",
        type=int,
        metavar="N",
        help="validation rows, taken from the end of train + valid (default: the "
        "data set's split, 10000 for MNIST); 0 trains on all of them and best.pt is "
        "the last epoch",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--train-limit", type=int, metavar="N", help="train on the first N points only")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="also checkpoint every N SVI steps inside an epoch (default 0: at epoch ends); "
        "a resumed run continues from the step, bit for bit",
    )
    p.add_argument(
        "--drop-last",
        action="store_const",
        const=True,
        default=None,
        help="drop the last short batch of each epoch",
    )
    p.add_argument(
        "--score-function",
        action="store_const",
        const=True,
        default=None,
        help="train by the score-function estimator: the guide's latent sites are made "
        "non-reparameterized (any pair)",
    )
    p.add_argument(
        "--baseline",
        choices=list(BASELINES),
        help="baseline for score-function terms (needs --objective tracegraph): "
        + "; ".join(f"{name}: {spec.description}" for name, spec in BASELINES.items()),
    )
    p.add_argument(
        "--baseline-beta", type=float, metavar="BETA", help="decay of --baseline avg (default 0.9)"
    )
    p.add_argument(
        "--baseline-lr",
        type=float,
        metavar="LR",
        help="learning rate of --baseline nn (default 10 x --lr)",
    )
    p.add_argument(
        "--baseline-hidden",
        type=_comma_list(int),
        metavar="H1,H2",
        help="hidden widths of --baseline nn (default 100)",
    )
    p.add_argument(
        "--beta",
        type=float,
        metavar="B",
        help="weight of every latent site in training (a beta-VAE's beta * KL; default 1); "
        "validation and evaluation always report the true ELBO",
    )
    p.add_argument(
        "--kl-warmup",
        type=int,
        metavar="N",
        help="KL warm-up: the latent weight rises linearly from --kl-warmup-start to --beta "
        "over N SVI steps (default 0: no warm-up)",
    )
    p.add_argument(
        "--kl-warmup-start",
        type=float,
        metavar="B0",
        help="latent weight at the first step of --kl-warmup (default 0)",
    )
    p.add_argument(
        "--label-encoding",
        choices=LABEL_ENCODINGS,
        help="labels as the pair's programs receive them: class indices (B,) or one-hot rows "
        "(B, C) (default index)",
    )
    p.add_argument(
        "--num-labelled",
        type=int,
        metavar="N",
        help="keep the labels of N training points, the same number per class, chosen with "
        "--seed (default: all, for a pair whose programs take labels)",
    )
    p.add_argument(
        "--labelled-batches",
        type=int,
        metavar="L",
        help="labelled batches per epoch, spread evenly among the unlabelled ones (default: "
        "one pass over the labelled points)",
    )
    p.add_argument(
        "--enumerate",
        choices=ENUMERATE_STRATEGIES,
        help="with --objective enum: parallel (one vectorized pass over each discrete "
        "site's values) or sequential (one pass per value) (default parallel)",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="on",
        choices=COMPILE_MODES,
        help="trace the training loss once per batch shape from the pair's Pyro programs "
        "into a graph and compile it (torch.compile); an untraceable pair trains eagerly "
        "with a note naming why, or stops with --compile strict (default off)",
    )
    p.add_argument(
        "--pixel-scale",
        choices=PIXEL_SCALE_CHOICES,
        help="scaling of .npy/.npz values: auto (uint8 arrays of image shape /255, counts "
        "kept), none, 255 (default auto)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    _add_launch_options(p)
    p.set_defaults(run=_run_train)  # fmt: skip


def _add_launch_options(p) -> None:
    """torchrun's launch flags: ``--nproc-per-node N`` starts N ranks of the command."""
    group = p.add_argument_group(
        "data parallel (torchrun)",
        "start the command as several processes (ranks) with torchrun's launcher; the same "
        "as `torchrun --nproc-per-node N -m pyro_vae ...`",
    )
    group.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="ranks on this machine (one per GPU on CUDA)",
    )
    group.add_argument(
        "--nnodes",
        type=int,
        default=1,
        metavar="M",
        help="machines in the run (each runs the same command) (default 1)",
    )
    group.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="K",
        help="this machine's number, 0..M-1 (default 0)",
    )
    group.add_argument("--master-addr", metavar="HOST", help="node 0's address (M > 1)")
    group.add_argument("--master-port", type=int, metavar="PORT",
                       help="a free port on node 0 (M > 1)")  # fmt: skip


def _run_train(args) -> int:
    from pyro_vae.training.train import read_config, train

    file_values = load_toml(args.config) if args.config else {}
    flags = {name: getattr(args, name, None) for name in FIELDS}
    if args.resume and args.out and not args.config:
        # resuming takes the run's own resolved config; flags may still raise --epochs
        try:
            file_values = read_config(args.out).to_dict()
        except ConfigError:
            file_values = {}
    if (flags.get("lr_schedule") or file_values.get("lr_schedule")) == "iwae" and (
        flags.get("epochs") is None and "epochs" not in file_values
    ):
        flags["epochs"] = IWAE_EPOCHS  # the schedule's own length
    config = resolve(file_values, flags)
    result = train(config, resume=args.resume, progress=args.progress)
    last = result.history[-1] if result.history else None
    if last and world().is_main:
        best = result.best_valid_elbo
        print(
            f"done: {result.run_dir}  epoch {last['epoch']}  "
            + (f"best valid ELBO {best:.3f}" if best == best else "no validation split: "
               "best.pt is the last epoch")
        )  # fmt: skip
    return 0


def _add_run_options(p, *, split: str = "test", out_help: str | None = None) -> None:
    """The flags every command that reads a trained run shares (evaluate, convergence, ...)."""
    p.add_argument("--split", choices=("test", "valid", "train"), default=split)
    p.add_argument("--checkpoint", choices=("best.pt", "checkpoint.pt"), default="best.pt")
    p.add_argument("--device", help="default: the run's device")
    p.add_argument("--data-dir", help="where the data files are, if not where training found them")
    if out_help is not None:
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", metavar="DIR", help=out_help)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def _run_options(args) -> dict:
    """The values of :func:`_add_run_options`' flags, as keyword arguments.

    An ``--out`` folder that is given is made and checked writable first (a file there, or a
    place that cannot be written, is a message, not a traceback after the work is done).
    """
    if getattr(args, "out", None) is not None:
        prepare_run_dir(args.out)
    names = ["split", "checkpoint", "device", "data_dir", "progress", "out", "seed"]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="importance-sampled log p(x) and ELBO of a run",
        description="Estimate log p(x) per data point by importance sampling with the guide "
        "(log-mean-exp of K weights p(x,z)/q(z|x)) and the ELBO; print the means.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--num-samples", type=int, default=1000, metavar="K")
    p.add_argument("--limit", type=int, metavar="N", help="first N points of the split")
    p.add_argument("--batch-size", type=int, default=100, help="data points per chunk")
    p.add_argument(
        "--estimator",
        choices=list(ESTIMATORS),
        default="is",
        help="proposal: is = the guide q(z|x), prior = p(z) (naive Monte Carlo)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compute the log weights with a compiled graph of the pair's programs (the same "
        "numbers as without, with the same seed)",
    )
    _add_run_options(p)
    _add_launch_options(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from pyro_vae.analysis.evaluate import evaluate

    summary = evaluate(
        args.run_dir,
        num_samples=args.num_samples,
        limit=args.limit,
        batch_size=args.batch_size,
        estimator=args.estimator,
        compile=args.compile,
        **_run_options(args),
    )
    if not world().is_main:  # rank 0 of a sharded evaluation prints
        return 0
    print(json.dumps(summary.to_dict()) if args.json else summary.summary())
    return 0


def _comma_list(kind: type) -> Callable[[str], list]:
    """An argparse type for ``a,b,c``: each item converted by ``kind``."""

    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}, got {text!r}"
            ) from None

    return parse


def _add_convergence(subparsers) -> None:
    p = subparsers.add_parser(
        "convergence",
        help="log p(x) estimates against the number of samples K, per estimator",
        description="For the first points of a split, draw --repeats independent estimates "
        "of log p(x) per point for each estimator and K; write convergence.json, .csv and "
        ".png (estimate +- the spread of one estimate against K, with a reference).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--ks",
        type=_comma_list(int),
        default=[1, 10, 100, 1000, 5000],
        metavar="K1,K2,...",
        help="sample counts (default 1,10,100,1000,5000)",
    )
    p.add_argument(
        "--estimators",
        type=_comma_list(str),
        default=["is", "prior"],
        metavar="E1,E2",
        help=f"from {', '.join(ESTIMATORS)} (default is,prior)",
    )
    p.add_argument("--points", type=int, default=10, metavar="N", help="first N points")
    p.add_argument(
        "--repeats",
        type=int,
        default=10,
        metavar="R",
        help="independent estimates per point and K (at least 2)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="log weights from compiled graphs, one per estimator and K (the same numbers)",
    )
    _add_run_options(p, out_help="folder for the files (default: RUN_DIR)")
    _add_launch_options(p)
    p.set_defaults(run=_run_convergence)


def _run_convergence(args) -> int:
    from pyro_vae.analysis.convergence import convergence_study, format_table

    summary = convergence_study(
        args.run_dir,
        ks=args.ks,
        estimators=args.estimators,
        num_points=args.points,
        repeats=args.repeats,
        compile=args.compile,
        **_run_options(args),
    )
    if not world().is_main:  # rank 0 of a sharded study prints
        return 0
    if args.json:
        print(json.dumps(jsonable(summary)))
    else:
        format_table(summary)
    return 0


def _add_gradvar(subparsers) -> None:
    p = subparsers.add_parser(
        "gradvar",
        help="variance and SNR of gradient estimators (reparameterized, score function, baselines)",
        description="On one fixed minibatch of a trained run, draw --num-draws gradients of "
        "the loss per estimator and report the per-coordinate variance and signal-to-noise "
        "ratio, averaged over the pair's parameters; write gradvar.json and gradvar.png.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--estimators",
        type=_comma_list(str),
        default=list(GRADIENT_ESTIMATORS),
        metavar="E1,E2",
        help=f"from {', '.join(GRADIENT_ESTIMATORS)} (default: all)",
    )
    p.add_argument("--num-draws", type=int, default=100, metavar="N")
    p.add_argument("--batch-size", type=int, default=100, help="first B points of the split")
    p.add_argument(
        "--baseline-steps",
        type=int,
        default=200,
        metavar="S",
        help="draws that warm a baseline up before it is measured",
    )
    _add_run_options(p, split="train", out_help="folder for the files (default: RUN_DIR)")
    p.set_defaults(run=_run_gradvar)


def _run_gradvar(args) -> int:
    from pyro_vae.analysis.gradvar import format_table, gradient_variance, without_groups

    result = gradient_variance(
        args.run_dir,
        estimators=args.estimators,
        num_draws=args.num_draws,
        batch_size=args.batch_size,
        baseline_steps=args.baseline_steps,
        **_run_options(args),
    )
    if args.json:
        print(json.dumps(jsonable(without_groups(result))))
    else:
        print(format_table(result))
    return 0


def _add_diagnose(subparsers) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="per-point posterior diagnostics: PSIS k-hat, gaps, NUTS reference, active units",
        description="Can the amortized q(z|x) be trusted at each selected point? PSIS k-hat of "
        "q as an importance proposal, log p(x) and the ELBO, amortization and approximation "
        "gaps, active units and KL per latent dimension, and with --nuts a NUTS reference "
        "posterior. Writes diagnose.json, ArviZ netcdf files and PNGs into --out.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--points", type=int, metavar="N", help="the first N points (default 20)")
    which.add_argument(
        "--indices", type=_comma_list(int), metavar="I,J,...", help="these indices of the split"
    )
    p.add_argument("--num-samples", type=int, default=1000, metavar="S", help="draws from q(z|x)")
    p.add_argument("--nuts", action="store_true", help="also run NUTS for a reference p(z|x)")
    p.add_argument("--nuts-chains", type=int, default=4, metavar="C")
    p.add_argument("--nuts-warmup", type=int, default=200, metavar="W")
    p.add_argument("--nuts-samples", type=int, default=200, metavar="M", help="draws per chain")
    p.add_argument("--gap-steps", type=int, default=200, metavar="T", help="Adam steps for q*")
    p.add_argument("--gap-lr", type=float, default=1e-2, metavar="LR", help="Adam step size")
    p.add_argument("--gap-particles", type=int, default=8, metavar="P", help="draws per step")
    p.add_argument(
        "--compile",
        action="store_true",
        help="draw from q(z|x) and compute the importance weights (q's and q*'s) with "
        "compiled graphs of the pair's programs (the same numbers)",
    )
    _add_run_options(p, out_help="folder for the files (default RUN_DIR/diagnose)")
    _add_launch_options(p)
    p.set_defaults(run=_run_diagnose)


def _run_diagnose(args) -> int:
    from pyro_vae.analysis.diagnose import diagnose, format_summary

    summary = diagnose(
        args.run_dir,
        points=args.points,
        indices=args.indices,
        num_samples=args.num_samples,
        nuts=args.nuts,
        nuts_chains=args.nuts_chains,
        nuts_warmup=args.nuts_warmup,
        nuts_samples=args.nuts_samples,
        gap_steps=args.gap_steps,
        gap_lr=args.gap_lr,
        gap_particles=args.gap_particles,
        compile=args.compile,
        **_run_options(args),
    )
    if world().is_main:  # rank 0 of a sharded diagnosis prints
        print(json.dumps(summary) if args.json else format_summary(summary))
    # rank 0 goes on alone after the shared draws (gaps, NUTS): the others leave now
    world().close(wait=False)
    return 0


def _add_sample(subparsers) -> None:
    p = subparsers.add_parser("sample", help="PNG grid of data, reconstructions, prior samples")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--num", type=int, default=10, help="images per row")
    p.add_argument("--split", choices=("test", "valid", "train"), default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=("best.pt", "checkpoint.pt"), default="best.pt")
    p.add_argument("--device")
    p.add_argument(
        "--label",
        type=int,
        metavar="K",
        help="a conditional pair: samples of class K only (default: one row per class)",
    )
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from pyro_vae.analysis.sampling import sample_figure

    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(
            f"--out {args.out!r} is a folder; name the PNG file to write, e.g. "
            f"{str(out / 'samples.png')!r}"
        )
    prepare_run_dir(out.parent)
    path = sample_figure(args.run_dir, out, num=args.num, split=args.split, seed=args.seed,
                         device=args.device, checkpoint=args.checkpoint,
                         label=args.label)  # fmt: skip
    print(f"wrote {path}")
    return 0


def _add_latents(subparsers) -> None:
    p = subparsers.add_parser(
        "latents",
        help="2-D map of E_q[z|x] over a split, coloured by label (PNG and CSV)",
        description="Project the guide's mean E_q[z|x] of every point of a split to two "
        "dimensions (PCA or t-SNE) and draw it, one colour per class label; writes "
        "latents_<split>_<method>.png, .csv (coordinates and the means) and .json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_run_options(p, out_help="folder to write into (default RUN_DIR/latents)")
    p.add_argument("--method", choices=("pca", "tsne"), default="pca")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N points")
    p.add_argument("--site", help="the guide's latent site to map (default: the first "
                   "continuous per-point one)")  # fmt: skip
    p.add_argument("--draws", type=int, default=10,
                   help="guide draws averaged where z depends on a sampled discrete latent "
                   "(default 10)")  # fmt: skip
    p.set_defaults(run=_run_latents)


def _run_latents(args) -> int:
    from pyro_vae.analysis.latents import latent_map

    options = _run_options(args)
    options.pop("progress", None)
    summary = latent_map(args.run_dir, method=args.method, limit=args.limit, site=args.site,
                         draws=args.draws, **options)  # fmt: skip
    if args.json:
        print(json.dumps(jsonable(summary)))
    else:
        print(f"wrote {summary['png']} and {summary['csv']} ({summary['num_points']} points, "
              f"site {summary['site']!r}, {summary['latent_dims']} dims)")  # fmt: skip
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
    print("log p(x) estimators (evaluate --estimator):")
    for name, spec in ESTIMATORS.items():
        print(f"  {name:16s} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_evaluate,
        _add_sample,
        _add_list,
        _add_convergence,
        _add_gradvar,
        _add_diagnose,
        _add_latents,
    ):
        add(subparsers)
    return parser


def _check_launch(args) -> None:
    """What the launcher can refuse before it starts any rank."""
    size = args.nproc_per_node * max(args.nnodes, 1)
    batch_size = getattr(args, "batch_size", None)
    if args.command == "train" and batch_size and size > 0:
        check_batch_divides(batch_size, size, f"{size} ranks (--nproc-per-node "
                            f"{args.nproc_per_node} x --nnodes {args.nnodes})")  # fmt: skip


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script. A rank of a distributed run leaves
    with ``os._exit`` once its output is flushed (:func:`pyro_vae.infer.distributed.exit_now`)."""
    code = _main(argv)
    if world().distributed:
        exit_now(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        if getattr(args, "nproc_per_node", None) is not None and not launched_by_torchrun():
            _check_launch(args)
            return launch(argv, nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                          node_rank=args.node_rank, master_addr=args.master_addr,
                          master_port=args.master_port)  # fmt: skip
        code = args.run(args)
        world().close()
        return code
    except USER_ERRORS as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except DistributedError as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        if interrupt.args:  # train saved where it stopped and says so
            print(f"pyro-vae {args.command}: {interrupt.args[0]}", file=sys.stderr)
            return 130
        out = getattr(args, "out", None)
        hint = f"; resume with: pyro-vae train --out {out} --resume" if out else ""
        kept = "the last checkpoint is kept" if args.command == "train" else "nothing was saved"
        print(f"pyro-vae {args.command}: interrupted; {kept}{hint}", file=sys.stderr)
        return 130
    finally:
        if launched_by_torchrun():  # torchrun's SIGTERM to a rank already on its way out
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
