"""``pyro-vae list``: the built-in data sets, pairs, objectives and log p(x) estimators."""

from __future__ import annotations

from pyro_vae.data import DATASETS
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.infer.objectives import OBJECTIVES
from pyro_vae.pairs import PAIRS


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
