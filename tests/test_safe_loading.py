"""Reading a run directory cannot run code: checkpoints load with ``weights_only=True``,
``config.toml`` must match the checkpoint's config, a pair spec must name a pair class or
factory, and every kind of run still resumes bit for bit."""

import pickle
import random
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from torch.distributions import biject_to, transform_to

from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.pairs import PAIRS, PairError, build_pair
from pyro_vae.runs.checkpoints import (
    CONSTRAINTS,
    CheckpointError,
    decode_constraint,
    encode_constraint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    upgrade_checkpoint,
)
from pyro_vae.runs.config import TrainConfig, dumps_toml, load_toml
from pyro_vae.training.train import train

constraints = pyro.distributions.constraints
PAIRS_DIR = Path(__file__).resolve().parent / "pairs"


def small_config(out, **overrides) -> TrainConfig:
    values = dict(
        dataset="digits", pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 2},
        epochs=1, batch_size=50, train_limit=200, device="cpu", out=str(out),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small digits run (mlp, z_dim 2, one epoch); tests work on copies of it."""
    run_dir = tmp_path_factory.mktemp("safe") / "run"
    train(small_config(run_dir))
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


class Poison:
    """A pickle whose unpickling writes ``marker``: what a hostile best.pt would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({self.marker!r}).write_text('ran')",))


def poison(path: Path, marker: Path, raw: bool = False) -> None:
    """Replace the checkpoint at ``path`` with one that runs code when unpickled."""
    if raw:  # a plain pickle, not torch's zip format
        path.write_bytes(pickle.dumps(Poison(marker), protocol=2))
    else:
        torch.save({"epoch": 1, "config": {}, "params": Poison(marker), "rng": {}}, path)


def write_config(run_dir: Path, **changes) -> None:
    values = {**load_toml(run_dir / "config.toml"), **changes}
    (run_dir / "config.toml").write_text(dumps_toml(values))


def test_the_poison_is_live_under_weights_only_false(tmp_path):
    """The test checkpoint does run code when unpickled the old way, so the tests that find
    no marker after pyro_vae read it have power."""
    marker = tmp_path / "MARKER"
    poison(tmp_path / "best.pt", marker)
    torch.load(tmp_path / "best.pt", weights_only=False)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("raw", [False, True], ids=["torch-zip", "raw-pickle"])
def test_a_poisoned_best_pt_is_refused_by_evaluate_and_runs_nothing(run_dir, tmp_path, raw):
    marker = tmp_path / "MARKER"
    poison(run_dir / "best.pt", marker, raw=raw)
    with pytest.raises(CheckpointError) as error:
        evaluate(run_dir, num_samples=2, limit=4, save=False)
    message = str(error.value)
    assert str(run_dir / "best.pt") in message
    assert "never unpickles arbitrary objects" in message and "nothing in it was run" in message
    assert "was not written by pyro_vae, or was altered" in message
    assert "holds a pickled exec, which torch.load(weights_only=True) refuses" in message
    assert not marker.exists()


COMMANDS = {
    "evaluate": ["evaluate", "run", "--num-samples", "2", "--limit", "4"],
    "sample": ["sample", "run", "--out", "grid.png"],
    "train --resume": ["train", "--out", "run", "--resume", "--epochs", "2"],
    "convergence": ["convergence", "run", "--points", "2"],
    "gradvar": ["gradvar", "run", "--num-draws", "2"],
    "diagnose": ["diagnose", "run", "--points", "2"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_poisoned_checkpoint_is_refused_by_every_command(run_cli, run_dir, tmp_path, command):
    marker = tmp_path / "MARKER"
    for name in ("best.pt", "checkpoint.pt"):
        poison(run_dir / name, marker)
    result = run_cli(*COMMANDS[command], cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "never unpickles arbitrary objects" in result.stderr
    assert "holds a pickled exec" in result.stderr
    assert not marker.exists()


def _old_format(state: dict) -> dict:
    """A checkpoint as pyro_vae wrote it before weights_only=True: numpy's RNG tuple,
    constraint objects, a TorchVersion."""
    state = dict(state)
    numpy = state["rng"]["numpy"]
    state["rng"] = {**state["rng"], "numpy": (
        numpy["bit_generator"], numpy["key"].numpy().astype(np.uint32), numpy["pos"],
        numpy["has_gauss"], numpy["cached_gaussian"],
    )}  # fmt: skip
    state["params"] = {
        "params": state["params"]["params"],
        "constraints": {k: decode_constraint(v) for k, v in state["params"]["constraints"].items()},
    }
    state["torch_version"] = torch.__version__
    return state


def test_an_old_format_checkpoint_is_refused_with_how_to_convert_it(run_dir, tmp_path):
    path = run_dir / "best.pt"
    new = load_checkpoint(path)
    torch.save(_old_format(new), path)
    with pytest.raises(CheckpointError) as error:
        evaluate(run_dir, num_samples=2, limit=4, save=False)
    message = str(error.value)
    assert f"checkpoint {str(path)!r} was written by an older pyro_vae" in message
    assert "never unpickles arbitrary objects" in message
    assert "If you trust the file (you wrote it yourself), convert it once" in message
    one_liner = (
        'python -c "from pyro_vae.runs.checkpoints import upgrade_checkpoint; '
        f'upgrade_checkpoint({str(path)!r})"'
    )
    assert one_liner in message
    upgrade_checkpoint(path)  # what the one-liner does
    upgraded = load_checkpoint(path)
    assert upgraded["params"]["constraints"] == new["params"]["constraints"]
    assert upgraded["rng"]["random"] == new["rng"]["random"]
    assert torch.equal(upgraded["rng"]["numpy"]["key"], new["rng"]["numpy"]["key"])
    assert upgraded["torch_version"] == new["torch_version"] == str(torch.__version__)
    assert all(torch.equal(upgraded["module"][k], new["module"][k]) for k in new["module"])
    assert evaluate(run_dir, num_samples=2, limit=4, save=False)["num_points"] == 4


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"not a checkpoint", "torch.load(weights_only=True) refused it (Unsupported operand"),
        (b"", "(EOFError: )"),
        (pickle.dumps(Poison("MARKER"), protocol=4), "refused it (Unsupported operand 149)"),
    ],
    ids=["text", "empty", "pickle-protocol-4"],
)
def test_a_damaged_checkpoint_is_a_clear_error(run_dir, payload, reason):
    (run_dir / "best.pt").write_bytes(payload)
    with pytest.raises(CheckpointError) as error:
        evaluate(run_dir, num_samples=2, limit=4, save=False)
    message = str(error.value)
    assert message.startswith(f"checkpoint {str(run_dir / 'best.pt')!r} cannot be read")
    assert reason in message and "damaged, or it is not a pyro_vae checkpoint" in message
    assert not (run_dir / "MARKER").exists() and not Path("MARKER").exists()


# ------------------------------------------------------------------------------------------
# config.toml against the checkpoint


@pytest.mark.parametrize("command", ["evaluate", "sample", "train --resume"])
def test_pair_os_system_in_config_toml_is_refused_and_runs_nothing(
    run_cli, run_dir, tmp_path, command
):
    marker = tmp_path / "MARKER"
    write_config(run_dir, pair="os:system", pair_kwargs={"command": f"touch {marker}"})
    result = run_cli(*COMMANDS[command], cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "'os:system'" in result.stderr and "pair" in result.stderr
    assert not marker.exists()


def test_pair_os_system_is_refused_by_a_fresh_train(run_cli, tmp_path):
    marker = tmp_path / "MARKER"
    kwargs = f'{{"command": "touch {marker}"}}'
    flags = ["--pair", "os:system", "--pair-kwargs", kwargs, "--train-limit", "100"]
    result = run_cli("train", "--out", "run", *flags, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "--pair 'os:system' was refused, nothing was called" in result.stderr
    assert "module 'os' is Python's standard library" in result.stderr
    assert "a class or a factory function" in result.stderr and "model(x) and guide(x)" in (
        result.stderr
    )
    assert not marker.exists()


def test_an_edited_config_toml_is_refused_naming_the_key(run_dir):
    write_config(run_dir, pair_kwargs={"hidden": [16], "z_dim": 3})
    with pytest.raises(CheckpointError) as error:
        evaluate(run_dir, num_samples=2, limit=4, save=False)
    message = str(error.value)
    assert message.startswith(
        "the run's config.toml does not match the configuration stored in checkpoint "
        f"{str(run_dir / 'best.pt')!r}: pair_kwargs (config.toml: {{'hidden': [16], "
        "'z_dim': 3}, checkpoint: {'hidden': [16], 'z_dim': 2})."
    )
    assert message.count("(config.toml: ") == 1  # only the differing key is named


def test_settings_that_may_change_between_sessions_are_not_a_mismatch(run_dir, tmp_path):
    write_config(run_dir, epochs=7, out=str(tmp_path / "elsewhere"), device="auto",
                 data_dir=str(tmp_path), download=True)  # fmt: skip
    assert evaluate(run_dir, num_samples=2, limit=4, save=False)["num_points"] == 4


def test_a_key_missing_from_an_older_checkpoint_counts_as_its_default(run_dir):
    path = run_dir / "best.pt"
    state = load_checkpoint(path)
    del state["config"]["kl_warmup"], state["config"]["pixel_scale"]
    save_checkpoint(state, path)
    assert evaluate(run_dir, num_samples=2, limit=4, save=False)["num_points"] == 4
    write_config(run_dir, kl_warmup=5)  # the default is 0
    with pytest.raises(CheckpointError, match=r"kl_warmup \(config.toml: 5, checkpoint: 0\)"):
        evaluate(run_dir, num_samples=2, limit=4, save=False)


def test_another_runs_checkpoint_copied_in_is_refused(run_dir, tmp_path):
    other = train(small_config(tmp_path / "other", pair_kwargs={"hidden": [16], "z_dim": 3}))
    shutil.copy(other.run_dir / "best.pt", run_dir / "best.pt")
    with pytest.raises(CheckpointError) as error:
        evaluate(run_dir, num_samples=2, limit=4, save=False)
    message = str(error.value)
    assert "does not match the configuration stored in checkpoint" in message
    assert "pair_kwargs" in message and "the checkpoint comes from another run" in message


def test_a_checkpoint_that_does_not_fit_the_pair_names_both_shapes(run_dir):
    other = PAIRS["mlp"].factory((1, 8, 8), hidden=[16], z_dim=3)
    with pytest.raises(CheckpointError) as error:
        evaluate(run_dir, num_samples=2, limit=4, save=False, pair=other)
    message = str(error.value)
    assert message.startswith(
        f"checkpoint {str(run_dir / 'best.pt')!r} does not fit the pair: the run directory "
        "holds a checkpoint of another pair (or the pair's code changed since training)."
    )
    # the decoder's first layer maps z (2 in the checkpoint, 3 in the pair) to 16 units
    assert "'decoder.net.0.weight' is (16, 2) in the checkpoint, (16, 3) in the pair" in message
    assert "param 'decoder$$$net.0.weight' is (16, 2) in the checkpoint, (16, 3)" in message


PAIR_FILE = """
import pyro, pyro.distributions as dist
from torch import nn

Z = {z}

class Pair(nn.Module):
    def __init__(self, x_dim):
        super().__init__()
        self.decode = nn.Linear(Z, x_dim)
        self.encode = nn.Linear(x_dim, Z)

    def model(self, x):
        pyro.module("decode", self.decode)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encode", self.encode)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.encode(x), 1.0).to_event(1))
"""


def test_a_pair_file_edited_since_training_is_refused_and_the_file_is_named(run_cli, tmp_path):
    pair_file = tmp_path / "my_pair.py"
    pair_file.write_text(PAIR_FILE.format(z=2))
    trained = run_cli("train", "--out", "run", "--pair", f"{pair_file}:Pair", "--epochs", "1",
                      "--train-limit", "100", "--batch-size", "50", "--device", "cpu",
                      cwd=tmp_path)  # fmt: skip
    assert f"pyro-vae: loading pair file {pair_file.resolve()}" in trained.stderr.splitlines()
    pair_file.write_text(PAIR_FILE.format(z=3))
    result = run_cli("evaluate", "run", "--num-samples", "2", "--limit", "4", cwd=tmp_path,
                     check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"pyro-vae: loading pair file {pair_file.resolve()}"
    assert "the run directory holds a checkpoint of another pair" in lines[1]
    assert "'decode.weight' is (64, 2) in the checkpoint, (64, 3) in the pair" in lines[1]


# ------------------------------------------------------------------------------------------
# Pair specs: a pair class or factory, checked before anything is called


@pytest.mark.parametrize(
    "spec,kwargs",
    [
        ("os:system", {"command": "touch {marker}"}),
        ("subprocess:run", {"args": ["touch", "{marker}"]}),
        ("builtins:exec", {"source": "open('{marker}', 'w')"}),
        ("shutil:rmtree", {"path": "{folder}"}),
        ("posix:system", {"command": "touch {marker}"}),
    ],
)
def test_standard_library_callables_are_refused_as_pairs(tmp_path, spec, kwargs):
    marker, folder = tmp_path / "MARKER", tmp_path / "keep"
    folder.mkdir()
    kwargs = {
        k: [x.format(marker=marker) for x in v] if isinstance(v, list)
        else v.format(marker=marker, folder=folder)
        for k, v in kwargs.items()
    }  # fmt: skip
    with pytest.raises(PairError) as error:
        build_pair((1, 8, 8), spec, kwargs)
    module = spec.partition(":")[0]
    assert str(error.value) == (
        f"--pair {spec!r} was refused, nothing was called: module {module!r} is Python's "
        "standard library. A pair is a class or a factory function (in a FILE.py or an "
        "installed module) whose instance has methods model(x) and guide(x)"
    )
    assert not marker.exists() and folder.is_dir()


@pytest.mark.parametrize(
    "spec,kwargs",
    [
        ("torch:load", {"f": "{poison}", "weights_only": False}),
        ("numpy:load", {"file": "{poison}", "allow_pickle": True}),
        ("pyro_vae.runs.checkpoints:upgrade_checkpoint", {"path": "{poison}"}),
        ("pyro.util:torch_isnan", {"x": 1.0}),
    ],
)
def test_functions_of_libraries_that_load_files_are_refused_as_pairs(tmp_path, spec, kwargs):
    """A forged run (config.toml and the checkpoint's config) can name any installed
    function: the libraries that read pickles must not be reachable."""

    class Exec:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'MARKER')!r}, 'w')",))

    poison = tmp_path / "poison.pt"
    torch.save({"x": Exec()}, poison)
    kwargs = {k: v.format(poison=poison) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(PairError, match="is a function of a library, not a pair factory"):
        build_pair((1, 8, 8), spec, kwargs)
    with pytest.raises(PairError, match="is a function of a library"):
        build_pair((1, 8, 8), model=spec, guide=spec)
    assert not (tmp_path / "MARKER").exists()


DISGUISED = """
from functools import partial
from os import system as Pair
from subprocess import run


def model(x):
    pass


maker = partial(dict)


class HalfPair:
    def model(self, x):
        pass
"""


@pytest.mark.parametrize(
    "name,why",
    [
        ("Pair", "posix.system is Python's standard library"),
        ("run", "subprocess.run is Python's standard library"),
        ("maker", "functools.partial is Python's standard library"),
        ("HalfPair", "class HalfPair has no method(s) ['guide']"),
    ],
)
def test_a_file_cannot_pass_a_standard_library_callable_off_as_a_pair(tmp_path, name, why):
    path = tmp_path / "disguised.py"
    path.write_text(DISGUISED)
    with pytest.raises(PairError, match="was refused, nothing was called: ") as error:
        build_pair((1, 8, 8), f"{path}:{name}", {"command": "touch MARKER"})
    assert why in str(error.value)


@pytest.mark.parametrize(
    "spec,why",
    [
        ("os:system", "module 'os' is Python's standard library"),
        ("builtins:exec", "module 'builtins' is Python's standard library"),
        ("torch:exp", "is a builtin function"),
        ("pyro_vae.pairs:VAE", "it names the class VAE"),
        ("{file}:run", "subprocess.run is Python's standard library"),
    ],
)
def test_model_and_guide_specs_are_refused_the_same_way(tmp_path, spec, why):
    path = tmp_path / "disguised.py"
    path.write_text(DISGUISED)
    with pytest.raises(PairError) as error:
        build_pair((1, 8, 8), model=spec.format(file=path), guide=f"{path}:model")
    assert str(error.value).startswith(f"--model {spec.format(file=path)!r} was refused")
    assert why in str(error.value)


def test_loading_a_pair_file_says_which_file_on_stderr(tmp_path, capfd):
    path = tmp_path / "disguised.py"
    path.write_text(DISGUISED)
    build_pair((1, 8, 8), model=f"{path}:model", guide=f"{path}:model")
    lines = capfd.readouterr().err.splitlines()
    # a file runs once per process: the guide's spec finds it already loaded, unchanged
    assert lines == [f"pyro-vae: loading model file {path.resolve()}"]


# ------------------------------------------------------------------------------------------
# Constraints by name


PARAMETERIZED = [
    constraints.interval(-1.0, 2.0),
    constraints.greater_than(3.0),
    constraints.greater_than_eq(-2.0),
    constraints.less_than(1.5),
    constraints.half_open_interval(0.0, 4.0),
    constraints.interval(torch.tensor(-1.0), torch.tensor(1.0)),
    constraints.independent(constraints.positive, 1),
    constraints.independent(constraints.interval(0.0, 5.0), 1),
]


@pytest.mark.parametrize(
    "constraint", list(CONSTRAINTS.values()) + PARAMETERIZED,
    ids=list(CONSTRAINTS) + [repr(c) for c in PARAMETERIZED],
)  # fmt: skip
def test_every_library_constraint_round_trips_by_name(constraint, tmp_path):
    encoded = encode_constraint(constraint)
    torch.save({"c": encoded}, tmp_path / "c.pt")
    decoded = decode_constraint(torch.load(tmp_path / "c.pt", weights_only=True)["c"])
    assert type(decoded) is type(constraint)
    if constraint in CONSTRAINTS.values():
        assert decoded is constraint
    try:
        transform = biject_to(constraint)
    except NotImplementedError:
        return  # no transform (dependent, boolean, ...): the type is what matters
    for shape in ((3, 4, 4), (3, 6)):  # (3, 6): an unconstrained 4 x 4 correlation factor
        x = torch.randn(shape)
        try:
            expected = transform(x)
        except RuntimeError:
            continue
        assert torch.equal(biject_to(decoded)(x), expected)
        return
    raise AssertionError(f"no test input for {constraint}")


def test_constraints_are_stored_by_their_names():
    assert encode_constraint(constraints.real) == "real"
    assert encode_constraint(constraints.positive) == "positive"
    assert encode_constraint(constraints.greater_than(0.0)) == "positive"
    assert encode_constraint(constraints.interval(0.0, 1.0)) == "unit_interval"
    assert encode_constraint(constraints.lower_cholesky) == "lower_cholesky"
    assert encode_constraint(constraints.softplus_positive) == "softplus_positive"
    assert encode_constraint(constraints.interval(-1.0, 2.0)) == {
        "name": "interval", "state": {"lower_bound": -1.0, "upper_bound": 2.0}
    }  # fmt: skip
    assert encode_constraint(constraints.independent(constraints.positive, 1)) == {
        "name": "independent",
        "state": {"base_constraint": {"constraint": "positive"}, "reinterpreted_batch_ndims": 1},
    }


class OwnConstraint(torch.distributions.constraints.Constraint):
    def check(self, value):
        return value > 0


def _exp_transform(constraint):
    return torch.distributions.transforms.ExpTransform()


# a user's constraint needs a transform for pyro.param (registered for this class only)
biject_to.register(OwnConstraint, _exp_transform)
transform_to.register(OwnConstraint, _exp_transform)


def test_a_constraint_class_of_ones_own_is_refused_at_save_time_naming_the_parameter(tmp_path):
    with pytest.raises(CheckpointError) as error:
        train(small_config(tmp_path / "run"), pair=_OwnConstraintPair())
    message = str(error.value)
    assert message.startswith(
        f"parameter 'rate': constraint {OwnConstraint.__module__}.OwnConstraint is not one of "
        "torch.distributions.constraints or pyro.distributions.constraints, so the checkpoint "
        "cannot hold it."
    )
    assert "constraints.positive" in message
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


class _OwnConstraintPair(torch.nn.Module):
    """An mlp pair whose model also registers a parameter under a constraint of its own."""

    def __init__(self):
        super().__init__()
        self.inner = PAIRS["mlp"].factory((1, 8, 8), hidden=[16], z_dim=2)

    def model(self, x):
        pyro.param("rate", x.new_ones(2), constraint=OwnConstraint())
        self.inner.model(x)

    def guide(self, x):
        self.inner.guide(x)


def test_save_refuses_a_state_that_weights_only_could_not_read(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint\['extra'\] \(pathlib\.PosixPath\)"):
        save_checkpoint({"extra": Path("x")}, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


# ------------------------------------------------------------------------------------------
# Every kind of run round-trips bit for bit

RUN_KINDS = {
    "mlp": dict(),
    "sbn-tracegraph-nn": dict(pair="sbn", pair_kwargs={"z_dim": 8}, objective="tracegraph",
                              baseline="nn", baseline_hidden=[8]),
    "sbn-tracegraph-avg": dict(pair="sbn", pair_kwargs={"z_dim": 8}, objective="tracegraph",
                               baseline="avg"),
    "linear-gaussian-full": dict(pair="linear-gaussian", binarize="none",
                                 pair_kwargs={"z_dim": 2, "covariance": "full"}),
    "bayesian-decoder-positive": dict(pair=f"{PAIRS_DIR}/bayesian_decoder.py:BayesianDecoderVAE",
                                      pair_kwargs={"z_dim": 2, "hidden": 8}),
}  # fmt: skip


def _plain(value, where="checkpoint"):
    """Every leaf a tensor, number, string or None; containers dict, list, tuple."""
    if isinstance(value, dict | OrderedDict):
        for key, item in value.items():
            _plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _plain(item, f"{where}[{index}]")
    else:
        assert isinstance(value, torch.Tensor | str | int | float | type(None)), (where, value)


def _assert_equal(a, b, where="checkpoint"):
    """Equal leaf by leaf, tensors bit for bit (the seconds of each epoch aside)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key not in ("seconds", "train_seconds", "out"):
                _assert_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{index}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("kind", list(RUN_KINDS))
def test_every_run_kind_resumes_bit_exact_from_a_weights_only_checkpoint(tmp_path, kind):
    kwargs = {**RUN_KINDS[kind], "epochs": 2}
    whole = train(small_config(tmp_path / "whole", **kwargs))
    train(small_config(tmp_path / "parts", **{**kwargs, "epochs": 1}))
    parts = train(small_config(tmp_path / "parts", **kwargs), resume=True)
    assert [r["train_loss"] for r in parts.history] == [r["train_loss"] for r in whole.history]
    for name in ("checkpoint.pt", "best.pt"):
        # readable with nothing allowlisted, and nothing but plain values inside
        raw = torch.load(whole.run_dir / name, weights_only=True)
        _plain(raw)
        a, b = load_checkpoint(whole.run_dir / name), load_checkpoint(parts.run_dir / name)
        _assert_equal(a, b)  # params, module, optimizer, RNG states, history: bit for bit
    state = load_checkpoint(whole.run_dir / "checkpoint.pt")
    assert state["torch_version"] == str(torch.__version__)
    assert state["rng"]["numpy"]["bit_generator"] == "MT19937"
    assert state["rng"]["numpy"]["key"].shape == (624,)
    saved_constraints = set(state["params"]["constraints"].values())
    assert saved_constraints == ({"real", "positive"} if "positive" in kind else {"real"})
    summary = evaluate(whole.run_dir, num_samples=4, limit=8, save=False)
    again = evaluate(parts.run_dir, num_samples=4, limit=8, save=False)
    assert summary["log_px"] == again["log_px"]


def test_numpy_and_python_rng_states_come_back_bit_for_bit():
    np.random.seed(7)  # noqa: NPY002 -- the global state pyro seeds
    np.random.standard_normal()  # noqa: NPY002 -- a Gaussian is cached in the state now
    state = rng_state(torch.device("cpu"))
    _plain(state)
    expected = (np.random.standard_normal(3), random.random(), torch.rand(2))  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002
    random.seed(0)
    torch.manual_seed(0)
    set_rng_state(state, torch.device("cpu"))
    got = (np.random.standard_normal(3), random.random(), torch.rand(2))  # noqa: NPY002
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1]
    assert torch.equal(expected[2], got[2])
