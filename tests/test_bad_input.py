"""Every input a user can get wrong ends in one clear paragraph and exit status 2.

Through the command line, as a user runs it (a subprocess, no traceback), and at the Python
level for the table that checks TOML values against :class:`TrainConfig`'s annotations.
"""

import errno
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pyro_vae import cli
from pyro_vae.runs import files
from pyro_vae.runs.config import (
    FIELD_TYPES,
    FIELDS,
    ConfigError,
    TrainConfig,
    load_toml,
    resolve,
    unused_settings,
)

TINY = ["--epochs", "1", "--train-limit", "100", "--device", "cpu",
        "--pair-kwargs", '{"hidden": [16], "z_dim": 2}']  # fmt: skip


def refused(result, *words):
    """Exit 2, one message naming each of ``words``, and no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


@pytest.fixture(scope="module")
def digits_run(run_cli, tmp_path_factory):
    """A one-epoch digits run for the commands that read a run."""
    cwd = tmp_path_factory.mktemp("bad_input")
    run_cli("train", "--out", "run", *TINY, cwd=cwd)
    return cwd / "run"


# ------------------------------------------------------------------------------------------
# TOML values against the field types

# (TOML line, key, what the message says is expected)
BAD_TOML = [
    ('epochs = "ten"', "epochs", "expected an integer"),
    ('lr = "0.001"', "lr", "expected a number; write it without quotes: lr = 0.001"),
    ("epochs = [1]", "epochs", "expected an integer"),
    ("device = 5", "device", "expected a string"),
    ('seed = "0"', "seed", "expected an integer; write it without quotes: seed = 0"),
    ('train_limit = "10"', "train_limit", "expected an integer or no value"),
    ("batch_size = 1.5", "batch_size", "expected an integer"),
    ('drop_last = "yes"', "drop_last", "expected true or false"),
    ("pair_kwargs = 3", "pair_kwargs", "expected a table of keyword arguments"),
    ('baseline_hidden = "a"', "baseline_hidden", "expected a list of integers"),
    ("baseline_hidden = [1.5]", "baseline_hidden", "expected a list of integers"),
    ("epochs = true", "epochs", "expected an integer"),  # a bool is no integer
    ("num_particles = 2.0", "num_particles", "expected an integer"),
    ('beta = "1"', "beta", "expected a number"),
]


@pytest.mark.parametrize("line, key, expected", BAD_TOML, ids=[c[0] for c in BAD_TOML])
def test_a_toml_value_of_the_wrong_type_names_file_key_value_and_type(tmp_path, line, key,
                                                                      expected):  # fmt: skip
    path = tmp_path / "bad.toml"
    path.write_text(f"[train]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: wrong type: {line} is "), message
    assert expected in message


def test_every_bad_key_of_a_file_is_named_in_one_message(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('epochs = "ten"\nlr = 0.01\ndevice = 5\n')
    with pytest.raises(ConfigError, match=r'epochs = "ten" is a string.*; device = 5 is an'):
        load_toml(path)


def test_values_of_the_right_type_pass_and_ints_become_floats(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(
        "lr = 1\nepochs = 3\ntrain_limit = 200\ndrop_last = true\nbaseline_hidden = [8, 4]\n"
        'pair_kwargs = {z_dim = 2}\ndevice = "cpu"\npixel_scale = 255\n'
    )
    values = load_toml(path)
    assert values["lr"] == 1.0 and isinstance(values["lr"], float)
    assert values["pixel_scale"] == "255"  # a TOML number for the string choice
    config = TrainConfig(**values).validate()
    assert (config.epochs, config.train_limit, config.drop_last) == (3, 200, True)


# (keyword, value): each wrong for its annotation
BAD_PYTHON = [
    ("epochs", "ten"), ("lr", "0.001"), ("epochs", [1]), ("device", 5), ("seed", "0"),
    ("train_limit", "10"), ("batch_size", 1.5), ("drop_last", "yes"), ("pair_kwargs", 3),
    ("baseline_hidden", "a"), ("epochs", True), ("baseline_lr", "fast"), ("dataset", None),
]  # fmt: skip


@pytest.mark.parametrize("key, value", BAD_PYTHON, ids=[f"{k}={v!r}" for k, v in BAD_PYTHON])
def test_validate_checks_values_given_from_python_against_the_annotations(key, value):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{key: value}).validate()
    flag = "--" + key.replace("_", "-")
    assert f"TrainConfig: wrong type: {key}={value!r} ({flag}) is " in str(caught.value)


def test_flag_values_from_python_get_the_same_check():
    with pytest.raises(ConfigError, match=r"epochs='ten' \(--epochs\) is a string"):
        resolve({}, {"epochs": "ten"})


def test_numpy_scalars_and_tuples_become_plain_values():
    config = TrainConfig(seed=np.int64(3), lr=np.float32(0.5), baseline_hidden=(4, 2)).validate()
    assert type(config.seed) is int and type(config.lr) is float
    assert config.baseline_hidden == [4, 2]


def test_every_field_annotation_is_in_the_type_table():
    # A new field with an annotation the table cannot check would raise KeyError in validate.
    TrainConfig().validate()
    assert set(FIELD_TYPES) == set(TrainConfig().to_dict())


@pytest.mark.parametrize(
    "line, key", [(case[0], case[1]) for case in BAD_TOML[:10]], ids=[c[0] for c in BAD_TOML[:10]]
)
def test_cli_refuses_a_toml_value_of_the_wrong_type(run_cli, tmp_path, line, key):
    (tmp_path / "bad.toml").write_text(f"{line}\n")
    result = run_cli("train", "--config", "bad.toml", "--out", "run", cwd=tmp_path, check=False)
    refused(result, "bad.toml", f"{line} is", "expected")
    assert not (tmp_path / "run").exists()  # refused before anything is made


def test_a_run_directory_whose_config_toml_has_a_wrong_type_is_named(run_cli, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text('[train]\nepochs = "ten"\n')
    result = run_cli("evaluate", "run", cwd=tmp_path, check=False)
    refused(result, "config.toml", 'epochs = "ten" is a string, expected an integer')


# ------------------------------------------------------------------------------------------
# --out


def test_train_out_naming_an_existing_file(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("a file\n")
    result = run_cli("train", "--out", "notes.txt", *TINY, cwd=tmp_path, check=False)
    refused(result, "--out 'notes.txt' is an existing file, not a folder", "choose another")


def test_train_out_under_a_file(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("a file\n")
    result = run_cli("train", "--out", "notes.txt/run", *TINY, cwd=tmp_path, check=False)
    refused(result, "--out 'notes.txt/run'", "'notes.txt' is a file", "choose another --out")


def test_train_out_in_a_place_that_cannot_be_written(run_cli, tmp_path):
    # /proc refuses new entries even to root, for whom a read-only chmod changes nothing.
    result = run_cli("train", "--out", "/proc/pyro-vae-run", *TINY, cwd=tmp_path, check=False)
    refused(result, "--out '/proc/pyro-vae-run': cannot make or write to this folder",
            "choose another --out")  # fmt: skip


@pytest.mark.parametrize("command", ["convergence", "gradvar", "diagnose"])
def test_out_of_the_run_reading_commands_is_checked(run_cli, tmp_path, command):
    (tmp_path / "notes.txt").write_text("a file\n")
    result = run_cli(command, "run", "--out", "notes.txt/x", cwd=tmp_path, check=False)
    refused(result, f"pyro-vae {command}: error: --out 'notes.txt/x'", "'notes.txt' is a file")


def test_sample_out_a_folder_or_under_a_file(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("a file\n")
    refused(run_cli("sample", "run", "--out", ".", cwd=tmp_path, check=False),
            "--out '.' is a folder; name the PNG file")  # fmt: skip
    refused(run_cli("sample", "run", "--out", "notes.txt/s.png", cwd=tmp_path, check=False),
            "'notes.txt' is an existing file")  # fmt: skip


def test_prepare_run_dir_makes_the_folder_and_leaves_nothing_in_it(tmp_path):
    from pyro_vae.training.train import prepare_run_dir

    run_dir = prepare_run_dir(tmp_path / "a" / "b")
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []
    assert prepare_run_dir(run_dir) == run_dir  # an existing folder is fine


# ------------------------------------------------------------------------------------------
# A full disk

WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EFBIG: "ulimit -f",
    errno.EDQUOT: "quota",
    errno.EROFS: "read-only",
    errno.EACCES: "permission denied",
}


@pytest.mark.parametrize("code", list(WRITE_FAILURES), ids=errno.errorcode.get)
def test_a_failed_write_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch,
                                                                    code):  # fmt: skip
    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing_write)
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(files.WriteError) as caught:
        files.atomic_write_bytes(target, b"x" * 1000)
    message = str(caught.value)
    assert message.startswith(f"could not write {str(target)!r} ({os.strerror(code)}): ")
    assert WRITE_FAILURES[code] in message and "--out" in message
    assert isinstance(caught.value, OSError) and caught.value.errno == code
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_unchanged_and_leave_no_temporary_file(tmp_path, monkeypatch):
    def failing_write(fd, data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError) as caught:
        files.atomic_write_bytes(tmp_path / "metrics.csv", b"epoch\n")
    assert type(caught.value) is OSError and caught.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_writes_everything_even_when_os_write_is_short(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    files.atomic_write_bytes(tmp_path / "a.bin", bytes(range(256)) * 4)
    assert (tmp_path / "a.bin").read_bytes() == bytes(range(256)) * 4


# Loaded by the CLI's Python at start-up (PYTHONPATH): every write to one of the temporary
# files of atomic_write_bytes fails as a full disk does.
FULL_DISK_HOOK = textwrap.dedent(
    """
    import errno, os

    _write = os.write
    _code = getattr(errno, os.environ["PYRO_VAE_TEST_WRITE_ERRNO"])

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith(".tmp"):
            raise OSError(_code, os.strerror(_code))
        return _write(fd, data)

    os.write = write
    """
)


@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG"])
def test_train_on_a_full_disk_is_a_message_and_leaves_no_temporary_file(run_cli, tmp_path,
                                                                        code):  # fmt: skip
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell the run's files apart")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_DISK_HOOK)
    env = {"PYTHONPATH": str(hook), "PYRO_VAE_TEST_WRITE_ERRNO": code}
    result = run_cli("train", "--out", "run", *TINY, cwd=tmp_path, env=env, check=False)
    refused(result, "could not write", "run/", os.strerror(getattr(errno, code)), "--out")
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------
# Numeric flags of the commands that read a run


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["evaluate", "--num-samples", "0"], "--num-samples must be >= 1, got 0"),
        (["gradvar", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["convergence", "--points", "0"], "--points must be >= 1, got 0"),
        (["diagnose", "--gap-particles", "0"], "--gap-particles 0: must be at least 1"),
        (["sample", "--num", "0", "--out", "s.png"], "--num must be >= 1, got 0"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_a_number_that_must_be_positive(run_cli, digits_run, args, message):
    command, *flags = args
    result = run_cli(command, digits_run, *flags, cwd=digits_run.parent, check=False)
    refused(result, f"pyro-vae {command}: error: {message}")


def test_sample_takes_checkpoint_like_the_other_commands(run_cli, digits_run, monkeypatch):
    result = run_cli("sample", digits_run, "--out", "last.png", "--checkpoint", "checkpoint.pt",
                     cwd=digits_run.parent)  # fmt: skip
    assert (digits_run.parent / "last.png").is_file() and "wrote" in result.stdout
    other = run_cli("sample", digits_run, "--out", "x.png", "--checkpoint", "other.pt",
                    cwd=digits_run.parent, check=False)  # fmt: skip
    refused(other, "--checkpoint", "invalid choice")
    seen = {}

    def sample_figure(run_dir, out, **options):  # with_result=True: the files it wrote
        seen.update(options)
        return {"png": str(out)}

    monkeypatch.setattr("pyro_vae.analysis.sampling.sample_figure", sample_figure)
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *args: None)  # pytest's SIGTERM
    out = digits_run.parent / "s.png"
    assert cli.main(["sample", str(digits_run), "--out", str(out), "--checkpoint",
                     "checkpoint.pt"]) == 0  # fmt: skip
    assert seen["checkpoint"] == "checkpoint.pt"
    cli.main(["sample", str(digits_run), "--out", str(out)])
    assert seen["checkpoint"] == "best.pt"


# ------------------------------------------------------------------------------------------
# Files that are not NumPy arrays


def test_a_text_file_named_npy(run_cli, tmp_path):
    (tmp_path / "data.npy").write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    result = run_cli("train", "--dataset", "data.npy", "--out", "run", *TINY, cwd=tmp_path,
                     check=False)  # fmt: skip
    message = refused(result, "data.npy is not a NumPy array file", "numpy.save")
    assert "allow_pickle" not in message and "pickle.load" not in message


def test_a_text_file_named_npz(run_cli, tmp_path):
    (tmp_path / "data.npz").write_text("x,y\n1,2\n")
    result = run_cli("train", "--dataset", "data.npz", "--out", "run", *TINY, cwd=tmp_path,
                     check=False)  # fmt: skip
    refused(result, "data.npz is not a NumPy .npz archive", "numpy.savez")


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_an_object_array_is_refused_without_advice_to_unpickle(run_cli, tmp_path, suffix):
    objects = np.array([{"a": 1}] * 20, dtype=object)
    if suffix == ".npy":
        np.save(tmp_path / "data.npy", objects, allow_pickle=True)
    else:
        np.savez(tmp_path / "data.npz", train=objects, test=objects)
    result = run_cli("train", "--dataset", f"data{suffix}", "--out", "run", *TINY,
                     cwd=tmp_path, check=False)  # fmt: skip
    message = refused(result, "holds Python objects", "save a numeric array")
    assert "allow_pickle" not in message


def test_an_empty_file_named_npy(tmp_path):
    from pyro_vae.data import DataError, load_dataset

    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError, match="is not a NumPy array file: it is empty"):
        load_dataset(str(tmp_path / "empty.npy"))


# ------------------------------------------------------------------------------------------
# Careless inputs (issue 22): each case as the user would type it, one paragraph and exit 2

TUTORIAL_VAE = str(Path(__file__).parent / "pairs" / "tutorial_vae.py")

# (id, arguments after `pyro-vae train --out run`, words the message must hold); every one
# is refused before the first step
CARELESS_TRAIN = [
    ("hidden -5", ["--pair-kwargs", '{"hidden": [-5]}'],
     ["--pair-kwargs", "hidden must be a list of layer widths", "got [-5]"]),
    ("seed -1", ["--seed", "-1"], ["--seed -1: must be in [0, 2**32 - 1]"]),
    ("config a folder", ["--config", "{tmp}"],
     ["--config", "is a folder, not a TOML file", "name the file"]),
    ("z_dim 0", ["--pair-kwargs", '{"z_dim": 0}'],
     ["z_dim must be an integer >= 1 (the number of latent dimensions), got 0"]),
    ("out empty", ["--out", ""], ["--out '': must be a folder", "current folder"]),
    ("alpha without renyi", ["--alpha", "0.7"],
     ["--alpha 0.7 has no effect here", "--objective elbo", "Drop --alpha, or pass "
      "--objective renyi"]),
    ("pixel-scale 255 on digits", ["--pixel-scale", "255"],
     ["--pixel-scale 255 has no effect here", "'digits' is always scaled to [0, 1] (here /16)"]),
    ("guide without to_event", ["--pair", f"{TUTORIAL_VAE}:ForgotToEvent"],
     ["guide's site 'latent'", "plate('data')", "batch shape (16, 2) and event shape ()",
      "add .to_event(1)", "batch shape (16,) and event shape (2,)"]),
    ("input width of another data set", ["--pair", f"{TUTORIAL_VAE}:VAE", "--pair-kwargs",
                                         '{"input_dim": 784}'],
     ["reshapes x to [-1, 784], 784 values per point, but the data have 64 values per point",
      "input_dim", "make it 64", "fills those arguments from the data"]),
    ("1-D .npy", ["--dataset", "{tmp}/flat.npy"],
     ["flat.npy has shape (500,): one axis only", "rows", "(N, D)", "x.reshape(-1, 1)"]),
    ("a folder as --dataset", ["--dataset", "{tmp}"],
     ["is a folder, not a data set", "flat.npy: pass one of those files", "digits", "--data-dir"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def careless_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("careless")
    np.save(folder / "flat.npy", np.linspace(0, 1, 500, dtype=np.float32))
    return folder


@pytest.mark.parametrize("case", CARELESS_TRAIN, ids=[case[0] for case in CARELESS_TRAIN])
def test_a_careless_train_command_is_one_paragraph(run_cli, tmp_path, careless_files, case):
    _, args, words = case
    args = [arg.replace("{tmp}", str(careless_files)) for arg in args]
    result = run_cli("train", "--out", "run", "--epochs", "1", "--train-limit", "100", *args,
                     cwd=tmp_path, check=False)  # fmt: skip
    message = refused(result, *words)
    assert message.count("error:") == 1 and "Trace Shapes" not in message, message
    assert not (tmp_path / "config.toml").exists()  # --out '' wrote nothing here


def test_a_layer_of_another_input_width_is_told_in_terms_of_the_data():
    import torch

    from pyro_vae.pairs.shape_errors import width_mismatch_message

    x = torch.zeros(16, 1, 8, 8)
    try:
        torch.nn.Linear(10, 4)(x.reshape(16, -1))
    except RuntimeError as error:
        message = width_mismatch_message("guide", error, x)
    assert message.startswith("the guide failed on a batch of shape (16, 1, 8, 8): a layer "
                              "takes 10 inputs per point, but the data have 64 values per "
                              "point (RuntimeError: mat1 and mat2 shapes")  # fmt: skip
    assert "make it 64" in message
    try:
        torch.nn.Linear(64, 4)(torch.zeros(16, 3))  # deeper in a network: not the data's width
    except RuntimeError as error:
        assert width_mismatch_message("guide", error, x) is None


def test_a_loss_that_explodes_while_finite_is_warned_about_once(run_cli, tmp_path):
    result = run_cli("train", "--out", "run", "--epochs", "2", "--train-limit", "100",
                     "--batch-size", "20", "--lr", "1e6", cwd=tmp_path)  # fmt: skip
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "the mean training loss grew from " in warnings[0]
    assert "(epoch 1, step 1)" in warnings[0] and "times as large" in warnings[0]
    assert "Lower --lr (now 1e+06; try --lr 100000)" in warnings[0]
    assert "--clip-norm" in warnings[0] and "data's scale" in warnings[0]


def test_loss_growth_warns_at_a_hundred_times_the_first_loss(capsys):
    from pyro_vae.training.outputs import LossGrowth

    growth = LossGrowth(TrainConfig(lr=0.5), [])
    assert not growth.check(44.0, "epoch 1, step 1")  # the first value
    assert not growth.check(4399.0, "epoch 1, step 2")
    assert growth.check(4400.0, "epoch 1, step 3")  # 44 + 99 * 44
    assert not growth.check(1e9, "epoch 1, step 4")  # once
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert "grew from 44 (epoch 1, step 1) to 4400 (epoch 1, step 3), 100 times" in err
    assert "try --lr 0.05" in err
    # a loss below zero or near it: the growth is measured against max(|first|, 1)
    negative = LossGrowth(TrainConfig(), [{"train_loss": -50.0}])
    assert not negative.check(4899.0, "x") and negative.check(4900.0, "y")
    small = LossGrowth(TrainConfig(), [])
    small.check(0.5, "a")
    assert not small.check(99.4, "b") and small.check(99.5, "c")
    assert not LossGrowth(TrainConfig(), [{"train_loss": 44.0}]).check(float("inf"), "z")


# (the field, its flag and value, the other settings under which it has no effect, flags
# that give it one)
UNUSED = [
    ("alpha", ["--alpha", "0.7"], [], ["--objective", "renyi"]),
    ("baseline_lr", ["--baseline-lr", "0.1"], [], ["--objective", "tracegraph", "--baseline",
                                                    "nn"]),
    ("baseline_hidden", ["--baseline-hidden", "20,10"], [],
     ["--objective", "tracegraph", "--baseline", "nn"]),
    ("baseline_beta", ["--baseline-beta", "0.5"], [],
     ["--objective", "tracegraph", "--baseline", "avg"]),
    ("lr_gamma", ["--lr-gamma", "0.1"], [], ["--lr-schedule", "step"]),
    ("lr_step_size", ["--lr-step-size", "3"], [], ["--lr-schedule", "step"]),
    ("lr_min", ["--lr-min", "1e-5"], [], ["--lr-schedule", "cosine"]),
    ("enumerate", ["--enumerate", "sequential"], [], ["--objective", "enum"]),
    ("adam_eps", ["--adam-eps", "1e-4"], ["--optimizer", "sgd"], ["--optimizer", "adam"]),
    ("adam_betas", ["--adam-betas", "0.8", "0.9"], ["--optimizer", "sgd"],
     ["--optimizer", "adamw"]),
    ("kl_warmup_start", ["--kl-warmup-start", "0.5"], ["--kl-warmup", "0"], ["--kl-warmup", "10"]),
    ("pixel_scale", ["--pixel-scale", "255"], [], ["--dataset", "x.npy"]),
    ("base_url", ["--base-url", "http://example.org"], [], ["--download"]),
    ("download", ["--download"], ["--dataset", "x.npy"], ["--dataset", "mnist"]),
]  # fmt: skip


def _resolved(argv: list[str], file_values: dict | None = None) -> TrainConfig:
    """The config of ``pyro-vae train ARGV`` with ``file_values`` as from --config."""
    from pyro_vae.cli import build_parser

    args = build_parser().parse_args(["train", *argv])
    return resolve(file_values or {}, {name: getattr(args, name, None) for name in FIELDS})


@pytest.mark.parametrize("field, flag, context, needs", UNUSED, ids=[c[0] for c in UNUSED])
def test_a_flag_without_effect_is_refused_and_from_a_file_only_warned(field, flag, context,
                                                                      needs):  # fmt: skip
    name = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=f"^{name}.* has no effect here: .*Drop {name}, or "):
        _resolved(context + flag)
    config = _resolved(context + flag + needs)  # with the setting that reads it: fine
    assert field not in unused_settings(config)
    # the same value from a file: no error here, a warning when the run starts
    value = getattr(config, field)
    assert list(unused_settings(_resolved(context, {field: value}))) == [field]
    # the default value, from a file or given: never a complaint
    default = getattr(TrainConfig(), field)
    assert unused_settings(_resolved(context, {field: default})) == {}


def test_a_runs_own_config_toml_reads_back_without_complaint(tmp_path):
    from pyro_vae.runs.config import dumps_toml

    path = tmp_path / "config.toml"
    path.write_text(dumps_toml(TrainConfig(objective="renyi", alpha=0.7).to_dict()))
    values = load_toml(path)
    assert unused_settings(resolve(values, {})) == {}
    # switching the objective on the command line leaves alpha = 0.7 from the file: warned
    config = resolve(values, {"objective": "elbo"})
    assert list(unused_settings(config)) == ["alpha"]


def test_a_config_file_value_without_effect_is_warned_about_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *args: None)  # pytest's SIGTERM
    (tmp_path / "run.toml").write_text("alpha = 0.7\nlr_gamma = 0.1\n")
    argv = ["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--train-limit", "40", "--batch-size", "40", "--device", "cpu",
            "--pair-kwargs", '{"hidden": [8], "z_dim": 2}']  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("warning: alpha = 0.7 has no effect: it is Renyi's alpha") == 1, err
    assert err.count("warning: lr_gamma = 0.1 has no effect: it is for --lr-schedule step") == 1


# (id, argv of a command that reads a run or lists, words of its message); {run}: a run
CARELESS_OTHERS = [
    ("train --config ''", ["train", "--out", "{tmp}/r", "--config", ""], ["--config '' is empty"]),
    ("train --data-dir ''", ["train", "--out", "{tmp}/r", "--data-dir", ""],
     ["--data-dir '' is empty"]),
    ("train --dataset ''", ["train", "--out", "{tmp}/r", "--dataset", ""],
     ["--dataset '' is empty", "digits"]),
    ("train --dataset a 1-row .csv", ["train", "--out", "{tmp}/r", "--dataset", "{tmp}/x.csv"],
     ["x.csv has 1 row;", "leaving fewer than 2 to train on"]),
    ("train --seed 2**32", ["train", "--out", "{tmp}/r", "--seed", "4294967296"],
     ["--seed 4294967296: must be in [0, 2**32 - 1]"]),
    ("pair-kwargs z_dim true", ["train", "--out", "{tmp}/r", "--pair-kwargs", '{"z_dim": true}'],
     ["z_dim must be an integer >= 1", "got True"]),
    ("pair-kwargs hidden 16.5", ["train", "--out", "{tmp}/r", "--pair-kwargs",
                                 '{"hidden": [16.5]}'], ["hidden must be a list of layer widths"]),
    ("pair-kwargs hidden 200", ["train", "--out", "{tmp}/r", "--pair-kwargs", '{"hidden": 200}'],
     ["hidden must be a list of layer widths", '{"hidden": [200, 200]}']),
    ("gmvae num_components 0", ["train", "--out", "{tmp}/r", "--pair", "gmvae", "--pair-kwargs",
                                '{"num_components": 0}'], ["num_components must be an integer"]),
    ("conv hidden 0", ["train", "--out", "{tmp}/r", "--pair", "conv", "--pair-kwargs",
                       '{"hidden": 0}'], ["hidden must be an integer >= 1 (a layer width)"]),
    ("flow_hidden [0]", ["train", "--out", "{tmp}/r", "--pair-kwargs",
                         '{"flow": "iaf", "flow_hidden": [0]}'], ["flow_hidden must be a list"]),
    ("--nnodes without --nproc-per-node", ["train", "--out", "{tmp}/r", "--nnodes", "2"],
     ["--nnodes has no effect without --nproc-per-node N"]),
    ("--master-port 99999", ["train", "--out", "{tmp}/r", "--nproc-per-node", "1",
                             "--master-port", "99999"], ["--master-port 99999: must be a port"]),
    ("--master-addr on one machine", ["train", "--out", "{tmp}/r", "--nproc-per-node", "1",
                                      "--master-addr", "h", "--master-port", "1234"],
     ["one machine (--nnodes 1)", "drop them"]),
    ("evaluate --device ''", ["evaluate", "{run}", "--device", ""], ["--device '': must be"]),
    ("convergence --seed -1", ["convergence", "{run}", "--seed", "-1"], ["--seed -1: must be"]),
    ("convergence --out ''", ["convergence", "{run}", "--out", ""], ["--out '' is empty"]),
    ("gradvar --out ''", ["gradvar", "{run}", "--out", ""], ["--out '' is empty"]),
    ("diagnose --seed -1", ["diagnose", "{run}", "--seed", "-1"], ["--seed -1: must be"]),
    ("latents --out ''", ["latents", "{run}", "--out", ""], ["--out '' is empty"]),
    ("evaluate --data-dir ''", ["evaluate", "{run}", "--data-dir", ""], ["--data-dir '' is empty"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CARELESS_OTHERS, ids=[case[0] for case in CARELESS_OTHERS])
def test_other_careless_commands_are_one_message(digits_run, tmp_path, monkeypatch, capsys, case):
    # in this process (cli.main, as the console script calls it): each fails before any work
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *args: None)  # pytest's SIGTERM
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    _, argv, words = case
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(digits_run)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyro-vae {argv[0]}: error: ") and err.count("error:") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not [*tmp_path.rglob("config.toml"), *tmp_path.rglob("*.pt")]  # no run began


def test_a_one_axis_split_of_an_npz_names_the_array_and_the_way_out(tmp_path):
    from pyro_vae.data import DataError, load_dataset

    np.savez(tmp_path / "d.npz", train=np.zeros(40, np.float32), valid=np.zeros((5, 3)),
             test=np.zeros((5, 3)))  # fmt: skip
    with pytest.raises(DataError, match=r"d.npz array 'train' has shape \(40,\): one axis only, "
                       r"but pyro_vae reads the rows .* x.reshape\(N, D\)"):  # fmt: skip
        load_dataset(str(tmp_path / "d.npz"))


# ------------------------------------------------------------------------------------------
# --help: every flag says its default (or that it is required, or is a switch)


def _flag_problems() -> list[str]:
    """Each option of each subcommand whose help names no default, is not required or a
    switch (a flag of no value: its default is off); positional arguments are exempt."""
    import argparse

    from pyro_vae.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    problems = []
    for name, sub in commands.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            flag = f"{name} {action.option_strings[-1]}"
            if not action.help or action.help == argparse.SUPPRESS:
                problems.append(f"{flag}: no help text")
                continue
            text = formatter._expand_help(action)  # %(default)s filled in
            switch = action.nargs == 0
            required = action.required or "(required" in text
            if not (switch or required or "default" in text.lower()):
                problems.append(f"{flag}: help names no default: {text!r}")
    return problems


def test_every_flag_of_every_command_shows_its_default():
    assert _flag_problems() == []


def test_the_flag_walk_can_fail(monkeypatch):
    import pyro_vae.cli.catalog as catalog

    def with_a_bare_flag(subparsers):
        subparsers.add_parser("list").add_argument("--bare", type=int)

    monkeypatch.setattr("pyro_vae.cli._add_list", with_a_bare_flag)
    assert _flag_problems() == ["list --bare: no help text"]
    assert catalog  # the real `list` is untouched


def test_help_shows_the_defaults_of_train_config_and_that_out_is_required():
    import argparse

    from pyro_vae.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flat = " ".join(commands.choices["train"].format_help().split())
    default = TrainConfig()
    for text in ("passes over the training set (default", f"(default {default.batch_size})",
                 f"(default {default.lr:g})", f"(default {default.seed})",
                 f"(default {default.objective})", f"(default {default.num_particles})",
                 "(required: here, or as out in --config)"):  # fmt: skip
        assert text in flat, text
    evaluate = " ".join(commands.choices["evaluate"].format_help().split())
    assert "importance samples per data point (default 1000)" in evaluate


# ------------------------------------------------------------------------------------------
# The catalogue: every bad input we know of, through the command line (pytest -m slow -s)

BAD_TRAIN = [
    ("unknown data set", ["--dataset", "nosuch"]),
    ("missing .npy", ["--dataset", "missing.npy"]),
    ("text file named .npy", ["--dataset", "{files}/text.npy"]),
    ("text file named .npz", ["--dataset", "{files}/text.npz"]),
    ("object array .npy", ["--dataset", "{files}/objects.npy"]),
    ("empty .npy", ["--dataset", "{files}/empty.npy"]),
    ("0-255 data, dynamic binarization, no scaling",
     ["--dataset", "{files}/bytes.npy", "--pixel-scale", "none", "--binarize", "dynamic"]),
    ("MNIST in an empty --data-dir", ["--dataset", "mnist", "--data-dir", "{files}/empty"]),
    ("unknown pair", ["--pair", "nosuch"]),
    ("pair file missing", ["--pair", "nofile.py:VAE"]),
    ("pair name missing from file", ["--pair", "{files}/pair.py:Missing"]),
    ("pair file that raises", ["--pair", "{files}/raises.py:VAE"]),
    ("pair os:system", ["--pair", "os:system", "--pair-kwargs", '{"command": "touch PWNED"}']),
    ("pair builtins:eval", ["--pair", "builtins:eval"]),
    ("pair subprocess:run", ["--pair", "subprocess:run"]),
    ("model/guide os:system", ["--model", "os:system", "--guide", "os:system"]),
    ("model without guide", ["--model", "{files}/pair.py:model"]),
    ("pair-kwargs not JSON", ["--pair-kwargs", "{hidden: 3}"]),
    ("pair-kwargs a list", ["--pair-kwargs", "[1, 2]"]),
    ("pair-kwargs unknown argument", ["--pair-kwargs", '{"bogus": 1}']),
    ("pair-kwargs wrong type", ["--pair-kwargs", '{"z_dim": "two"}']),
    ("lr negative", ["--lr", "-1"]),
    ("lr zero", ["--lr", "0"]),
    ("lr not a number", ["--lr", "fast"]),
    ("epochs zero", ["--epochs", "0"]),
    ("batch size zero", ["--batch-size", "0"]),
    ("batch size negative", ["--batch-size", "-5"]),
    ("particles zero", ["--num-particles", "0"]),
    ("train limit zero", ["--train-limit", "0"]),
    ("beta negative", ["--beta", "-1"]),
    ("kl warm-up negative", ["--kl-warmup", "-1"]),
    ("checkpoint-every negative", ["--checkpoint-every", "-1"]),
    ("device tpu", ["--device", "tpu"]),
    ("device cuda without a GPU", ["--device", "cuda"]),
    ("unknown objective", ["--objective", "nosuch"]),
    ("baseline without a score-function term", ["--objective", "tracegraph", "--baseline", "nn"]),
    ("drop-last leaves no batch", ["--drop-last", "--batch-size", "500"]),
    ("config file missing", ["--config", "nosuch.toml"]),
    ("config not TOML", ["--config", "{files}/syntax.toml"]),
    ("config unknown key", ["--config", "{files}/unknown.toml"]),
    *[(f"config {line}", ["--config", f"{{files}}/bad{i}.toml"]) for i, (line, _, _) in
      enumerate(BAD_TOML)],
    ("--out an existing file", ["--out", "{files}/text.npy"]),
    ("--out under a file", ["--out", "{files}/text.npy/run"]),
    ("--out unwritable", ["--out", "/proc/pyro-vae-run"]),
    ("--resume without a run", ["--resume", "--out", "{tmp}/nothing"]),
    ("a run without --resume", ["--out", "{run_a}"]),
    ("--resume with another batch size", ["--resume", "--out", "{run_b}", "--batch-size", "10"]),
    ("--resume to fewer epochs than done", ["--resume", "--out", "{run_c}", "--epochs", "1"]),
    ("--resume on a locked run", ["--resume", "--out", "{locked}", "--epochs", "3"]),
    ("pair-kwargs hidden -5", ["--pair-kwargs", '{"hidden": [-5]}']),
    ("pair-kwargs z_dim 0", ["--pair-kwargs", '{"z_dim": 0}']),
    ("seed -1", ["--seed", "-1"]),
    ("config a folder", ["--config", "{files}"]),
    ("out empty", ["--out", ""]),
    ("alpha without renyi", ["--alpha", "0.7"]),
    ("baseline-lr without nn", ["--baseline-lr", "0.1"]),
    ("lr-gamma without a schedule", ["--lr-gamma", "0.1"]),
    ("enumerate without enum", ["--enumerate", "sequential"]),
    ("pixel-scale 255 on digits", ["--pixel-scale", "255"]),
    ("guide without to_event", ["--pair", f"{TUTORIAL_VAE}:ForgotToEvent", "--pair-kwargs", "{}"]),
    ("input width of another data set", ["--pair", f"{TUTORIAL_VAE}:VAE", "--pair-kwargs",
                                         '{"input_dim": 784}']),
    ("1-D .npy", ["--dataset", "{files}/flat.npy"]),
    ("a folder as --dataset", ["--dataset", "{files}/empty"]),
]  # fmt: skip

BAD_READS = [
    ("evaluate a folder that does not exist", ["evaluate", "{tmp}/nothing"]),
    ("evaluate a folder without config.toml", ["evaluate", "{files}"]),
    ("evaluate --batch-size 0", ["evaluate", "{run}", "--batch-size", "0"]),
    ("evaluate --num-samples 0", ["evaluate", "{run}", "--num-samples", "0"]),
    ("evaluate --limit 0", ["evaluate", "{run}", "--limit", "0"]),
    ("evaluate --split nosuch", ["evaluate", "{run}", "--split", "nosuch"]),
    ("evaluate --estimator nosuch", ["evaluate", "{run}", "--estimator", "nosuch"]),
    ("evaluate --checkpoint other.pt", ["evaluate", "{run}", "--checkpoint", "other.pt"]),
    ("evaluate --device cuda without a GPU", ["evaluate", "{run}", "--device", "cuda"]),
    ("evaluate a poisoned best.pt", ["evaluate", "{poisoned}"]),
    ("sample a poisoned best.pt", ["sample", "{poisoned}", "--out", "{tmp}/s.png"]),
    ("gradvar a poisoned best.pt", ["gradvar", "{poisoned}"]),
    ("convergence a poisoned best.pt", ["convergence", "{poisoned}"]),
    ("diagnose a poisoned best.pt", ["diagnose", "{poisoned}"]),
    ("train --resume a poisoned checkpoint.pt", ["train", "--resume", "--out", "{poisoned}"]),
    ("evaluate a truncated best.pt", ["evaluate", "{truncated}"]),
    ("evaluate config.toml with pair os:system", ["evaluate", "{os_system}"]),
    ("resume a config.toml with pair os:system", ["train", "--resume", "--out", "{os_system}"]),
    ("evaluate an edited config.toml", ["evaluate", "{edited}"]),
    ("evaluate a config.toml of the wrong type", ["evaluate", "{wrong_type}"]),
    ("evaluate another run's best.pt", ["evaluate", "{other_best}"]),
    ("sample --out an existing folder", ["sample", "{run}", "--out", "{files}"]),
    ("sample --out under a file", ["sample", "{run}", "--out", "{files}/text.npy/s.png"]),
    ("sample --num 0", ["sample", "{run}", "--out", "{tmp}/s.png", "--num", "0"]),
    ("convergence --ks 0", ["convergence", "{run}", "--ks", "0"]),
    ("convergence --ks a", ["convergence", "{run}", "--ks", "a"]),
    ("convergence --points 0", ["convergence", "{run}", "--points", "0"]),
    ("gradvar --num-draws 0", ["gradvar", "{run}", "--num-draws", "0"]),
    ("gradvar --estimators nosuch", ["gradvar", "{run}", "--estimators", "nosuch"]),
    ("diagnose --points 0", ["diagnose", "{run}", "--points", "0"]),
    ("diagnose --indices out of range", ["diagnose", "{run}", "--indices", "99999"]),
    ("diagnose --out under a file", ["diagnose", "{run}", "--out", "{files}/text.npy/d"]),
]  # fmt: skip


def _catalogue_files(root: Path, run: Path, run_cli) -> dict[str, str]:
    """The files and run directories the catalogue's commands point at."""
    import shutil

    import torch

    files_dir = root / "files"
    (files_dir / "empty").mkdir(parents=True)
    (files_dir / "text.npy").write_text("0.1 0.2\n")
    (files_dir / "text.npz").write_text("x,y\n")
    np.save(files_dir / "objects.npy", np.array([{"a": 1}] * 20, dtype=object))
    (files_dir / "empty.npy").write_bytes(b"")
    np.save(files_dir / "flat.npy", np.linspace(0, 1, 500, dtype=np.float32))
    np.save(files_dir / "bytes.npy", np.full((40, 8, 8), 200, dtype=np.uint8))
    (files_dir / "pair.py").write_text("def model(x):\n    pass\n")
    (files_dir / "raises.py").write_text("raise RuntimeError('broken at import')\n")
    (files_dir / "syntax.toml").write_text("epochs = = 2\n")
    (files_dir / "unknown.toml").write_text("learning_rate = 0.1\n")
    for i, (line, _, _) in enumerate(BAD_TOML):
        (files_dir / f"bad{i}.toml").write_text(line + "\n")

    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(run, target)
        (target / "train.lock").unlink(missing_ok=True)
        return target

    class Exec:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('ran')",))

    poisoned = copy("poisoned")
    for name in ("best.pt", "checkpoint.pt"):
        state = torch.load(poisoned / name, weights_only=True)
        state["history"].append(Exec())
        torch.save(state, poisoned / name)
    truncated = copy("truncated")
    data = (truncated / "best.pt").read_bytes()
    (truncated / "best.pt").write_bytes(data[: len(data) // 2])
    os_system = copy("os_system")
    text = (os_system / "config.toml").read_text()
    text = text.replace('pair = "mlp"', 'pair = "os:system"')
    kwargs = re.search(r"^pair_kwargs = \{.*\}$", text, re.MULTILINE)  # the recorded line
    assert kwargs and '"hidden" = [16]' in kwargs.group(0), text
    text = text.replace(kwargs.group(0), 'pair_kwargs = {"command" = "touch PWNED"}')
    (os_system / "config.toml").write_text(text)
    edited = copy("edited")
    text = (edited / "config.toml").read_text()
    (edited / "config.toml").write_text(text.replace("seed = 0", "seed = 5"))
    wrong_type = copy("wrong_type")
    text = (wrong_type / "config.toml").read_text()
    (wrong_type / "config.toml").write_text(text.replace("epochs = 2", 'epochs = "two"'))
    other = root / "other"
    run_cli("train", "--out", other, *TINY[:-2], "--pair-kwargs", '{"hidden": [16], "z_dim": 3}',
            "--epochs", "2", cwd=root)  # fmt: skip
    other_best = copy("other_best")
    shutil.copy(other / "best.pt", other_best / "best.pt")
    locked = copy("locked")
    copies = {f"run_{c}": str(copy(f"run_{c}")) for c in "abc"}  # one trainer per directory
    return {
        **copies,
        "files": str(files_dir), "tmp": str(root), "run": str(run), "poisoned": str(poisoned),
        "truncated": str(truncated), "os_system": str(os_system), "edited": str(edited),
        "wrong_type": str(wrong_type), "other_best": str(other_best), "locked": str(locked),
    }  # fmt: skip


@pytest.mark.slow
def test_catalogue_of_bad_inputs_every_one_a_message(run_cli, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from pyro_vae.runs.lock import run_lock

    run = tmp_path / "run"
    run_cli("train", "--out", run, *TINY[:-2], "--pair-kwargs", '{"hidden": [16], "z_dim": 2}',
            "--epochs", "2", cwd=tmp_path)  # fmt: skip
    paths = _catalogue_files(tmp_path, run, run_cli)
    cases = [(name, ["train", *TINY, "--out", "{case}/run", *args]) for name, args in BAD_TRAIN]
    cases += BAD_READS

    def one(case):
        name, args = case
        cwd = tmp_path / "cwd" / str(abs(hash(name)))
        cwd.mkdir(parents=True)
        argv = []
        for arg in args:
            for key, value in {**paths, "case": str(cwd)}.items():
                arg = arg.replace("{" + key + "}", value)
            argv.append(arg)
        # no data set may be found outside --data-dir: the MNIST case must miss its files
        hidden = {"PYRO_VAE_DATA_DIR": paths["files"] + "/empty",
                  "PYRO_VAE_CACHE": paths["files"] + "/empty"}  # fmt: skip
        return name, argv, cwd, run_cli(*argv, cwd=cwd, check=False, env=hidden)

    with run_lock(Path(paths["locked"])), ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, cases))
    bad = []
    for name, argv, cwd, result in results:
        ran_code = list(cwd.glob("PWNED")) + list(tmp_path.glob("*/PWNED"))
        if result.returncode != 2 or "Traceback" in result.stderr or ran_code:
            bad.append(f"{name}: exit {result.returncode}, argv {argv}\n{result.stderr[-2000:]}")
        elif "error:" not in result.stderr:
            bad.append(f"{name}: no error message\n{result.stderr}")
    for name, _, _, result in results:
        print(f"{name}: {result.stderr.strip().splitlines()[-1][:160] if result.stderr else ''}")
    print(f"\n{len(results)} bad inputs: {len(results) - len(bad)} clear messages (exit 2, "
          f"no traceback), {len(bad)} not")  # fmt: skip
    assert not bad, "\n\n".join(bad)


def test_settings_the_data_make_void_are_said(digits_run, tmp_path, monkeypatch, capsys):
    # --checkpoint-every that only ever falls on an epoch's end, and a gradvar minibatch
    # larger than the points there are: each runs, and says what it did instead
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *args: None)  # pytest's SIGTERM
    argv = ["train", "--out", str(tmp_path / "run"), "--epochs", "2", "--train-limit", "40",
            "--batch-size", "20", "--device", "cpu", "--checkpoint-every", "4",
            "--pair-kwargs", '{"hidden": [8], "z_dim": 2}']  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: --checkpoint-every 4 writes no checkpoint inside an epoch" in err, err
    assert "an epoch here is 2 steps and the run 4" in err
    assert cli.main(["gradvar", str(digits_run), "--split", "valid", "--batch-size", "100000",
                     "--num-draws", "2", "--out", str(tmp_path / "gv")]) == 0  # fmt: skip
    assert "note: --batch-size 100000: only 200 points to draw from" in capsys.readouterr().err
