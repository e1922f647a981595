"""Compiled graphs that run in place of Pyro's Python: the SVI step and the log weights.

:class:`CompiledSVI` steps a pair's optimizer with the loss and gradients of a compiled graph
of :func:`~pyro_vae.infer.compiled.tracing.traced_loss`, one graph per batch shape;
:class:`CompiledByShape` and :class:`CompiledLogWeights` run evaluation's tensor functions as
compiled graphs. Each falls back to eager Pyro, with a note naming why, when tracing or
compiling fails.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.nn.utils.stateless import _reparametrize_module

from pyro_vae.infer.compiled.tracing import UntraceableError, _graph_of, _kept_rng, traced_loss

#: ``--compile`` values: ``off``; ``on`` (an untraceable pair trains eagerly, with a note);
#: ``strict`` (an untraceable pair is an error).
COMPILE_MODES = ("off", "on", "strict")

#: At most this many graphs per run (one per batch shape and scale pattern); past it, eager.
MAX_GRAPHS = 8


def compile_graph(graph: Callable, *, cuda_graphs: bool = False) -> Callable:
    """``torch.compile`` with Inductor's random numbers taken from PyTorch's own generator
    (``fallback_random``): the compiled step draws what the eager step draws, so a compiled
    run follows an eager run of the same seed, and resumes exactly.

    ``cuda_graphs``: also replay the graph's kernels as a CUDA graph (what
    ``mode="reduce-overhead"`` turns on; ``torch.compile`` takes a mode or options, not
    both): one launch per step in place of one per kernel. The outputs then live in the
    graph's own memory until its next run, so a caller must use them before that."""
    options = {"fallback_random": True}
    if cuda_graphs:
        options["triton.cudagraphs"] = True
    return torch.compile(graph, options=options)


class CompiledSVI:
    """A drop-in for ``pyro.infer.SVI`` whose ``step`` runs a compiled graph of the loss.

    Per batch shape (and pattern of training scales), the first step traces the loss of
    ``model`` and ``guide`` (:func:`traced_loss`) together with its gradients with respect to
    the unconstrained parameters of Pyro's param store, as a graph over the parameters, the
    batch and the scales; later steps of that shape call the compiled graph, write the
    gradients into ``.grad`` and step ``optim`` (a ``pyro.optim`` optimizer), as SVI does.
    ``scales`` (a :class:`~pyro_vae.infer.handlers.TrainingScales` wrapping both programs) has its
    ``beta`` and ``data_scale`` passed to the graph as inputs, so KL warm-up needs no new trace.

    On CUDA the step's graph is also replayed as a CUDA graph (:func:`compile_graph`'s
    ``cuda_graphs``; ``cuda_graphs=False`` turns that off): the gradients are consumed by the
    optimizer step before the next step runs the graph again.

    ``eager`` (the ``pyro.infer.SVI`` of the same programs) takes the steps the graph cannot:
    past ``max_graphs`` batch shapes, and every step after tracing or compiling failed (with
    ``strict``, that failure is an :class:`UntraceableError` instead). ``on_note`` receives
    one line per graph traced and the reason of a fallback. ``compiler``: :func:`compile_graph`
    (default), or ``None`` to run the traced graph as it is (the tests compare it with eager
    Pyro on the same draws).
    """

    def __init__(self, model: Callable, guide: Callable, optim: Any, *, objective: str = "elbo",
                 num_particles: int = 1, alpha: float = 0.5, max_plate_nesting: int = 1,
                 modules: Sequence[nn.Module] = (), scales: Any = None, eager: Any = None,
                 strict: bool = False, on_note: Callable[[str], None] | None = None,
                 compiler: Callable | None = compile_graph,
                 max_graphs: int = MAX_GRAPHS, cuda_graphs: bool = True) -> None:  # fmt: skip
        self.model, self.guide, self.optim = model, guide, optim
        self.cuda_graphs = cuda_graphs
        self.modules = list(modules)
        self.loss_args = dict(objective=objective, num_particles=num_particles, alpha=alpha,
                              max_plate_nesting=max_plate_nesting,
                              modules=self.modules)  # fmt: skip
        self.scales = scales
        self.eager = eager
        self.strict = strict
        self.on_note = on_note or (lambda line: None)
        self.compiler = compiler
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple[Callable, tuple[str, ...]]] = {}
        self.called: set[tuple] = set()
        self.eager_steps = 0
        self.fallback_reason: str | None = None
        self._scales_cache: tuple | None = None

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    def _eager_loss(self, *args: Any) -> Tensor:
        return traced_loss(self.model, self.guide, args, **self.loss_args)

    def _key(self, args: Sequence[Any]) -> tuple:
        shapes = tuple(
            (tuple(a.shape), a.dtype, str(a.device)) if isinstance(a, Tensor) else repr(a)
            for a in args
        )
        beta = getattr(self.scales, "beta", 1.0)
        data_scale = getattr(self.scales, "data_scale", 1.0)
        return shapes, float(beta) != 1.0, float(data_scale) != 1.0

    def _trace(
        self, args: Sequence[Any], names: tuple[str, ...]
    ) -> tuple[Callable, tuple[str, ...]]:
        store = pyro.get_param_store()
        unconstrained = [store._params[name] for name in names]
        constraints = [store._constraints[name] for name in names]
        owners = _module_owners(self.modules, unconstrained)
        scales = self.scales
        num_args = len(args)

        def loss_and_grads(*inputs: Tensor) -> tuple[Tensor, ...]:
            params = [p.detach().requires_grad_() for p in inputs[: len(names)]]
            batch = inputs[len(names) : len(names) + num_args]
            beta, data_scale = inputs[len(names) + num_args :]
            swaps: dict[nn.Module, dict[str, Tensor]] = {}
            substitutes: dict[str, Tensor] = {}
            for name, param, constraint in zip(names, params, constraints, strict=True):
                owner = owners.get(name)
                if owner is not None:
                    swaps.setdefault(owner[0], {})[owner[1]] = param
                substitutes[name] = biject_to(constraint)(param)
            saved = None
            if scales is not None:
                saved = scales.beta, scales.data_scale
                scales.beta = beta if saved[0] != 1.0 else 1.0
                scales.data_scale = data_scale if saved[1] != 1.0 else 1.0
            try:
                with torch.enable_grad(), _swapped(swaps), poutine.substitute(data=substitutes):
                    loss = self._eager_loss(*batch)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
            finally:
                if saved is not None:
                    scales.beta, scales.data_scale = saved
            grads = tuple(torch.zeros_like(p) if g is None else g
                          for p, g in zip(params, grads, strict=True))  # fmt: skip
            return (loss.detach(), *grads)

        inputs = (*unconstrained, *args, *self._scale_inputs(args))
        compiler = self.compiler
        on_cuda = any(isinstance(a, Tensor) and a.device.type == "cuda" for a in inputs)
        if compiler is compile_graph and on_cuda and self.cuda_graphs:
            compiler = functools.partial(compile_graph, cuda_graphs=True)
        return _graph_of(loss_and_grads, inputs, compiler), names

    def _scale_inputs(self, args: Sequence[Any]) -> tuple[Tensor, Tensor]:
        like = next((a for a in args if isinstance(a, Tensor) and a.is_floating_point()), None)
        options = {"dtype": like.dtype, "device": like.device} if like is not None else {}
        beta = float(getattr(self.scales, "beta", 1.0))
        data_scale = float(getattr(self.scales, "data_scale", 1.0))
        key = (beta, data_scale, *options.values())
        if self._scales_cache is None or self._scales_cache[0] != key:  # new values: new tensors
            self._scales_cache = key, (torch.tensor(beta, **options),
                                       torch.tensor(data_scale, **options))  # fmt: skip
        return self._scales_cache[1]

    def _give_up(self, what: str, error: Exception) -> None:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        reason = f"{what} failed ({type(error).__name__}: {first})"
        if self.strict or self.eager is None:
            raise UntraceableError(f"--compile strict: {reason}") from error
        self.fallback_reason = reason
        self.on_note(f"note: --compile: {reason}; training goes on eagerly")

    def _graph_step(self, args: Sequence[Any]) -> tuple[float, list[Tensor]] | None:
        """Loss and gradients (in ``.grad``) from the graph for this shape; ``None`` where
        the step must run eagerly."""
        key = self._key(args)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return None
            # tracing runs the programs: its draws must not shift the step's own
            store = pyro.get_param_store()
            known = set(store.keys())
            with _kept_rng(args):
                names = tuple(sorted(_param_names(self.model, self.guide, args)))
            if not set(names) <= known:
                # the programs create parameters at their first call: undo that, and let
                # the eager step create them from the same random numbers as SVI would
                for name in set(names) - known:
                    if name in store:
                        del store[name]
                return None
            try:
                entry = self._trace(args, names)
            except Exception as error:  # noqa: BLE001 - any failure to trace means eager
                self._give_up("tracing the loss", error)
                return None
            self.graphs[key] = entry
            shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, Tensor))
            self.on_note(
                f"note: --compile: traced the loss for batch {shapes} "
                f"(graph {len(self.graphs)} of at most {self.max_graphs})"
            )
        graph, names = entry
        store = pyro.get_param_store()
        params = [store._params[name] for name in names]
        inputs = (*params, *args, *self._scale_inputs(args))
        if key in self.called:
            outputs = graph(*inputs)
        else:  # torch.compile compiles at the first call
            rng, cuda_rng = torch.random.get_rng_state(), _cuda_rng_state(args)
            try:
                with warnings.catch_warnings():  # the compiler's own, nothing a user can act on
                    warnings.simplefilter("ignore", DeprecationWarning)
                    outputs = graph(*inputs)
            except Exception as error:  # noqa: BLE001 - a compiler failure means eager
                _set_rng_state(rng, cuda_rng)
                self._give_up("compiling the traced loss", error)
                return None
            self.called.add(key)
        loss, *grads = outputs
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad if param.grad is None else param.grad + grad
        return loss.item(), params

    def step(self, *args: Any) -> float:
        """One optimizer step on a batch (``pyro.infer.SVI.step``); returns the loss."""
        done = None if self.fallback_reason is not None else self._graph_step(args)
        if done is None:
            self.eager_steps += 1
            if self.eager is None:
                raise UntraceableError(
                    "this step must run eagerly (new parameters, or more than "
                    f"{self.max_graphs} batch shapes), and CompiledSVI was given no eager SVI"
                )
            return self.eager.step(*args)
        loss, params = done
        self.optim(params)
        for param in params:  # the graph writes every gradient afresh: nothing to keep
            param.grad = None
        return loss


class CompiledByShape:
    """Tensor functions run as compiled graphs, one per key and shape of the inputs.

    ``runner(fn, inputs, key=...)`` traces ``fn(*inputs)`` (a function of tensors returning
    a tensor or a tuple of them) with ``make_fx`` the first time it sees ``key`` with these
    input shapes, compiles it, and runs the graph; later calls with the same key and shapes
    run the graph. Whatever ``fn`` reads besides its inputs (the pair's parameters) is a
    constant of the graph: right for evaluation, where nothing moves. Random numbers come from
    PyTorch's generator (``fallback_random``), so the outputs equal ``fn``'s of the same seed.
    A failure to trace or compile is one note (``on_note``); from then on ``fn`` runs eagerly.
    """

    def __init__(self, on_note: Callable[[str], None] | None = None,
                 compiler: Callable | None = compile_graph) -> None:  # fmt: skip
        self.graphs: dict[tuple, Callable] = {}
        self.on_note = on_note or (lambda line: None)
        self.compiler = compiler
        self.fallback_reason: str | None = None

    def __call__(self, fn: Callable, inputs: Sequence[Tensor], *, key: Any,
                 describe: str | None = None) -> Any:  # fmt: skip
        if self.fallback_reason is not None:
            return fn(*inputs)
        full_key = (key, *((tuple(t.shape), t.dtype, str(t.device)) for t in inputs))
        graph = self.graphs.get(full_key)
        rng, cuda_rng = torch.random.get_rng_state(), _cuda_rng_state(inputs)
        try:
            if graph is None:

                def no_grad(*batch: Tensor) -> Any:
                    with torch.no_grad():
                        return fn(*batch)

                graph = _graph_of(no_grad, inputs, self.compiler)
                shapes = " x ".join(str(tuple(t.shape)) for t in inputs)
                self.on_note(f"note: --compile: traced {describe or key} for batch {shapes} "
                             f"(graph {len(self.graphs) + 1})")  # fmt: skip
            with warnings.catch_warnings():  # the compiler's own, nothing a user can act on
                warnings.simplefilter("ignore", DeprecationWarning)
                outputs = graph(*inputs)
        except Exception as error:  # noqa: BLE001 - any failure to trace or compile: eager
            _set_rng_state(rng, cuda_rng)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            self.fallback_reason = f"{type(error).__name__}: {first}"
            self.on_note(f"note: --compile: {describe or key} runs eagerly: tracing or "
                         f"compiling failed ({self.fallback_reason})")  # fmt: skip
            return fn(*inputs)
        self.graphs[full_key] = graph
        return outputs


class CompiledLogWeights(CompiledByShape):
    """Log importance weights from a compiled graph, one per batch shape and chunk of K
    (``evaluate --compile``): a drop-in for ``log_importance_weights``' ``trace_fn``.

    The first chunk of a shape traces the estimator's own computation (guide traced, model
    replayed, log p - log q per sample and point) and compiles it (:class:`CompiledByShape`),
    so the estimate equals the eager one of the same seed.
    """

    def __call__(self, model, guide, x, num_samples, max_plate_nesting, data_plate=None,
                 y=None):  # fmt: skip
        from pyro_vae.infer.estimators import _trace_log_weights

        def weights(*batch: Tensor) -> Tensor:
            return _trace_log_weights(model, guide, batch[0], num_samples, max_plate_nesting,
                                      data_plate, batch[1] if len(batch) > 1 else None)  # fmt: skip

        return super().__call__(
            weights,
            (x,) if y is None else (x, y),
            key=(id(model), id(guide), num_samples, max_plate_nesting, data_plate),
            describe=f"the log weights of {num_samples or 1} samples",
        )


def _cuda_rng_state(args: Sequence[Any]) -> tuple[Tensor, torch.device] | None:
    for arg in args:
        if isinstance(arg, Tensor) and arg.device.type == "cuda":
            return torch.cuda.get_rng_state(arg.device), arg.device
    return None


def _set_rng_state(rng: Tensor, cuda_rng: tuple[Tensor, torch.device] | None) -> None:
    torch.random.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(*cuda_rng)


def _param_names(model: Callable, guide: Callable, args: Sequence[Any]) -> set[str]:
    with torch.no_grad(), poutine.trace(param_only=True) as params_seen:
        guide_trace = poutine.trace(guide).get_trace(*args)
        poutine.replay(model, trace=guide_trace)(*args)
    return set(params_seen.trace.nodes)


def _module_owners(modules: Sequence[nn.Module],
                   tensors: Sequence[Tensor]) -> dict[str, tuple[nn.Module, str]]:  # fmt: skip
    """For each param-store name whose tensor is a module's parameter: (module, attribute)."""
    by_identity = {}
    for module in modules:
        for attribute, parameter in module.named_parameters():
            by_identity.setdefault(id(parameter), (module, attribute))
    store = pyro.get_param_store()
    owners = {}
    for tensor in tensors:
        found = by_identity.get(id(tensor))
        if found is not None:
            owners[store.param_name(tensor)] = found
    return owners


class _swapped:
    """Modules with some parameters swapped for graph inputs, for the span of a trace."""

    def __init__(self, swaps: dict[nn.Module, dict[str, Tensor]]) -> None:
        self.contexts = [_reparametrize_module(module, params) for module, params in swaps.items()]

    def __enter__(self) -> None:
        for context in self.contexts:
            context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for context in reversed(self.contexts):
            context.__exit__(*exc)


__all__ = [
    "COMPILE_MODES",
    "CompiledByShape",
    "CompiledLogWeights",
    "CompiledSVI",
    "MAX_GRAPHS",
    "compile_graph",
]
