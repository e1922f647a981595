"""The commands that read a trained run: evaluate, convergence, gradvar, diagnose, sample,
latents, and the flags they share (which run, split, checkpoint and device; ``--json``).

Each parses its flags, calls the library function of :mod:`pyro_vae.analysis` and prints the
result: ``result.to_dict()`` as JSON with ``--json``, else ``result.summary()``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_vae.analysis.bdmc import AIS_ESTIMATORS
from pyro_vae.analysis.gradvar import DEFAULT_NUM_PARTICLES
from pyro_vae.analysis.snr_k import DEFAULT_KS
from pyro_vae.cli.options import _add_launch_options, _comma_list
from pyro_vae.infer.ais import AIS_CHAINS, AIS_STEPS, LEAPFROG_STEPS, PROPOSALS, STEP_SIZE
from pyro_vae.infer.distributed import world
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.infer.gradients import GRADIENT_ESTIMATORS
from pyro_vae.infer.local_fit import LOCAL_FIT_LR, LOCAL_FIT_STEPS
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import jsonable
from pyro_vae.runs.loggers import attach
from pyro_vae.training.train import prepare_run_dir

_RUN_DIR_HELP = "a run directory written by pyro-vae train (required)"


def _add_run_options(p, *, split: str = "test", out_help: str | None = None) -> None:
    """The flags every command that reads a trained run shares (evaluate, convergence, ...)."""
    p.add_argument("--split", choices=("test", "valid", "train"), default=split,
                   help="the split of the data set to read (default %(default)s)")  # fmt: skip
    p.add_argument("--checkpoint", choices=("best.pt", "checkpoint.pt"), default="best.pt",
                   help="the weights: best validation ELBO, or the last saved (default "
                   "%(default)s)")  # fmt: skip
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default: the run's device)")
    p.add_argument("--data-dir", help="where the data files are, if not where training found "
                   "them (default: where training found them)")  # fmt: skip
    if out_help is not None:
        p.add_argument(
            "--seed",
            type=int,
            default=0,
            metavar="S",
            help="seed of the draws: same seed, same numbers (default %(default)s)",
        )
        p.add_argument("--out", metavar="DIR", help=out_help)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")  # fmt: skip


def _run_options(args) -> dict:
    """The values of :func:`_add_run_options`' flags, as keyword arguments.

    An ``--out`` folder that is given is made and checked writable first (a file there, or a
    place that cannot be written, is a message, not a traceback after the work is done).
    """
    _check_run_options(args)
    if getattr(args, "out", None) is not None:
        prepare_run_dir(args.out)
    names = ["split", "checkpoint", "device", "data_dir", "progress", "out", "seed"]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _check_run_options(args) -> None:
    """What :func:`_add_run_options`' flags cannot be: an empty --out or --device (which would
    mean the current folder, the run's device), a seed NumPy cannot take."""
    out, device, seed = (getattr(args, name, None) for name in ("out", "device", "seed"))
    if out is not None and not out.strip():
        raise ConfigError("--out '' is empty: name a folder for the files, or leave the flag out")
    if device is not None and not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ConfigError(
            f"--device {device!r}: must be auto, cpu or cuda[:N], or left out for the run's device"
        )
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: must be in [0, 2**32 - 1] (NumPy's range)")


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="importance-sampled log p(x) and ELBO of a run",
        description="Estimate log p(x) per data point by importance sampling with the guide "
        "(log-mean-exp of K weights p(x,z)/q(z|x)) and the ELBO; print the means.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    p.add_argument("--num-samples", type=int, default=1000, metavar="K",
                   help="importance samples per data point (default %(default)s)")  # fmt: skip
    p.add_argument("--limit", type=int, metavar="N",
                   help="first N points of the split (default: all)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=100,
                   help="data points per chunk (default %(default)s)")  # fmt: skip
    p.add_argument(
        "--estimator",
        choices=[*ESTIMATORS, *AIS_ESTIMATORS],
        default="is",
        help="proposal: is = the guide q(z|x), prior = p(z) (naive Monte Carlo), ais = "
        "annealed importance sampling with HMC (the --ais-* flags) (default %(default)s)",
    )
    _add_ais_options(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="compute the log weights with a compiled graph of the pair's programs (the same "
        "numbers as without, with the same seed) (default: eager)",
    )
    p.add_argument(
        "--local-fit-steps",
        type=int,
        default=LOCAL_FIT_STEPS,
        metavar="S",
        help="a guide that is not amortized (per-point pyro.params) gets its params for the "
        "evaluated points by S steps of SVI, the model frozen (default: %(default)s)",
    )
    p.add_argument(
        "--local-fit-lr",
        type=float,
        default=LOCAL_FIT_LR,
        metavar="LR",
        help="Adam's learning rate of that fit (default: %(default)s)",
    )
    _add_run_options(p)
    _add_launch_options(p)
    p.set_defaults(run=_run_evaluate)


def _add_ais_options(p, steps: bool = True) -> None:
    """The AIS settings of evaluate --estimator ais and bdmc; convergence takes all but
    ``--ais-steps`` (``steps=False``: its steps follow from each K)."""
    if steps:
        p.add_argument("--ais-steps", type=int, default=AIS_STEPS, metavar="T",
                       help="AIS: annealing steps (betas, sigmoidal schedule) (default "
                       "%(default)s)")  # fmt: skip
    p.add_argument("--ais-chains", type=int, default=AIS_CHAINS, metavar="C",
                   help="AIS: independent chains per point (default %(default)s)")  # fmt: skip
    p.add_argument("--leapfrog-steps", type=int, default=LEAPFROG_STEPS, metavar="L",
                   help="AIS: leapfrog steps per HMC transition (default %(default)s)")  # fmt: skip
    p.add_argument("--step-size", type=float, default=STEP_SIZE, metavar="EPS",
                   help="AIS: initial leapfrog step size, tuned per point toward acceptance "
                   "0.65 by a pilot run (default %(default)s)")  # fmt: skip
    p.add_argument("--ais-proposal", choices=PROPOSALS, default="guide",
                   help="AIS: where the chains start, q(z|x) or p(z) (default "
                   "%(default)s)")  # fmt: skip


def _ais_options(args) -> dict:
    return dict(ais_steps=args.ais_steps, ais_chains=args.ais_chains,
                leapfrog_steps=args.leapfrog_steps, step_size=args.step_size)  # fmt: skip


def _run_evaluate(args) -> int:
    from pyro_vae.analysis.evaluate import evaluate

    summary = evaluate(
        args.run_dir,
        num_samples=args.num_samples,
        limit=args.limit,
        batch_size=args.batch_size,
        estimator=args.estimator,
        compile=args.compile,
        local_fit_steps=args.local_fit_steps,
        local_fit_lr=args.local_fit_lr,
        ais_proposal=args.ais_proposal,
        **_ais_options(args),
        **_run_options(args),
    )
    if not world().is_main:  # rank 0 of a sharded evaluation prints
        return 0
    print(json.dumps(summary.to_dict()) if args.json else summary.summary(), flush=True)
    attach(args.run_dir, "evaluate", summary)  # into the run's TensorBoard/MLflow, if any
    return 0


def _add_bdmc(subparsers) -> None:
    p = subparsers.add_parser(
        "bdmc",
        help="bidirectional Monte Carlo: AIS bounds of log p(x) on data simulated from the model",
        description="Simulate (x, z) from the run's model, then per point the forward AIS "
        "estimate of log p(x) (a stochastic lower bound) and the reverse AIS estimate from the "
        "exact z (a stochastic upper bound); write bdmc.json and bdmc.png.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    p.add_argument("--num-points", type=int, default=100, metavar="N",
                   help="points simulated from the model (default %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=100,
                   help="simulated points per chunk (default %(default)s)")  # fmt: skip
    _add_ais_options(p)
    p.add_argument("--compile", action="store_true",
                   help="compile the densities' graph with torch.compile (default: the traced "
                   "graph as it is)")  # fmt: skip
    _add_run_options(p, out_help="folder for the files (default: RUN_DIR)")
    p.set_defaults(run=_run_bdmc)


def _run_bdmc(args) -> int:
    from pyro_vae.analysis.bdmc import bdmc

    summary = bdmc(args.run_dir, num_points=args.num_points, batch_size=args.batch_size,
                   proposal=args.ais_proposal, compile=args.compile, **_ais_options(args),
                   **_run_options(args))  # fmt: skip
    print(json.dumps(summary.to_dict()) if args.json else summary.summary())
    return 0


def _add_convergence(subparsers) -> None:
    p = subparsers.add_parser(
        "convergence",
        help="log p(x) estimates against compute (K), per estimator: IS, prior, AIS",
        description="For the first points of a split, draw --repeats independent estimates "
        "of log p(x) per point for each estimator and K; write convergence.json, .csv and "
        ".png (estimate +- the spread of one estimate against compute, with a reference). "
        "The x axis is compute: density evaluations per point, K for importance sampling; "
        "'ais' runs, for each K, the most AIS steps whose density-and-gradient evaluations "
        "(chains, leapfrog steps and the pilot run included) fit in K.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
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
        help=f"from {', '.join(ESTIMATORS)}, ais (default is,prior)",
    )
    _add_ais_options(p, steps=False)
    p.add_argument("--points", type=int, default=10, metavar="N",
                   help="first N points of the split (default %(default)s)")  # fmt: skip
    p.add_argument(
        "--repeats",
        type=int,
        default=10,
        metavar="R",
        help="independent estimates per point and K, at least 2 (default %(default)s)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="log weights from compiled graphs, one per estimator and K (the same numbers) "
        "(default: eager)",
    )
    _add_run_options(p, out_help="folder for the files (default: RUN_DIR)")
    _add_launch_options(p)
    p.set_defaults(run=_run_convergence)


def _run_convergence(args) -> int:
    from pyro_vae.analysis.convergence import convergence_study

    summary = convergence_study(
        args.run_dir,
        ks=args.ks,
        estimators=args.estimators,
        num_points=args.points,
        repeats=args.repeats,
        compile=args.compile,
        ais_chains=args.ais_chains,
        leapfrog_steps=args.leapfrog_steps,
        step_size=args.step_size,
        ais_proposal=args.ais_proposal,
        **_run_options(args),
    )
    if not world().is_main:  # rank 0 of a sharded study prints
        return 0
    print(json.dumps(summary.to_dict()) if args.json else summary.summary())
    return 0


def _add_gradvar(subparsers) -> None:
    p = subparsers.add_parser(
        "gradvar",
        help="variance and SNR of gradient estimators (reparameterized, score function, "
        "baselines, STL, IWAE, DReG, VIMCO)",
        description="On one fixed minibatch of a trained run, draw --num-draws gradients of "
        "the loss per estimator and report the per-coordinate variance and signal-to-noise "
        "ratio, averaged over the pair's parameters; write gradvar.json and gradvar.png. "
        "With --snr-vs-k, the encoder's and decoder's SNR of iwae and iwae-dreg against K "
        "instead (gradvar_snr_k.json and .png).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    p.add_argument(
        "--estimators",
        type=_comma_list(str),
        default=None,
        metavar="E1,E2",
        help=f"from {', '.join(GRADIENT_ESTIMATORS)} (default: all; rows that cannot run "
        "on the pair are left out with a note; with --snr-vs-k: iwae,iwae-dreg)",
    )
    p.add_argument(
        "--num-particles",
        type=int,
        default=DEFAULT_NUM_PARTICLES,
        metavar="K",
        help="particles per point of the K-particle bounds iwae, iwae-dreg and vimco (the "
        "other rows draw one z per point) (default %(default)s)",
    )
    p.add_argument(
        "--snr-vs-k",
        action="store_true",
        help="encoder and decoder SNR against K for iwae and iwae-dreg (Rainforth et al. "
        "2018's figure), at --ks",
    )
    p.add_argument(
        "--ks",
        type=_comma_list(int),
        default=list(DEFAULT_KS),
        metavar="K1,K2",
        help="the K of --snr-vs-k (default %(default)s)",
    )
    p.add_argument(
        "--num-draws",
        type=int,
        default=100,
        metavar="N",
        help="gradient draws per estimator, at least 2 (default %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=100,
                   help="the first B points of the split form the minibatch (default "
                   "%(default)s)")  # fmt: skip
    p.add_argument(
        "--baseline-steps",
        type=int,
        default=200,
        metavar="S",
        help="draws that warm a baseline up before it is measured (default %(default)s)",
    )
    _add_run_options(p, split="train", out_help="folder for the files (default: RUN_DIR)")
    p.set_defaults(run=_run_gradvar)


def _run_gradvar(args) -> int:
    from pyro_vae.analysis.gradvar import gradient_variance, without_groups

    if args.snr_vs_k:
        from pyro_vae.analysis.snr_k import DEFAULT_SNR_ESTIMATORS, snr_against_k

        result = snr_against_k(
            args.run_dir,
            ks=args.ks,
            estimators=args.estimators or DEFAULT_SNR_ESTIMATORS,
            num_draws=args.num_draws,
            batch_size=args.batch_size,
            **_run_options(args),
        )
        print(json.dumps(result.to_dict()) if args.json else result.summary())
        return 0
    result = gradient_variance(
        args.run_dir,
        estimators=args.estimators,
        num_draws=args.num_draws,
        batch_size=args.batch_size,
        num_particles=args.num_particles,
        baseline_steps=args.baseline_steps,
        **_run_options(args),
    )
    if args.json:
        print(json.dumps(jsonable(without_groups(result))))
    else:
        print(result.summary())
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
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--points", type=int, metavar="N", help="the first N points (default 20)")
    which.add_argument(
        "--indices", type=_comma_list(int), metavar="I,J,...",
        help="these indices of the split instead of --points (default: the first --points)",
    )  # fmt: skip
    p.add_argument("--num-samples", type=int, default=1000, metavar="S",
                   help="draws from q(z|x) per point (default %(default)s)")  # fmt: skip
    p.add_argument("--nuts", action="store_true", help="also run NUTS for a reference p(z|x)")
    p.add_argument("--nuts-chains", type=int, default=4, metavar="C",
                   help="NUTS chains per point, at least 2 (default %(default)s)")  # fmt: skip
    p.add_argument("--nuts-warmup", type=int, default=200, metavar="W",
                   help="NUTS warm-up steps per chain (default %(default)s)")  # fmt: skip
    p.add_argument("--nuts-samples", type=int, default=200, metavar="M",
                   help="NUTS draws per chain (default %(default)s)")  # fmt: skip
    p.add_argument("--gap-steps", type=int, default=200, metavar="T",
                   help="Adam steps fitting q* per point (default %(default)s)")  # fmt: skip
    p.add_argument("--gap-lr", type=float, default=1e-2, metavar="LR",
                   help="Adam step size of that fit (default %(default)s)")  # fmt: skip
    p.add_argument("--gap-particles", type=int, default=8, metavar="P",
                   help="draws per step of that fit (default %(default)s)")  # fmt: skip
    p.add_argument(
        "--compile",
        action="store_true",
        help="draw from q(z|x) and compute the importance weights (q's and q*'s) with "
        "compiled graphs of the pair's programs (the same numbers) (default: eager)",
    )
    _add_run_options(p, out_help="folder for the files (default RUN_DIR/diagnose)")
    _add_launch_options(p)
    p.set_defaults(run=_run_diagnose)


def _run_diagnose(args) -> int:
    from pyro_vae.analysis.diagnose import diagnose

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
        print(json.dumps(summary.to_dict()) if args.json else summary.summary(), flush=True)
        attach(args.run_dir, "diagnose", summary)  # into the run's TensorBoard/MLflow, if any
    # rank 0 goes on alone after the shared draws (gaps, NUTS): the others leave now
    world().close(wait=False)
    return 0


def _add_sample(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="PNG of data, reconstructions and prior samples (images, or a heatmap and CSV)",
        description="Draw test points, their reconstructions E[x|z] with z ~ q(z|x) and "
        "samples E[x|z] with z ~ p(z). Images come as a grid; a model that observes part of "
        "an image (the lower half given the upper) as whole images, the drawn part outlined "
        "beside its input; vectors (counts, features) as a heatmap, their values also in a "
        "CSV beside the PNG (FILE.csv).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by pyro-vae train")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="the PNG to write (required); vectors also get FILE.csv")  # fmt: skip
    p.add_argument("--num", type=int, default=10,
                   help="points per row: data, reconstructions, samples (default 10)")  # fmt: skip
    p.add_argument("--split", choices=("test", "valid", "train"), default="test",
                   help="the split the data rows come from (default test)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the draws: same seed, same figure (default 0)")  # fmt: skip
    p.add_argument("--checkpoint", choices=("best.pt", "checkpoint.pt"), default="best.pt",
                   help="the weights: best validation ELBO, or the last saved (default "
                   "best.pt)")  # fmt: skip
    p.add_argument("--device", help="where to run, e.g. cpu or cuda (default: the run's device)")
    p.add_argument(
        "--label",
        type=int,
        metavar="K",
        help="a conditional pair: samples of class K only (default: one row per class)",
    )
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object: the rows, layout and files written "
                   "(default: a line naming the files)")  # fmt: skip
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from pyro_vae.analysis import sampling

    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(
            f"--out {args.out!r} is a folder; name the PNG file to write, e.g. "
            f"{str(out / 'samples.png')!r}"
        )
    prepare_run_dir(out.parent)
    # the Samples, with the files it wrote: png, and csv for vectors
    files = sampling.sample_figure(args.run_dir, out, num=args.num, split=args.split,
                                   seed=args.seed, device=args.device,
                                   checkpoint=args.checkpoint, label=args.label,
                                   with_result=True)  # fmt: skip
    if args.json:
        print(json.dumps(jsonable(dict(files))))
    else:
        print("wrote " + " and ".join(files[key] for key in ("png", "csv") if key in files))
    return 0


def _add_latents(subparsers) -> None:
    p = subparsers.add_parser(
        "latents",
        help="2-D map of E_q[z|x] over a split, coloured by label (PNG and CSV)",
        description="Project the guide's mean E_q[z|x] of every point of a split to two "
        "dimensions (PCA or t-SNE) and draw it, one colour per class label; writes "
        "latents_<split>_<method>.png, .csv (coordinates and the means) and .json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    _add_run_options(p, out_help="folder to write into (default RUN_DIR/latents)")
    p.add_argument("--method", choices=("pca", "tsne"), default="pca",
                   help="the projection to 2-D (default %(default)s)")  # fmt: skip
    p.add_argument("--limit", type=int, metavar="N",
                   help="only the first N points (default: all)")  # fmt: skip
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
        print(json.dumps(summary.to_dict()))
    else:
        print(f"wrote {summary['png']} and {summary['csv']} ({summary['num_points']} points, "
              f"site {summary['site']!r}, {summary['latent_dims']} dims)")  # fmt: skip
    return 0
