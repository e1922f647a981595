"""Every input a user can get wrong ends in one clear paragraph and exit status 2.

Through the command line, as a user runs it (a subprocess, no traceback), and at the Python
level for the table that checks TOML values against :class:`TrainConfig`'s annotations.
"""

import errno
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pyro_vae import cli
from pyro_vae.runs import files
from pyro_vae.runs.config import FIELD_TYPES, ConfigError, TrainConfig, load_toml, resolve

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

    def sample_figure(run_dir, out, **options):
        seen.update(options)
        return out

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
    kwargs = 'pair_kwargs = {"hidden" = [16], "z_dim" = 2}'
    assert kwargs in text
    text = text.replace(kwargs, 'pair_kwargs = {"command" = "touch PWNED"}')
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
