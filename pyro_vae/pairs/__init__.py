"""Model/guide pairs: the contract a pair must meet and its check, loading users' pair files,
the built-in pairs, records of pair objects, and how programs take labels.

A *pair* is any object with two Pyro programs ``model(x)`` and ``guide(x)`` over a batch
``x`` of shape ``(B, D)``, the contract of Pyro's tutorial VAE. Built-in pairs are listed in
:data:`PAIRS`, one factory per name; a user pair is named ``FILE.py:NAME`` or
``package.module:NAME`` and built with keyword arguments. :func:`check_pair` traces a pair
once before training and reports, by site name, what would otherwise fail deep inside Pyro.
"""

from pyro_vae.pairs.arguments import (
    INPUT_SHAPE_NAMES,
    INPUT_SIZE_NAMES,
    NUM_CLASSES_NAMES,
    input_arguments,
)
from pyro_vae.pairs.build import FLOW_KWARGS, PRIOR_KWARGS, build_pair
from pyro_vae.pairs.builtin import PAIRS, VAE, ConditionalVAE, PairSpec, SemiSupervisedVAE
from pyro_vae.pairs.check import PairInfo, check_pair
from pyro_vae.pairs.errors import PairError
from pyro_vae.pairs.loading import (
    LIBRARY_PACKAGES,
    check_pair_factory,
    check_program,
    load_object,
    resolve_spec,
    user_module_name,
)
from pyro_vae.pairs.networks import (
    FunctionPair,
    evaluation_mode,
    pair_modules,
    pair_to,
    set_training_mode,
)
from pyro_vae.pairs.records import PairRecord, parameter_shapes, record_pair
from pyro_vae.pairs.sites import PARTICLE_PLATE, data_plate_dim, describe_plates, is_sample_site

__all__ = [
    "ConditionalVAE",
    "FLOW_KWARGS",
    "FunctionPair",
    "INPUT_SHAPE_NAMES",
    "INPUT_SIZE_NAMES",
    "LIBRARY_PACKAGES",
    "NUM_CLASSES_NAMES",
    "PAIRS",
    "PARTICLE_PLATE",
    "PRIOR_KWARGS",
    "PairError",
    "PairInfo",
    "PairRecord",
    "PairSpec",
    "SemiSupervisedVAE",
    "VAE",
    "build_pair",
    "check_pair",
    "check_pair_factory",
    "check_program",
    "data_plate_dim",
    "describe_plates",
    "evaluation_mode",
    "input_arguments",
    "is_sample_site",
    "load_object",
    "pair_modules",
    "pair_to",
    "parameter_shapes",
    "record_pair",
    "resolve_spec",
    "set_training_mode",
    "user_module_name",
]
