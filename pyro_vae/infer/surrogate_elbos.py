"""STL, DReG and VIMCO as Pyro ELBO objects: ``SVI(model, guide, optim, loss=IWAE_DReG(...))``.

Each wraps the surrogate of :mod:`pyro_vae.infer.surrogates` in Pyro's ``ELBO`` interface, so
a user's own ``SVI.step`` loop, ``pyro-vae train --objective``, the data-parallel step (which
sums the gradients ``loss_and_grads`` leaves in ``.grad``) and ``gradvar`` all take them:

- ``loss`` returns minus the bound (the ELBO for :class:`STL_ELBO`, the IWAE bound for the
  others), as Pyro's ELBOs do;
- ``loss_and_grads`` also leaves the estimator's gradient in the parameters' ``.grad``;
- ``differentiable_loss`` returns the surrogate itself, for a hand-written loop with
  ``torch.optim`` (its value is minus the bound).

``modules``: the networks of the guide, whose parameters the stopped guide detaches (STL,
DReG). A guide that is a method of an ``nn.Module`` (``pair.guide``), an ``AutoGuide`` or a
``PyroModule`` is found by itself, and ``pyro.param`` values are always stopped. The first
call checks that nothing the stopped guide computes reaches a parameter, and refuses the guide
with a message otherwise, rather than returning the ordinary gradient under the name STL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro.infer
from torch import nn

from pyro_vae.infer.surrogates import STOPPED, Surrogate, check_stopped, guide_modules, surrogate


class SurrogateELBO(pyro.infer.ELBO):
    """The ELBO interface over a surrogate of :mod:`pyro_vae.infer.surrogates`; the subclasses
    name the objective."""

    objective = ""

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1,
                 vectorize_particles: bool = True,
                 modules: Sequence[nn.Module] = ()) -> None:  # fmt: skip
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles)  # fmt: skip
        self.modules = list(modules)
        self._checked: set[int] = set()

    def surrogate(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Surrogate:
        """The :class:`~pyro_vae.infer.surrogates.Surrogate` of one call on ``args``."""
        if kwargs:
            model, guide = _bound(model, kwargs), _bound(guide, kwargs)
        if self.objective in STOPPED and id(guide) not in self._checked:
            check_stopped(guide, args, guide_modules(guide, self.modules), self.objective)
            self._checked.add(id(guide))
        return surrogate(self.objective, model, guide, args, num_particles=self.num_particles,
                         max_plate_nesting=self.max_plate_nesting,
                         vectorize=self.vectorize_particles, modules=self.modules)  # fmt: skip

    def _get_trace(self, model, guide, args, kwargs):  # Pyro's abstract hook; unused here
        raise NotImplementedError(f"{type(self).__name__} forms its loss from its own traces")

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return -float(self.surrogate(model, guide, *args, **kwargs).bound)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        return self.surrogate(model, guide, *args, **kwargs).loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


def _bound(fn: Callable, kwargs: dict) -> Callable:
    def call(*args: Any) -> Any:
        return fn(*args, **kwargs)

    return call


class STL_ELBO(SurrogateELBO):  # noqa: N801 - Pyro's naming (Trace_ELBO)
    """The ELBO with the sticking-the-landing gradient (Roeder et al. 2017): log q evaluated
    with the guide's parameters stopped. Every guide site must be reparameterized."""

    objective = "stl"


class IWAE_DReG(SurrogateELBO):  # noqa: N801 - Pyro's naming (Trace_ELBO)
    """The IWAE bound with doubly reparameterized guide gradients (Tucker et al. 2019), K =
    ``num_particles``. Every guide site must be reparameterized."""

    objective = "iwae-dreg"


class VIMCO(SurrogateELBO):
    """The IWAE bound with VIMCO's leave-one-out baselines for the guide's sites that are not
    reparameterized (Mnih & Rezende 2016); K = ``num_particles`` >= 2. On a batch where every
    site is reparameterized (a labelled batch of a semi-supervised pair) it is the IWAE bound
    with its reparameterized gradient; ``pyro-vae train`` refuses a guide with no such site
    on its probe batch."""

    objective = "vimco"


__all__ = ["IWAE_DReG", "STL_ELBO", "SurrogateELBO", "VIMCO"]
