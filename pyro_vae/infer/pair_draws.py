"""What a pair shows of itself at any point of training, as tensors: the observation means of
samples from the prior, laid out as images, and the KL from the guide to the prior per latent
dimension. The trainer's loggers draw these each few epochs; ``pyro-vae sample`` and
``pyro-vae diagnose`` build their figures and tables on the same functions.

References:
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.2.
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_vae.pairs import PairError, data_plate_dim, evaluation_mode
from pyro_vae.pairs.labels import program_args


def per_point(site: dict, tensor: torch.Tensor, num_points: int,
              data_plate: str | None = None) -> torch.Tensor | None:  # fmt: skip
    """``tensor`` (a value or a mean of ``site``) as ``(num_points, values per point)`` in
    the order of the data plate; None for a site outside that plate."""
    found = data_plate_dim(site, num_points, data_plate)
    if found is None:
        return None
    event_dims = len(site["fn"].event_shape)
    batch_dims = tensor.dim() - event_dims
    axis = batch_dims + found[1]
    tensor = tensor.movedim(axis, 0) if axis >= 0 else tensor.unsqueeze(0)
    return tensor.expand(num_points, *tensor.shape[1:]).reshape(num_points, -1)


def cannot_draw(name: str | None = None, fn: Any = None) -> str:
    """Why a likelihood that only scores x (a distribution with a log_prob, no mean and no
    sample) gives nothing to draw."""
    while hasattr(fn, "base_dist"):  # the user's distribution inside Independent, Expanded...
        fn = fn.base_dist
    where = "a distribution of the model" if fn is None else (
        f"observed site {name!r}: {type(fn).__name__}")  # fmt: skip
    return (
        f"{where} has no .mean and no .sample() (NotImplementedError), so nothing can be "
        "drawn from it"
    )


def observed_means(trace, observed_sites: tuple[str, ...], num_points: int,
                   data_plate: str | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per observed site, the mean of its distribution (a draw from it where it has no mean),
    as ``(num_points, values per point)`` in the order of the data plate."""
    means = {}
    for name in observed_sites:
        site = trace.nodes[name]
        try:
            mean = site["fn"].mean
        except NotImplementedError:  # a draw, not the observed value a replayed trace holds
            try:
                mean = site["fn"].sample() if site["is_observed"] else site["value"]
            except NotImplementedError:
                raise PairError(cannot_draw(name, site["fn"])) from None
        mean = per_point(site, mean, num_points, data_plate)
        if mean is not None:
            means[name] = mean
    return means


def prior_samples(pair: Any, x: torch.Tensor, observed_sites: tuple[str, ...],
                  data_plate: str | None = None, y: torch.Tensor | None = None,
                  label_site: str | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """E[x | z] with z ~ p(z), per observed site.

    ``x`` sets the batch size (the model's data plate) and is otherwise unused where the model
    only observes it: ``poutine.uncondition`` draws every observed site. A model that
    conditions on part of ``x`` (the visible half of an image) draws given that part, so a
    placeholder batch of zeros there means samples given zeros.

    With labels ``y``: samples of those classes, z ~ p(z) (or p(z|y)) and x ~ p(x|y,z). The
    model is called with ``y``; a ``label_site`` the labels observe (M2's y) stays observed
    at its labelled value while the data sites are drawn."""
    prior_model = getattr(pair, "prior_model", None)  # an EvaluationPair holds globals fixed
    model = prior_model() if prior_model is not None else poutine.uncondition(pair.model)
    args = program_args(x, y)
    with torch.no_grad(), evaluation_mode(pair):
        if label_site is not None and y is not None:
            labelled = poutine.trace(pair.model).get_trace(*args)
            value = labelled.nodes[label_site]["value"]
            model = poutine.condition(model, data={label_site: value})
        trace = poutine.trace(model).get_trace(*args)
    return observed_means(trace, observed_sites, x.shape[0], data_plate)


def as_images(means: dict[str, torch.Tensor], image_shape: tuple[int, ...]):
    """The observed sites' means laid out as images: one site the size of an image, else all
    sites concatenated in model order when together they are; ``None`` and the reason if not."""
    size = math.prod(image_shape)
    whole = [name for name, mean in means.items() if mean.shape[1] == size]
    if len(means) == 1 and whole:
        return means[whole[0]], None
    if means and sum(mean.shape[1] for mean in means.values()) == size:
        return torch.cat(list(means.values()), dim=1), None
    found = ", ".join(f"{name!r} ({mean.shape[1]} values)" for name, mean in means.items())
    return None, (
        f"the observed sites {found} do not together make an image of shape {image_shape} "
        f"({size} values)"
    )


def base_distribution(fn: Any) -> Any:
    """``fn`` without its Independent wrappers."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def per_dimension(fn: Any) -> Any:
    """The distribution of each latent coordinate alone (marginals), or None if unknown."""
    fn = base_distribution(fn)
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return dist.Normal(fn.loc, fn.variance.sqrt())
    if len(fn.event_shape) == 0:
        return fn
    return None


def site_kl(guide_fn: Any, model_fn: Any, value: torch.Tensor) -> tuple[Any, str | None]:
    """KL(q(z_d|.) || p(z_d|.)) of one latent site per coordinate, shaped as its ``value``
    (the draw from q), and how it was found: ``"analytic"`` where torch knows the pair of
    marginals (Normal to Normal, ...), else ``"monte carlo"`` (log q - log p at the draw);
    ``(None, None)`` for a site whose distributions have no per-coordinate marginals."""
    q_dims, p_dims = per_dimension(guide_fn), per_dimension(model_fn)
    if q_dims is None or p_dims is None:
        return None, None
    try:
        return torch.distributions.kl_divergence(q_dims, p_dims).expand(value.shape), "analytic"
    except NotImplementedError:
        per_draw = q_dims.log_prob(value) - p_dims.log_prob(value)
        return per_draw.expand(value.shape), "monte carlo"


def kl_per_dimension(
    pair: Any,
    x: torch.Tensor,
    sites: tuple[str, ...],
    data_plate: str | None = None,
    y: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The KL from the guide to the prior per latent dimension of each site in ``sites``,
    averaged over the points ``x`` (one draw z ~ q(z|x) each): ``{site: (values per point,)}``,
    and per site how it was found (:func:`site_kl`) or why it was left out."""
    args = program_args(x, y)
    with torch.no_grad(), evaluation_mode(pair):
        guide_trace = poutine.trace(pair.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args)
    kl, how = {}, {}
    for name in sites:
        guide_site, model_site = guide_trace.nodes.get(name), model_trace.nodes.get(name)
        if guide_site is None or model_site is None:
            how[name] = "not in both the guide and the model"
            continue
        value = guide_site["value"]
        per_coordinate, how[name] = site_kl(guide_site["fn"], model_site["fn"], value)
        if per_coordinate is None:
            how[name] = "no per-dimension distribution"
            continue
        rows = per_point(guide_site, per_coordinate, x.shape[0], data_plate)
        if rows is None:
            how[name] = "outside the data plate"
            continue
        kl[name] = rows.mean(dim=0)
    return kl, how


__all__ = [
    "as_images",
    "base_distribution",
    "cannot_draw",
    "kl_per_dimension",
    "observed_means",
    "per_dimension",
    "per_point",
    "prior_samples",
    "site_kl",
]
