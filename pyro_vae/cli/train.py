"""``pyro-vae train``: its flags (the keys of a run's config) and the command that resolves
them with ``--config`` and trains."""

from __future__ import annotations

import argparse

from pyro_vae.cli.options import _add_launch_options, _comma_list, _json_object
from pyro_vae.data import BINARIZATIONS, DATASETS
from pyro_vae.data.images import IMAGE_MODES
from pyro_vae.data.lazy import LAZY_MODES
from pyro_vae.infer.compiled import COMPILE_MODES
from pyro_vae.infer.distributed import world
from pyro_vae.infer.gradients import BASELINES
from pyro_vae.infer.objectives import ENUMERATE_STRATEGIES, OBJECTIVES
from pyro_vae.infer.optimizers import IWAE_EPOCHS, OPTIMIZERS, SCHEDULES
from pyro_vae.pairs import PAIRS
from pyro_vae.pairs.label_encoding import CLASSIFY_LOSS_CHOICES, LABEL_ENCODING_CHOICES
from pyro_vae.runs.config import (
    FIELDS,
    PIXEL_SCALE_CHOICES,
    ConfigError,
    TrainConfig,
    load_toml,
    resolve,
)

#: The defaults the help texts show (flags default to None, so that --config can set them).
_DEFAULT = TrainConfig()


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a VAE by SVI and write a run directory",
        description="Train a model/guide pair by SVI. Flags override --config; unset flags "
        "take the config file's value, then the data set's default.",
    )
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file with the same keys as the flags, e.g. a run's config.toml (default: "
        "none, the flags and their defaults)",
    )
    p.add_argument(
        "--dataset",
        help=f"data set name ({', '.join(DATASETS)}), a .npy/.npz/.csv path, or a folder of "
        f"PNG/JPEG images (class subfolders give labels) (default {_DEFAULT.dataset})",
    )
    p.add_argument(
        "--data-dir",
        help="root holding the data files (default: $PYRO_VAE_DATA_DIR, then the cache)",
    )
    p.add_argument(
        "--download",
        action="store_const",
        const=True,
        default=None,
        help="download missing data files (checksum-verified) into the cache",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="with --download: fetch the files from this mirror (default: each data set's "
        "own address)",
    )
    p.add_argument("--binarize", choices=BINARIZATIONS, help="default: the data set's")
    p.add_argument(
        "--pair",
        help=f"built-in ({', '.join(PAIRS)}), FILE.py:NAME or module:NAME (default: the data "
        "set's, mlp for most)",
    )
    p.add_argument(
        "--pair-kwargs",
        type=_json_object,
        metavar="JSON",
        help="keyword arguments for the pair, e.g. '{\"z_dim\": 50}'; input sizes (x_dim, "
        "input_dim, ...) are filled from the data (default: {}, the pair's own defaults)",
    )
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="model function, FILE.py:NAME or module:NAME, with --guide (default: --pair)",
    )
    p.add_argument(
        "--guide",
        metavar="SPEC",
        help="guide function, FILE.py:NAME or module:NAME, with --model (default: --pair)",
    )
    p.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        help="the loss SVI minimizes; `pyro-vae list` describes each (default "
        f"{_DEFAULT.objective})",
    )
    p.add_argument(
        "--num-particles",
        type=int,
        metavar="K",
        help=f"samples of z per data point and step (default {_DEFAULT.num_particles})",
    )
    p.add_argument(
        "--alpha",
        type=float,
        help=f"Renyi alpha for --objective renyi (default {_DEFAULT.alpha})",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="passes over the training set "
        + (
            f"(default {_DEFAULT.epochs})"
            if _DEFAULT.epochs is not None
            else "(default: the data set's own for its default pair, else 10)"
        ),
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"data points per SVI step (default {_DEFAULT.batch_size})",
    )
    p.add_argument(
        "--lr", type=float, help=f"learning rate of the optimizer (default {_DEFAULT.lr:g})"
    )
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
    p.add_argument(
        "--lr-min",
        type=float,
        help="rate the cosine schedule reaches after the last epoch, as torch's "
        "CosineAnnealingLR(eta_min) (default 0)",
    )
    p.add_argument(
        "--valid-size",
        type=int,
        metavar="N",
        help="validation rows, taken from the end of train + valid (default: the "
        "data set's split, 10000 for MNIST); 0 trains on all of them and best.pt is "
        "the last epoch",
    )
    p.add_argument(
        "--seed",
        type=int,
        help=f"seed of every random draw, 0 to 2**32-1 (default {_DEFAULT.seed})",
    )
    p.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="run directory to write (required: here, or as out in --config)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--train-limit",
        type=int,
        metavar="N",
        help="train on the first N points only (default: all)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="also checkpoint every N SVI steps inside an epoch (default 0: at epoch ends); "
        "a resumed run continues from the step, bit for bit",
    )
    _add_log_options(p)
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
        + "; ".join(f"{name}: {spec.description}" for name, spec in BASELINES.items())
        + f" (default {_DEFAULT.baseline})",
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
        "over N SVI steps (default: the data set's recipe when no pair is named, 2000 on digits; "
        "otherwise 0, no warm-up)",
    )
    p.add_argument(
        "--kl-warmup-start",
        type=float,
        metavar="B0",
        help="latent weight at the first step of --kl-warmup (default 0)",
    )
    p.add_argument(
        "--label-encoding",
        choices=LABEL_ENCODING_CHOICES,
        help="labels as the pair's programs receive them: class indices (B,), one-hot rows "
        "(B, C), or auto: index, else onehot, whichever the programs take on a probe batch; "
        "the choice is noted and recorded in config.toml (default auto)",
    )
    p.add_argument(
        "--num-labelled",
        type=int,
        metavar="N",
        help="keep the labels of N training points, the same number per class, chosen with "
        "--seed; 0 trains a pair whose labels are optional (model(x, y=None)) without any "
        "(default: all, for a pair whose programs take labels)",
    )
    p.add_argument(
        "--labelled-batches",
        type=int,
        metavar="L",
        help="labelled batches per epoch, spread evenly among the unlabelled ones (default: "
        "one pass over the labelled points)",
    )
    p.add_argument(
        "--classify-loss",
        choices=CLASSIFY_LOSS_CHOICES,
        help="train the pair's classification loss (model_classify/guide_classify, as in "
        "Pyro's semi-supervised example) on labelled batches, or not (default: on for a pair "
        "that defines them and trains with labels)",
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
    _add_data_source_options(p)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    _add_launch_options(p)
    p.set_defaults(run=_run_train)  # fmt: skip


def _add_data_source_options(p) -> None:
    """Flags of image folders, .csv tables and memory-mapped sets (pyro_vae.data.sources)."""
    p.add_argument(
        "--image-size",
        metavar="N|HxW",
        help="image folder: resize every image to N x N or H x W pixels (default: the size "
        "the images share; required when they differ)",
    )
    p.add_argument(
        "--image-mode",
        choices=IMAGE_MODES,
        help="image folder: grey (1 channel) or rgb (3); auto: grey when every image is "
        "(default auto)",
    )
    p.add_argument(
        "--valid-fraction",
        type=float,
        metavar="F",
        help="image folder or .csv table without its own split: fraction of the points held "
        "out for validation, drawn with --seed (default 0.1)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        metavar="F",
        help="the same for the test split (default 0.1)",
    )
    p.add_argument(
        "--label-column",
        metavar="NAME",
        help=".csv table: the column of class labels (a header name, or a 0-based index "
        "without a header); integers or strings, numbered in sorted order (default: none)",
    )
    p.add_argument(
        "--lazy",
        nargs="?",
        const="on",
        choices=LAZY_MODES,
        help="memory-map a .npy file or an image folder's decoded cache instead of loading "
        "it: on, off, or auto (when it passes a quarter of the memory available; default)",
    )


def _add_log_options(p) -> None:
    """--log and the settings of its loggers (pyro_vae.runs.loggers)."""
    p.add_argument(
        "--log",
        type=_comma_list(str),
        metavar="LOGGERS",
        help="where the run's numbers go, comma-separated: csv (metrics.csv and metrics.png, "
        "always written: resume and every analysis read them), tensorboard (event files in "
        "RUN/tensorboard), mlflow (an MLflow run; see --mlflow-uri); e.g. --log "
        "csv,tensorboard,mlflow. Each epoch's metrics, the KL per latent dimension, sample "
        "grids and the config as hyperparameters (default csv)",
    )
    p.add_argument(
        "--log-images-every",
        type=int,
        metavar="N",
        help="a grid of prior samples every N epochs and at the last, for image data, to "
        f"tensorboard/mlflow (0: none; default {_DEFAULT.log_images_every})",
    )
    p.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="MLflow tracking URI: sqlite:///FILE.db, a server http://HOST:PORT, ... (default: "
        "$MLFLOW_TRACKING_URI, else sqlite:///PARENT/mlflow.db in the folder holding --out, "
        "one store for its runs); the run's id is kept in RUN/mlflow_run.json",
    )
    p.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help=f"MLflow experiment, created if missing (default {_DEFAULT.mlflow_experiment})",
    )


def _run_train(args) -> int:
    from pyro_vae.training.train import read_config, train

    file_values = load_toml(args.config) if args.config is not None else {}
    flags = {name: getattr(args, name, None) for name in FIELDS}
    if args.resume and args.out and args.config is None:
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
