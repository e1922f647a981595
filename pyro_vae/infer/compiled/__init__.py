"""A pair's training step traced once from its Pyro programs into a graph, then compiled.

Pyro's effect handlers cost milliseconds of Python per step whatever the batch size. Here the
guide runs under ``poutine.trace``, the model is replayed on it, and the loss is formed from
the two traces:

    loss = -(1/K) sum_k [log p(x, z_k) - log q(z_k | x)]                    (``elbo``)
    loss = -1/(1-alpha) log (1/K) sum_k w_k^(1-alpha),  log w_k = log p - log q   (``iwae``,
           ``renyi``; alpha = 0 is the IWAE bound)

with ``meanfield`` taking the analytic KL(q || p) where one exists, as Pyro's
``TraceMeanField_ELBO`` does. That computation, with its gradients with respect to every
parameter, is captured once per batch shape by ``make_fx`` as a graph of tensor operations
whose inputs are the parameters, the batch and the training scales, and the graph is
compiled with ``torch.compile``. Later steps run the graph: Pyro's Python runs at trace time
only. The values and gradients are those of Pyro's estimators on the same draws (the random
draws are operations of the graph); the optimizer step is the run's own Pyro optimizer.

Not every pair can be traced. :func:`untraceable_reason` finds a guide site that is not
reparameterized (its gradient needs the score function), enumeration, and modules that update
buffers in training (BatchNorm); tracing itself fails on data-dependent Python (``.item()``,
a branch on a tensor's value). Either way the training loop runs eagerly with a note naming
the reason (or stops, with ``--compile strict``). A program whose set of sites changes from
call to call cannot be detected: the graph would keep the first call's sites, so such a pair
must not use ``--compile``.

References:
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    Li & Turner (2016), Rényi Divergence Variational Inference.

The modules, one idea each: :mod:`~pyro_vae.infer.compiled.tracing` (the loss formed from the
programs' traces, why a pair cannot be traced, the ``make_fx`` graph) and
:mod:`~pyro_vae.infer.compiled.runners` (the compiled SVI step and compiled log weights, with
their fallback to eager Pyro).
"""

from pyro_vae.infer.compiled.runners import (
    COMPILE_MODES,
    MAX_GRAPHS,
    CompiledByShape,
    CompiledLogWeights,
    CompiledSVI,
    compile_graph,
)
from pyro_vae.infer.compiled.tracing import (
    PARTICLE_PLATE,
    TRACEABLE_OBJECTIVES,
    UNTRACED_OBJECTIVES,
    PairLoss,
    UntraceableError,
    log_weights,
    traced_loss,
    untraceable_reason,
)

__all__ = [
    "COMPILE_MODES",
    "CompiledByShape",
    "CompiledLogWeights",
    "CompiledSVI",
    "PairLoss",
    "MAX_GRAPHS",
    "PARTICLE_PLATE",
    "TRACEABLE_OBJECTIVES",
    "UNTRACED_OBJECTIVES",
    "UntraceableError",
    "compile_graph",
    "log_weights",
    "traced_loss",
    "untraceable_reason",
]
