"""Run logging to TensorBoard and MLflow (``--log``), read back with each tool's own reader:
TensorBoard's ``EventAccumulator`` and MLflow's ``MlflowClient``.

One digits run logs to both, is interrupted after its second epoch's checkpoint and before
that epoch was logged, and is resumed: each logger holds every epoch once, equal to
metrics.csv. Then ``pyro-vae evaluate`` attaches its summary. The Python API takes logger
objects (``fit(..., loggers=[...])`` and a hand-written SVI loop), and a missing package is
one clear message.
"""

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import MLflowLogger, TensorBoardLogger, fit, load_dataset
from pyro_vae.cli import main
from pyro_vae.runs.config import ConfigError, TrainConfig, resolve, unused_settings
from pyro_vae.runs.loggers import MissingPackageError, attach
from pyro_vae.runs.loggers.base import flat_params
from pyro_vae.runs.loggers.mlflow_writer import _quiet
from pyro_vae.runs.reopen import read_config
from pyro_vae.training import train as train_module

Z_DIM = 3
TRAIN = ["train", "--train-limit", "100", "--epochs", "3", "--device", "cpu",
         "--pair-kwargs", json.dumps({"z_dim": Z_DIM, "hidden": [16]}),
         "--log", "csv,tensorboard,mlflow", "--log-images-every", "2"]  # fmt: skip


def event_accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0,
                                                          "tensors": 0})  # fmt: skip
    return events.Reload()


def mlflow_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def metrics_rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A digits run logging to csv, TensorBoard and MLflow (the default SQLite store beside
    it), interrupted after epoch 2's checkpoint and metrics.csv but before epoch 2 was logged,
    resumed to epoch 3; then evaluated."""
    folder = tmp_path_factory.mktemp("logged")
    run_dir = folder / "run"
    real_log_epoch = train_module._log_epoch

    def interrupted_at_epoch_2(row, config):
        if row["epoch"] == 2:
            raise KeyboardInterrupt
        real_log_epoch(row, config)

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(folder)
        patch.setattr(train_module, "_log_epoch", interrupted_at_epoch_2)
        assert main([*TRAIN, "--out", str(run_dir)]) == 130
        assert len(metrics_rows(run_dir)) == 2
        assert json.loads((run_dir / "tensorboard" / "logged.json").read_text()) == {"epoch": 1}
        patch.setattr(train_module, "_log_epoch", real_log_epoch)
        assert main(["train", "--resume", "--out", str(run_dir)]) == 0
        assert main(["evaluate", str(run_dir), "--limit", "20", "--num-samples", "2",
                     "--json"]) == 0  # fmt: skip
    return run_dir


def test_the_config_names_its_loggers_and_reads_back(logged_run):
    config = read_config(logged_run)
    assert config.log == ["csv", "tensorboard", "mlflow"]
    assert 'log = ["csv", "tensorboard", "mlflow"]' in (logged_run / "config.toml").read_text()
    assert (config.log_images_every, config.mlflow_experiment) == (2, "pyro-vae")


def test_tensorboard_holds_every_epoch_once_with_images_and_hparams(logged_run):
    rows = metrics_rows(logged_run)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    events = event_accumulator(logged_run / "tensorboard")
    for column in ("train_loss", "valid_elbo", "beta", "lr", "seconds"):
        logged = events.Scalars(column)
        assert [e.step for e in logged] == [1, 2, 3], column  # epoch 2 added on resume, once
        for event, row in zip(logged, rows, strict=True):
            assert event.value == pytest.approx(row[column], rel=1e-6, abs=1e-12)
    kl = [events.Scalars(f"kl/z/{d}") for d in range(Z_DIM)]
    # the KL per dimension is logged with each live epoch (1 and 3; the resume adds epoch
    # 2's row of metrics.csv only), >= 0 and summing to kl/total
    assert [[e.step for e in per_dim] for per_dim in kl] == [[1, 3]] * Z_DIM
    total = events.Scalars("kl/total")
    for index, event in enumerate(total):
        assert all(per_dim[index].value >= 0 for per_dim in kl)
        assert event.value == pytest.approx(sum(per_dim[index].value for per_dim in kl), rel=1e-5)
    # a grid every 2 epochs and at the last: epoch 2's was lost with the kill, epoch 3's is
    # there, 64 prior samples of 8x8 pixels as 8 x 8 tiles with 1-pixel gaps
    images = events.Images("samples")
    assert [(e.step, e.width, e.height) for e in images] == [(3, 73, 73)]
    from PIL import Image

    grid = Image.open(io.BytesIO(images[0].encoded_image_string))
    assert grid.size == (73, 73) and len(np.unique(np.asarray(grid))) > 2  # not blank
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    config = read_config(logged_run)
    assert hparams["lr"].number_value == config.lr
    assert hparams["epochs"].number_value == 3
    assert hparams["pair"].string_value == config.pair
    assert json.loads(hparams["pair_kwargs"].string_value) == config.pair_kwargs


def test_mlflow_run_holds_every_epoch_once_params_and_artifacts(logged_run):
    rows = metrics_rows(logged_run)
    record = json.loads((logged_run / "mlflow_run.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{logged_run.parent.resolve() / 'mlflow.db'}"
    with _quiet():
        client = mlflow_client(record["tracking_uri"])
        run = client.get_run(record["run_id"])
        history = {c: client.get_metric_history(record["run_id"], c) for c in rows[0]
                   if c != "epoch"}  # fmt: skip
        samples = [a.path for a in client.list_artifacts(record["run_id"], "samples")]
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "pyro-vae"
    for column, logged in history.items():
        assert [(m.step, m.value) for m in logged] == [(r["epoch"], r[column]) for r in rows]
    config = read_config(logged_run)
    expected = {k: str(v) for k, v in flat_params(config.to_dict()).items()}
    assert run.data.params == expected
    assert samples == ["samples/epoch_00003.png"]


def test_evaluate_attaches_its_summary_to_both(logged_run, capsys):
    record = json.loads((logged_run / "mlflow_run.json").read_text())
    events = event_accumulator(logged_run / "tensorboard")
    [elbo] = events.Scalars("evaluate/elbo")
    [text] = events.Tensors("evaluate/summary/text_summary")
    summary = json.loads(text.tensor_proto.string_val[0].decode())
    assert elbo.step == 3 and elbo.value == pytest.approx(summary["elbo"], rel=1e-6)
    with _quiet():
        client = mlflow_client(record["tracking_uri"])
        [metric] = client.get_metric_history(record["run_id"], "evaluate/elbo")
        local = client.download_artifacts(record["run_id"], "summaries/evaluate.json",
                                          str(logged_run.parent))  # fmt: skip
    assert (metric.step, metric.value) == (3, summary["elbo"])
    assert json.loads(Path(local).read_text()) == summary
    assert client.get_run(record["run_id"]).info.status == "FINISHED"  # left as it was


class TinyVAE(nn.Module):
    """A VAE as Pyro's tutorial writes one, small: Bernoulli pixels, Normal latents."""

    def __init__(self, input_dim=64, z_dim=2, hidden_dim=16):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.Softplus(),
                                     nn.Linear(hidden_dim, 2 * z_dim))  # fmt: skip
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden_dim), nn.Softplus(),
                                     nn.Linear(hidden_dim, input_dim), nn.Sigmoid())  # fmt: skip

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            probs = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(probs).to_event(1), obs=x.reshape(x.shape[0], -1))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


@pytest.fixture(scope="module")
def binary_digits():
    data = load_dataset("digits")
    return (data.train[:200] > 0.5).float(), (data.valid[:50] > 0.5).float()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking URI for the tests of the Python API (each makes its own runs)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'store.db'}"


def test_fit_takes_logger_objects(binary_digits, store, tmp_path, monkeypatch):
    uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    x, valid = binary_digits
    loggers = [TensorBoardLogger(tmp_path / "tb"), MLflowLogger(experiment="api")]
    torch.manual_seed(0)
    result = fit(TinyVAE(), x, valid=valid, epochs=2, batch_size=100, loggers=loggers)
    pyro.clear_param_store()
    torch.manual_seed(0)
    plain = fit(TinyVAE(), x, valid=valid, epochs=2, batch_size=100)
    # the loggers' draws (sample grids, KL) leave the run's random stream as it was
    for logged, alone in zip(result.history, plain.history, strict=True):
        assert (logged["train_loss"], logged["valid_elbo"]) == (alone["train_loss"],
                                                                alone["valid_elbo"])  # fmt: skip
    events = event_accumulator(tmp_path / "tb")
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [
        (r["epoch"], pytest.approx(r["train_loss"], rel=1e-6)) for r in result.history
    ]
    assert [e.step for e in events.Scalars("kl/z/1")] == [1, 2]
    assert [e.step for e in events.Images("samples")] == [2]  # the last epoch
    with _quiet():
        client = mlflow_client(uri)
        [run] = client.search_runs([client.get_experiment_by_name("api").experiment_id])
        logged = client.get_metric_history(run.info.run_id, "valid_elbo")
    assert [(m.step, m.value) for m in logged] == [(r["epoch"], r["valid_elbo"])
                                                   for r in result.history]  # fmt: skip
    assert run.data.params["epochs"] == "2" and run.info.status == "FINISHED"


def test_a_hand_written_svi_loop_calls_the_same_loggers(binary_digits, store, tmp_path,
                                                        monkeypatch):  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    x, _ = binary_digits
    vae = TinyVAE()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}),
                         pyro.infer.Trace_ELBO())  # fmt: skip
    tensorboard, mlflow = TensorBoardLogger(tmp_path / "tb"), MLflowLogger(run_name="mine")
    losses = []
    for logger in (tensorboard, mlflow):
        logger.log_params({"lr": 1e-2, "hidden": [16]})
    for step in range(1, 4):
        losses.append(svi.step(x) / x.shape[0])
        for logger in (tensorboard, mlflow):
            logger.log_metrics({"loss": losses[-1]}, step)
    with torch.no_grad():
        means = vae.decoder(torch.randn(4, 2)).reshape(4, 1, 8, 8)
    for logger in (tensorboard, mlflow):
        logger.log_images("decoded", means, 3)
        logger.log_summary("mine", {"last": losses[-1], "per_step": losses}, 3)
        logger.close()
    events = event_accumulator(tmp_path / "tb")
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(losses, rel=1e-6)
    assert [(e.width, e.height) for e in events.Images("decoded")] == [(19, 19)]  # 2 x 2 tiles
    assert events.Scalars("mine/last")[0].value == pytest.approx(losses[-1], rel=1e-6)
    with _quiet():
        client = mlflow_client(mlflow.tracking_uri)
        run = client.get_run(mlflow.run_id)
        history = client.get_metric_history(mlflow.run_id, "loss")
    assert [m.value for m in history] == losses
    assert run.data.params == {"lr": "0.01", "hidden": "[16]"}
    assert run.data.metrics["mine/last"] == losses[-1] and "mine/per_step" not in run.data.metrics
    assert run.info.run_name == "mine" and run.info.status == "FINISHED"


@pytest.mark.parametrize("package", ["tensorboard", "mlflow"])
def test_a_missing_package_is_one_clear_message(package, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # its import fails, as when not installed
    make = TensorBoardLogger if package == "tensorboard" else MLflowLogger
    with pytest.raises(MissingPackageError, match=rf'pip install "pyro-vae\[{package}\]"'):
        make()
    code = main(["train", "--train-limit", "100", "--epochs", "1", "--log", f"csv,{package}",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"--log {package} needs the package {package!r}" in err
    assert f'pip install "pyro-vae[{package}]"' in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bad_log_settings_are_refused(tmp_path, capsys):
    code = main(["train", "--log", "csv,wandb", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown logger(s) ['wandb']" in err and "tensorboard" in err
    with pytest.raises(ConfigError, match="--log-images-every -1: must be a number of epochs"):
        TrainConfig(log_images_every=-1).validate()


# (setting, a value, the --log under which it has no effect)
UNUSED = [
    ("mlflow_uri", "http://localhost:5000", ["csv", "tensorboard"]),
    ("mlflow_experiment", "mine", ["csv"]),
    ("log_images_every", 2, ["csv"]),
]


@pytest.mark.parametrize("field, value, log", UNUSED, ids=[u[0] for u in UNUSED])
def test_a_logger_setting_without_its_logger_is_refused_as_a_flag(field, value, log):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=f"^{flag} {value} has no effect here: .*Drop {flag}"):
        resolve({"log": log}, {field: value})
    assert list(unused_settings(resolve({"log": log, field: value}, {}))) == [field]
    assert unused_settings(resolve({"log": ["mlflow"]}, {field: value})) == {}


def test_attach_to_a_run_without_loggers_writes_nothing(tmp_path):
    (tmp_path / "config.toml").write_text('[train]\nlog = ["csv"]\n')
    assert attach(tmp_path, "evaluate", {"elbo": -1.0}) == []
    assert attach(tmp_path / "not-a-run", "evaluate", {"elbo": -1.0}) == []
    assert sorted(os.listdir(tmp_path)) == ["config.toml"]
