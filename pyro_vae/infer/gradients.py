"""Gradient estimators of the ELBO: reparameterized, score function, and score function with
baselines, one entry each in :data:`GRADIENT_ESTIMATORS`; with them the estimators of the
objectives Pyro lacks (``stl``, and the K-particle bounds ``iwae``, ``iwae-dreg``, ``vimco``
of :mod:`pyro_vae.infer.objectives`), so ``gradvar`` measures them side by side.

For a guide q_phi(z|x) the gradient of the ELBO L = E_q[log p(x, z) - log q_phi(z|x)] has two
unbiased Monte-Carlo estimators. The *reparameterized* one differentiates through
z = g_phi(eps, x) (Kingma & Welling 2014); the *score-function* (REINFORCE) one needs only
log q_phi(z|x):

    grad_phi L = E_q[(log p(x, z) - log q_phi(z|x) - b(x)) grad_phi log q_phi(z|x)],

unbiased for any baseline b(x) that does not depend on z, and of lower variance the closer
b(x) is to the expected learning signal (Williams 1992; Mnih & Gregor 2014). Pyro's
``TraceGraph_ELBO`` builds this estimator, Rao-Blackwellized, for every guide site that is not
reparameterizable, and reads a baseline from ``site["infer"]["baseline"]``.

- :func:`score_function` makes every latent site of any guide non-reparameterizable, so the
  very same model/guide pair trains (or is measured) by the score-function estimator.
- :func:`with_baseline` attaches a baseline from :data:`BASELINES` to a guide's sites: a
  decaying average of the learning signal, or a :class:`NeuralBaseline` b_psi(x) trained by
  Pyro to minimize (signal - b_psi(x))^2 (NVIL's input-dependent baseline).

References:
    Williams (1992), Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning.
    Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    Schulman, Heess, Weber & Abbeel (2015), Gradient Estimation Using Stochastic
    Computation Graphs.
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions.transforms as T
import pyro.infer
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.distributions.transforms.planar import ConditionedPlanar
from pyro.distributions.transforms.radial import ConditionedRadial
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import get_plates
from pyro.poutine.subsample_messenger import _Subsample
from torch import Tensor, nn

from pyro_vae.infer.objectives import make_objective
from pyro_vae.nn import mlp
from pyro_vae.pairs import is_sample_site

__all__ = [
    "AVG_BASELINE_PREFIX",
    "BASELINES",
    "BASELINE_MODULE",
    "GRADIENT_ESTIMATORS",
    "BaselineSpec",
    "GradientEstimatorSpec",
    "NeuralBaseline",
    "NonReparameterized",
    "ScoreFunctionMessenger",
    "forget_baselines",
    "forget_stale_optimizers",
    "neural_baselines",
    "non_reparameterized_sites",
    "score_function",
    "with_baseline",
]

#: Name under which :func:`with_baseline` registers a neural baseline with ``pyro.module``;
#: its parameters are ``baseline$$$...`` in the param store (and so in checkpoints).
BASELINE_MODULE = "baseline"
#: Prefix of the param-store entry where ``TraceGraph_ELBO`` keeps a site's decaying average
#: (``pyro/infer/tracegraph_elbo.py::_construct_baseline``), one value per data point.
AVG_BASELINE_PREFIX = "__baseline_avg_downstream_cost_"


_NO_SHAPE = torch.Size()


#: Pyro's transforms with no closed-form inverse: they score only draws they made themselves.
_NO_INVERSE = (T.Planar, ConditionedPlanar, T.Radial, ConditionedRadial, T.Sylvester)


def _transform_without_inverse(fn: Any) -> Any:
    """The first transform of a (possibly Independent-wrapped) TransformedDistribution that
    has no inverse, or None."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.TransformedDistribution):
        for transform in fn.transforms:
            if isinstance(transform, _NO_INVERSE):
                return transform
    return None


def score_function_blocker(guide: Callable, *args, **kwargs) -> str | None:
    """Why the score function cannot run on ``guide`` (a site whose flow has no inverse), or
    None. One trace of the guide, without gradients."""
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            transform = _transform_without_inverse(site["fn"])
            if transform is not None:
                return (
                    f"site {name!r} goes through a {type(transform).__name__} transform, which "
                    "has no inverse: the score function needs log q(z) at a draw held fixed"
                )
    return None


class NonReparameterized(TorchDistribution):
    """The distribution ``base`` with reparameterized sampling switched off.

    Samples are ``base``'s, detached; ``log_prob``, shapes, support, mean and variance are
    ``base``'s. With ``has_rsample = False`` Pyro's ELBOs differentiate
    E_q[f(z)] by the score function, f(z) grad log q(z), instead of through the sample
    (Williams 1992). Pyro's own ``NonreparameterizedNormal`` covers only the Normal, and
    ``Independent.has_rsample_(False)`` raises, hence this wrapper of any distribution.

    References:
        Williams (1992), Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, base: TorchDistribution) -> None:
        without = _transform_without_inverse(base)
        if without is not None:
            raise NotImplementedError(
                f"the score-function gradient needs log q(z) at a draw z held fixed, and the "
                f"guide's {type(without).__name__} transform has no inverse to take z back "
                "through (a planar or radial flow scores only its own reparameterized draws): "
                'train this guide with the reparameterized gradient, or use "flow": "iaf"'
            )
        self.base_dist = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base_dist.support

    @property
    def has_enumerate_support(self) -> bool:
        return self.base_dist.has_enumerate_support

    def enumerate_support(self, expand: bool = True) -> Tensor:
        return self.base_dist.enumerate_support(expand=expand)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> Tensor:
        with torch.no_grad():
            return self.base_dist.sample(sample_shape).detach()

    def rsample(self, sample_shape: torch.Size = _NO_SHAPE) -> Tensor:
        raise NotImplementedError(
            "NonReparameterized: reparameterized sampling is switched off on purpose "
            "(score-function estimator); use .sample()"
        )

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base_dist.log_prob(value)

    def expand(self, batch_shape, _instance=None) -> NonReparameterized:
        return NonReparameterized(self.base_dist.expand(batch_shape))

    @property
    def mean(self) -> Tensor:
        return self.base_dist.mean

    @property
    def variance(self) -> Tensor:
        return self.base_dist.variance

    def entropy(self) -> Tensor:
        return self.base_dist.entropy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_dist!r})"


class ScoreFunctionMessenger(Messenger):
    """Wrap the distribution of every latent (non-observed) sample site in
    :class:`NonReparameterized`, so ELBOs take the score-function gradient there.

    Sites already without ``rsample`` (discrete ones) and plate subsample sites are left
    as they are.

    References:
        Williams (1992), Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning.
    """

    def _pyro_sample(self, msg) -> None:
        fn = msg["fn"]
        if msg["is_observed"] or isinstance(fn, _Subsample):
            return
        if not getattr(fn, "has_rsample", False):
            return
        msg["fn"] = NonReparameterized(fn)


def score_function(fn: Callable | None = None) -> Callable | ScoreFunctionMessenger:
    """Handler: ``score_function(guide)`` is ``guide`` with every latent site
    non-reparameterized (see :class:`ScoreFunctionMessenger`); same signature.

    grad_phi E_q[f(z)] = E_q[f(z) grad_phi log q_phi(z)]  (the estimator it forces).

    References:
        Williams (1992), Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning.
    """
    messenger = ScoreFunctionMessenger()
    return messenger if fn is None else messenger(fn)


class NeuralBaseline(nn.Module):
    """Input-dependent baseline b_psi(x): an MLP of the flattened data point, one value each.

    Pyro's ``TraceGraph_ELBO`` fits it by adding sum_i (signal_i - b_psi(x_i))^2 to the
    surrogate loss, and subtracts it from the learning signal of the score-function term.
    The output has shape ``(B,)`` for x of shape ``(B, ...)``: the shape of the downstream
    cost of a site in the data plate.

    References:
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """

    def __init__(
        self, x_dim: int, hidden: Sequence[int] = (100,), activation: str = "tanh"
    ) -> None:
        super().__init__()
        if x_dim < 1 or any(int(h) < 1 for h in hidden):
            raise ValueError(
                f"NeuralBaseline: x_dim and hidden sizes must be >= 1, got x_dim={x_dim}, "
                f"hidden={list(hidden)} (--baseline-hidden)"
            )
        self.x_dim = int(x_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.net = mlp([self.x_dim, *self.hidden, 1], activation)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.x_dim:
            raise ValueError(
                f"NeuralBaseline: built for data points of {self.x_dim} values, got a batch "
                f"of shape {tuple(x.shape)}"
            )
        return self.net(flat).squeeze(-1)


@dataclass(frozen=True)
class BaselineSpec:
    """One kind of baseline: the ``site["infer"]["baseline"]`` options Pyro reads.

    ``options(beta, module, x)`` returns those options for the guide's input x;
    ``needs_module`` says neural baselines must be given (:func:`neural_baselines`);
    ``fixed_batch_size`` says every batch must have the same size (Pyro stores the decaying
    average with the shape of the first batch, so a short last batch fails: ``drop_last``).
    """

    description: str
    options: Callable[[float, nn.Module | None, Any], dict]
    needs_module: bool = False
    fixed_batch_size: bool = False


#: The baselines by name (``--baseline``). A new kind is one entry here.
BASELINES: dict[str, BaselineSpec] = {
    "none": BaselineSpec("no baseline", lambda beta, module, x: {}),
    "avg": BaselineSpec(
        "decaying average of the learning signal, b <- beta b + (1 - beta) signal",
        lambda beta, module, x: {"use_decaying_avg_baseline": True, "baseline_beta": beta},
        fixed_batch_size=True,
    ),
    "nn": BaselineSpec(
        "neural baseline b_psi(x), an MLP fit to the learning signal (NVIL)",
        lambda beta, module, x: {"nn_baseline": module, "nn_baseline_input": x},
        needs_module=True,
    ),
}


def _baseline_spec(kind: str) -> BaselineSpec:
    if kind not in BASELINES:
        raise ValueError(f"--baseline {kind!r} is unknown; choose from {', '.join(BASELINES)}")
    return BASELINES[kind]


def with_baseline(
    guide: Callable, kind: str, *, beta: float = 0.9, module: nn.Module | None = None
) -> Callable:
    """``guide`` with baseline ``kind`` (see :data:`BASELINES`) set at its latent sites.

    The options go into ``site["infer"]["baseline"]`` of every latent site by
    ``poutine.infer_config``; ``TraceGraph_ELBO`` uses them where a site is not
    reparameterized (wrap the guide in :func:`score_function` for continuous latents) and
    ignores them elsewhere. For ``kind="nn"``, ``module`` is the baselines of
    :func:`neural_baselines` (one per site, by site name) or one :class:`NeuralBaseline`
    shared by all sites; it is registered as ``pyro.module("baseline", module)`` on every
    call, so SVI optimizes it, and its input is the guide's first argument.
    ``kind="none"`` returns ``guide`` itself.

        grad_phi L ~= (log p(x, z) - log q_phi(z|x) - b(x)) grad_phi log q_phi(z|x)

    References:
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """
    spec = _baseline_spec(kind)
    if spec.needs_module and module is None:
        raise ValueError(
            f"with_baseline(kind={kind!r}) needs module=neural_baselines(...) or NeuralBaseline"
        )
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"--baseline-beta {beta!r}: must be in [0, 1)")
    if kind == "none":
        return guide

    def guide_with_baseline(*args, **kwargs):
        outer = []
        if module is not None:
            pyro.module(BASELINE_MODULE, module)
            outer = [frame for frame in get_plates() if frame.vectorized]
        x = args[0] if args else None

        def config(site) -> dict:
            if site["type"] != "sample" or site["is_observed"]:
                return {}
            baseline = _site_baseline(module, site["name"])
            if module is not None and baseline is None:
                return {}  # a site without a neural baseline of its own
            if outer:  # vectorized particles: one baseline value per particle and point
                baseline = _ParticleBroadcast(baseline, outer)
            return {"baseline": spec.options(beta, baseline, x)}

        return poutine.infer_config(guide, config)(*args, **kwargs)

    guide_with_baseline.__name__ = f"{getattr(guide, '__name__', 'guide')}_with_{kind}_baseline"
    guide_with_baseline.__doc__ = guide.__doc__
    return guide_with_baseline


def _site_key(name: str) -> str:
    """A site name as a key of ``nn.ModuleDict`` (which refuses dots)."""
    return name.replace(".", "_")


def _site_baseline(module: nn.Module | None, name: str) -> nn.Module | None:
    if isinstance(module, nn.ModuleDict):
        key = _site_key(name)
        return module[key] if key in module else None
    return module


def non_reparameterized_sites(guide: Callable, *args, **kwargs) -> list[str]:
    """Names of the guide's latent sites that have no ``rsample``: those that
    ``TraceGraph_ELBO`` differentiates by the score function (and where a baseline acts)."""
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    return [
        name
        for name, site in trace.nodes.items()
        if is_sample_site(site)
        and not site["is_observed"]
        and not getattr(site["fn"], "has_rsample", False)
    ]


def neural_baselines(
    x_dim: int, sites: Sequence[str], hidden: Sequence[int] = (100,), activation: str = "tanh"
) -> nn.ModuleDict:
    """One :class:`NeuralBaseline` per site, by site name: each site's learning signal
    (its downstream cost) differs, so each gets a regression of its own (NVIL's one baseline
    per stochastic layer). Parameters: ``baseline$$$<site>.net.*`` in the param store.

    References:
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """
    return nn.ModuleDict(
        {_site_key(site): NeuralBaseline(x_dim, hidden, activation) for site in sites}
    )


class _ParticleBroadcast:
    """``module(x)`` of shape (B,) expanded over the vectorized plates around the guide
    (Pyro's ``num_particles_vectorized``), the shape of the site's downstream cost."""

    def __init__(self, module: nn.Module, frames) -> None:
        self.module = module
        self.frames = frames

    def __call__(self, x: Tensor) -> Tensor:
        value = self.module(x)
        shape = [1] * max([value.dim()] + [-frame.dim for frame in self.frames])
        shape[len(shape) - value.dim() :] = value.shape
        for frame in self.frames:
            shape[frame.dim] = frame.size
        return value.expand(shape)


def forget_baselines() -> None:
    """Delete every baseline from Pyro's param store: neural-baseline parameters
    (``baseline$$$...``) and decaying averages, so a fresh baseline starts from scratch."""
    store = pyro.get_param_store()
    for name in list(store.keys()):
        if name.startswith((AVG_BASELINE_PREFIX, BASELINE_MODULE + "$$$")):
            del store[name]


def forget_stale_optimizers(optimizer: pyro.optim.PyroOptim) -> None:
    """Drop the optimizer state of tensors the param store no longer holds.

    ``TraceGraph_ELBO`` replaces the decaying-average tensor in the param store at every
    step, and ``SVI`` hands each new tensor to the optimizer: Pyro's ``PyroOptim`` keeps one
    (idle) torch optimizer per tensor ever seen, and grows by one per step without this. The
    run's :class:`~pyro_vae.infer.optimizers.RunOptimizer` takes only tensors with gradients, and
    drops any that were replaced.
    """
    live = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    forget = getattr(optimizer, "forget", None)
    if forget is not None:
        forget(live)
        return
    for param in list(optimizer.optim_objs):
        if id(param) not in live:
            del optimizer.optim_objs[param]
            optimizer.grad_clip.pop(param, None)


@dataclass(frozen=True)
class GradientEstimatorSpec:
    """One gradient estimator of the ELBO: a Pyro loss and how to turn a guide into the one
    it differentiates (forced score function or not, which baseline).

    ``objective`` names an entry of :data:`~pyro_vae.infer.objectives.OBJECTIVES` whose loss
    this estimator is (the multi-sample bounds and STL); ``multi_sample`` says its K is the
    bound's (``--num-particles``); ``guide_sites`` is the guides it applies to: ``"any"``,
    ``"reparameterized"`` (every latent site has ``rsample``) or ``"score"`` (at least one
    site has none).
    """

    elbo: type[pyro.infer.ELBO] | None
    score_function: bool
    baseline: str
    description: str
    objective: str | None = None
    multi_sample: bool = False
    guide_sites: str = "any"

    def make_elbo(self, max_plate_nesting: int = 1, num_particles: int = 1,
                  modules: Sequence[nn.Module] = ()) -> pyro.infer.ELBO:  # fmt: skip
        """The loss object; ``num_particles > 1`` averages that many vectorized particles
        (the K of the bound for an estimator with an ``objective``). ``modules``: the pair's
        networks, which STL and DReG stop in log q."""
        if self.objective is not None:
            return make_objective(self.objective, num_particles,
                                  max_plate_nesting=max_plate_nesting, modules=modules)  # fmt: skip
        return self.elbo(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=max_plate_nesting,
        )

    def make_guide(
        self, guide: Callable, *, beta: float = 0.9, module: nn.Module | None = None
    ) -> Callable:
        """The guide this estimator runs: ``with_baseline(score_function(guide), ...)``."""
        if self.score_function:
            guide = score_function(guide)
        return with_baseline(guide, self.baseline, beta=beta, module=module)

    def make_baselines(
        self, guide: Callable, x: Tensor, hidden: Sequence[int] = (100,)
    ) -> nn.ModuleDict | None:
        """Fresh neural baselines for this estimator's non-reparameterized sites of
        ``guide`` on ``x`` (see :func:`neural_baselines`), or ``None`` if it uses none."""
        if not self.needs_module:
            return None
        plain = score_function(guide) if self.score_function else guide
        sites = non_reparameterized_sites(plain, x)
        baselines = neural_baselines(x[0].numel(), sites, hidden)
        return baselines.to(x.device, x.dtype if x.is_floating_point() else None)

    @property
    def needs_module(self) -> bool:
        return BASELINES[self.baseline].needs_module


#: The gradient estimators by name (``pyro-vae gradvar --estimators``). Tests iterate over it.
GRADIENT_ESTIMATORS: dict[str, GradientEstimatorSpec] = {
    "reparam": GradientEstimatorSpec(
        pyro.infer.Trace_ELBO, False, "none", "Trace_ELBO, reparameterized (pathwise) gradient"
    ),
    "score": GradientEstimatorSpec(
        pyro.infer.TraceGraph_ELBO, True, "none", "TraceGraph_ELBO, score function, no baseline"
    ),
    "score+avg": GradientEstimatorSpec(
        pyro.infer.TraceGraph_ELBO, True, "avg", "score function, decaying-average baseline"
    ),
    "score+nn": GradientEstimatorSpec(
        pyro.infer.TraceGraph_ELBO, True, "nn", "score function, neural baseline b(x) (NVIL)"
    ),
    "stl": GradientEstimatorSpec(
        None,
        False,
        "none",
        "sticking the landing: the ELBO with log q at stopped params",
        objective="stl",
        guide_sites="reparameterized",
    ),
    "iwae": GradientEstimatorSpec(
        None,
        False,
        "none",
        "RenyiELBO(alpha=0): the IWAE bound's gradient, K particles",
        objective="iwae",
        multi_sample=True,
        guide_sites="reparameterized",  # RenyiELBO gives a score site's params no gradient
    ),
    "iwae-dreg": GradientEstimatorSpec(
        None,
        False,
        "none",
        "the IWAE bound, doubly reparameterized guide gradient (DReG)",
        objective="iwae-dreg",
        multi_sample=True,
        guide_sites="reparameterized",
    ),
    "vimco": GradientEstimatorSpec(
        None,
        False,
        "none",
        "the IWAE bound, score function with VIMCO's leave-one-out baselines",
        objective="vimco",
        multi_sample=True,
        guide_sites="score",
    ),
}
