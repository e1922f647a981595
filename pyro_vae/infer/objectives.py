"""Training objectives by name: Pyro's ELBO estimators, one entry each in :data:`OBJECTIVES`.

- ``elbo``: ``Trace_ELBO``, reparameterized where the guide allows (Kingma & Welling 2014).
- ``meanfield``: ``TraceMeanField_ELBO``, analytic KL terms where they exist.
- ``tracegraph``: ``TraceGraph_ELBO``, Rao-Blackwellized score-function terms with baselines
  for non-reparameterizable sites (Mnih & Gregor 2014; Schulman et al. 2015).
- ``iwae``: ``RenyiELBO(alpha=0)``, the importance-weighted bound L_K (Burda et al. 2016).
- ``renyi``: ``RenyiELBO(alpha)``, the variational Renyi bound (Li & Turner 2016).
- ``enum``: ``TraceEnum_ELBO`` with the guide's discrete sites enumerated (``--enumerate
  parallel|sequential``): small discrete latents summed out exactly, not sampled (Kingma et
  al. 2014 sum over the label y of M2 the same way).
- ``stl``: the ELBO with the sticking-the-landing gradient, log q at the guide's parameters
  stopped (Roeder et al. 2017).
- ``iwae-dreg``: the IWAE bound with doubly reparameterized guide gradients (Tucker et al.
  2019).
- ``vimco``: the IWAE bound with leave-one-out baselines for sites that are not
  reparameterized (Mnih & Rezende 2016).

The last three are not in Pyro: :mod:`pyro_vae.infer.surrogate_elbos` gives them Pyro's ELBO
interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro.infer
from torch import nn

from pyro_vae.infer.surrogate_elbos import STL_ELBO, VIMCO, IWAE_DReG


class ObjectiveError(ValueError):
    """An objective name or setting that does not exist; the message names the flag."""


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective: a Pyro ELBO class and how it takes alpha (Renyi bounds only).

    ``alpha`` is a fixed alpha (``iwae``: 0), ``uses_alpha`` takes it from ``--alpha``.
    """

    elbo: type[pyro.infer.ELBO]
    description: str
    alpha: float | None = None
    uses_alpha: bool = False
    enumerates: bool = False  # the guide's discrete sites are configured for enumeration
    stops_guide: bool = False  # evaluates log q with the guide's parameters stopped (modules)
    min_particles: int = 1


#: The objectives by name. A new objective is one entry here; tests iterate over this table.
OBJECTIVES: dict[str, ObjectiveSpec] = {
    "elbo": ObjectiveSpec(
        pyro.infer.Trace_ELBO, "Trace_ELBO: the ELBO, reparameterized where possible"
    ),
    "meanfield": ObjectiveSpec(
        pyro.infer.TraceMeanField_ELBO, "TraceMeanField_ELBO: ELBO with analytic KL"
    ),
    "tracegraph": ObjectiveSpec(
        pyro.infer.TraceGraph_ELBO, "TraceGraph_ELBO: score function with baselines"
    ),
    "iwae": ObjectiveSpec(
        pyro.infer.RenyiELBO, "RenyiELBO(alpha=0): the IWAE bound with K = num_particles", 0.0
    ),
    "renyi": ObjectiveSpec(
        pyro.infer.RenyiELBO, "RenyiELBO(alpha): the Renyi bound", uses_alpha=True
    ),
    "enum": ObjectiveSpec(
        pyro.infer.TraceEnum_ELBO,
        "TraceEnum_ELBO: discrete guide sites summed out exactly (--enumerate)",
        enumerates=True,
    ),
    "stl": ObjectiveSpec(
        STL_ELBO,
        "the ELBO with the sticking-the-landing gradient (log q at stopped params)",
        stops_guide=True,
    ),
    "iwae-dreg": ObjectiveSpec(
        IWAE_DReG,
        "the IWAE bound with doubly reparameterized guide gradients (DReG)",
        stops_guide=True,
    ),
    "vimco": ObjectiveSpec(
        VIMCO,
        "the IWAE bound with VIMCO's leave-one-out baselines (score-function sites)",
        min_particles=2,
    ),
}

#: ``--enumerate`` values: Pyro's enumeration strategies for ``config_enumerate``.
ENUMERATE_STRATEGIES = ("parallel", "sequential")


def enumerated_guide(guide: Callable, strategy: str = "parallel") -> Callable:
    """``guide`` with every discrete site that has a finite support marked for enumeration
    (``pyro.infer.config_enumerate``), as ``--objective enum`` trains it."""
    if strategy not in ENUMERATE_STRATEGIES:
        raise ObjectiveError(
            f"--enumerate {strategy!r} is unknown; choose from {', '.join(ENUMERATE_STRATEGIES)}"
        )
    return pyro.infer.config_enumerate(guide, default=strategy)


def make_objective(
    name: str,
    num_particles: int = 1,
    *,
    vectorize: bool = True,
    max_plate_nesting: int = 1,
    alpha: float = 0.5,
    modules: Sequence[nn.Module] = (),
) -> pyro.infer.ELBO:
    """Build the Pyro ELBO object for objective ``name`` (see :data:`OBJECTIVES`).
    ``modules``: the pair's networks, which ``stl`` and ``iwae-dreg`` stop in the guide's
    log q (a guide that is a method of a module finds its own)."""
    if name not in OBJECTIVES:
        raise ObjectiveError(
            f"--objective {name!r} is unknown; choose from {', '.join(OBJECTIVES)}"
        )
    if num_particles < 1:
        raise ObjectiveError(f"--num-particles must be >= 1, got {num_particles}")
    spec = OBJECTIVES[name]
    if num_particles < spec.min_particles:
        raise ObjectiveError(
            f"--objective {name} needs --num-particles >= {spec.min_particles}: its baseline "
            f"for each particle is formed from the others (got {num_particles})"
        )
    if spec.elbo in (STL_ELBO, IWAE_DReG, VIMCO):
        return spec.elbo(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize,
                         modules=modules if spec.stops_guide else ())  # fmt: skip
    if spec.uses_alpha and alpha == 1.0:
        raise ObjectiveError("--alpha 1 is the ELBO itself; use --objective elbo instead")
    kwargs = {}
    if spec.enumerates:
        # a labelled batch of a semi-supervised pair has no discrete site to enumerate
        kwargs["strict_enumeration_warning"] = False
    if spec.uses_alpha or spec.alpha is not None:
        kwargs["alpha"] = alpha if spec.uses_alpha else spec.alpha
    return spec.elbo(
        num_particles=num_particles,
        vectorize_particles=vectorize and num_particles > 1,
        max_plate_nesting=max_plate_nesting,
        **kwargs,
    )
