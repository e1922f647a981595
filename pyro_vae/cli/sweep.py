"""``pyro-vae sweep``: a hyperparameter search with Optuna over a space file, each trial a
run directory, shared by workers and machines through one storage."""

from __future__ import annotations

import argparse
import textwrap

from pyro_vae.sweeps.objective import METRICS
from pyro_vae.sweeps.workers import STARTUP_TRIALS

_SPACE_HELP = textwrap.dedent(
    """\
    SPACE.toml holds fixed train settings under [train] and distributions under [params]
    (keys as in a run's config.toml; dashes as in the flags work too):

      [train]
      dataset = "digits"
      epochs = 5
      train_limit = 500

      [params]
      beta = {low = 0.5, high = 4.0, log = true}     # float range, log-uniform
      lr = {low = 1e-4, high = 1e-2, log = true}
      batch_size = {low = 50, high = 200, step = 50}  # int range with a step
      objective = {choices = ["elbo", "iwae"]}

      [params.pair_kwargs]                            # the pair's keyword arguments
      z_dim = {choices = [2, 8, 16]}
      hidden = {choices = [[64], [128, 64]]}

    Each trial is a run directory SWEEP_DIR/trial-NNNN, pruned by a median pruner on its
    valid ELBO after each epoch past the first half of its epochs (--prune-warmup). Run the
    same command again to continue a killed sweep; on other machines, the same --storage and
    --study add workers to the same study.
    """
)


def _add_sweep(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="search hyperparameters with Optuna (needs pyro-vae[optuna])",
        description="Search train settings and pair arguments with Optuna, maximizing a "
        "validation metric.",
        epilog=_SPACE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("space", metavar="SPACE.toml", help="the search space (see below)")
    p.add_argument(
        "--trials", type=int, required=True, help="finished trials (complete or pruned) wanted"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine, each with cores/W torch threads (default 1)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="where the study lives: sqlite:///PATH.db, any SQLAlchemy URL "
        "(postgresql://user:password@host/db) or journal:PATH (default: SQLite at "
        "SWEEP_DIR/sweep.db)",
    )
    p.add_argument("--study", metavar="NAME", help="the study's name (default: SWEEP_DIR's name)")
    p.add_argument(
        "--out", metavar="SWEEP_DIR", default="sweep", help="the sweep's folder (default sweep)"
    )
    p.add_argument(
        "--metric",
        choices=METRICS,
        default="valid-elbo",
        help="what is maximized: the run's best valid ELBO, or IS log p(x) of the validation "
        "split at best.pt (default valid-elbo)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=100,
        help="importance samples per point for --metric valid-log-px (default 100)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--prune-startup", metavar="N", type=int, default=STARTUP_TRIALS,
                   help="completed trials before the median pruner starts "
                   f"(default {STARTUP_TRIALS})")  # fmt: skip
    p.add_argument("--prune-warmup", metavar="E", type=int, default=None,
                   help="epochs of a trial that are never pruned (default: half its epochs; "
                   "slow starters, e.g. more latent dimensions, are not cut early)")  # fmt: skip
    p.add_argument(
        "--no-prune", dest="prune", action="store_false", help="train every trial to its end"
    )
    p.set_defaults(run=_run_sweep)


def _run_sweep(args) -> int:
    from pyro_vae.sweeps import sweep

    try:
        result = sweep(
            args.space,
            trials=args.trials,
            workers=args.workers,
            storage=args.storage,
            study=args.study,
            out=args.out,
            metric=args.metric,
            num_samples=args.num_samples,
            seed=args.seed,
            prune=args.prune,
            prune_startup=args.prune_startup,
            prune_warmup=args.prune_warmup,
        )
    except KeyboardInterrupt as interrupt:  # not train's hint: the sweep resumes as it began
        raise KeyboardInterrupt(
            "interrupted; running trials keep their checkpoints; run the same command again "
            "to continue the sweep"
        ) from interrupt
    print(result.summary())
    return 0
