"""Semi-supervised pairs as Pyro writes them (tests/pairs/m2_style.py, in the style of Pyro's
examples/vae/ss_vae_M2.py): the classification loss run once before training, with a message
that names the method and the way out; ``--classify-loss on|off``; ``--label-encoding auto``,
which keeps the encoding the pair's programs take and records it; ``--num-labelled 0``."""

import csv
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae.pairs import PairError, check_pair, load_object
from pyro_vae.pairs.label_encoding import (
    check_classifier,
    choose_label_encoding,
    resolve_classify_loss,
)
from pyro_vae.pairs.labels import LabelError
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.reopen import load_run, read_config
from pyro_vae.training.train import train

M2 = f"{Path(__file__).parent / 'pairs' / 'm2_style.py'}:SSVAE"
TINY = ["--dataset", "digits", "--device", "cpu", "--train-limit", "200", "--epochs", "1",
        "--no-progress"]  # fmt: skip
SMALL = dict(dataset="digits", device="cpu", train_limit=200, epochs=1)


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------
# The command line, as a user of Pyro's example meets it


def test_default_arguments_stop_before_training_naming_model_classify(run_cli, tmp_path):
    """The class as its authors wrote it (aux_loss_multiplier=None, hidden 500, z 50): the
    classification loss fails on the probe batch, before any step, with the way out."""
    result = run_cli("train", *TINY, "--pair", M2, "--out", tmp_path / "run", cwd=tmp_path,
                     check=False)  # fmt: skip
    stderr = _flat(result.stderr)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--label-encoding auto chose onehot" in stderr  # integer labels fail in its guide
    assert "model_classify failed on the probe batch" in stderr
    assert "TypeError: '>' not supported between instances of 'NoneType' and 'int'" in stderr
    assert "the pair's aux_loss_multiplier is None" in stderr
    assert """--pair-kwargs, e.g. '{"aux_loss_multiplier": 46}'""" in stderr
    assert "--classify-loss off" in stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_classify_loss_off_trains_under_auto_as_under_onehot(run_cli, tmp_path):
    """--classify-loss off: auto picks one-hot labels and records the choice; the run is the
    one --label-encoding onehot gives (a failed try leaves the RNG alone), it resumes from
    Python with the defaults, and a reopened run hands the pair one-hot labels."""
    auto = tmp_path / "auto"
    result = run_cli("train", *TINY, "--pair", M2, "--classify-loss", "off", "--out", auto,
                     cwd=tmp_path)  # fmt: skip
    assert "--label-encoding auto chose onehot" in _flat(result.stderr)
    recorded = read_config(auto)
    assert (recorded.label_encoding, recorded.classify_loss) == ("onehot", "off")
    assert recorded.num_labelled == 200
    assert "classify_loss" not in _rows(auto)[0]

    onehot = tmp_path / "onehot"
    named = train(TrainConfig(pair=M2, label_encoding="onehot", classify_loss="off",
                              out=str(onehot), **SMALL), progress=False)  # fmt: skip
    row, again = named.history[-1], _rows(auto)[-1]
    assert float(again["train_loss"]) == pytest.approx(row["train_loss"], rel=1e-6)
    assert float(again["valid_elbo"]) == pytest.approx(row["valid_elbo"], rel=1e-6)
    assert float(again["valid_accuracy"]) == row["valid_accuracy"]

    # the defaults (auto, classify loss unset) resume the run with its recorded choices
    resumed = train(TrainConfig(pair=M2, out=str(auto), **{**SMALL, "epochs": 2}), resume=True,
                    progress=False)  # fmt: skip
    assert len(resumed.history) == 2 and resumed.config.label_encoding == "onehot"
    labels, classes = load_run(auto).labels("valid")
    assert labels.shape == (classes.shape[0], 10)
    assert torch.equal(labels.argmax(-1), classes)


def test_explicit_index_says_that_onehot_works(capsys, monkeypatch, tmp_path):
    from pyro_vae import cli

    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", *TINY, "--pair", M2, "--label-encoding", "index",
                     "--classify-loss", "off", "--out", str(tmp_path / "run")])  # fmt: skip
    stderr = _flat(capsys.readouterr().err)
    assert code == 2, stderr
    assert "--label-encoding index: the pair's programs fail with labels as class indices of " \
        "shape (16,)" in stderr  # fmt: skip
    assert "With one-hot rows of shape (16, 10) they run: pass --label-encoding onehot" in stderr


def test_a_multiplier_trains_the_classification_loss(tmp_path):
    """With aux_loss_multiplier 46 the loss trains on the labelled batches: its column is the
    Trace_ELBO loss per labelled point, 46 times the cross-entropy of q(y|x), which starts
    near log 10 = 2.30 nats (a loss left unscaled would be 46 times smaller)."""
    result = train(TrainConfig(pair=M2, pair_kwargs={"aux_loss_multiplier": 46},
                               num_labelled=50, out=str(tmp_path / "run"), **SMALL),
                   progress=False)  # fmt: skip
    assert (result.config.classify_loss, result.config.label_encoding) == ("on", "onehot")
    cross_entropy = result.history[-1]["classify_loss"] / 46
    assert 1.5 < cross_entropy < 3.5, cross_entropy
    assert read_config(tmp_path / "run").classify_loss == "on"


def test_num_labelled_zero_trains_without_labels(tmp_path):
    """--num-labelled 0: no training step calls the programs with labels, no classification
    loss; q(y|x) is still measured on the validation labels."""
    SSVAE = load_object(M2)
    calls = {"labelled": 0, "unlabelled": 0}

    class Counting(SSVAE):
        def guide(self, xs, ys=None):
            if poutine.runtime.am_i_wrapped() and torch.is_grad_enabled():
                calls["unlabelled" if ys is None else "labelled"] += 1
            return super().guide(xs, ys)

    pair = Counting(input_size=64, z_dim=4, hidden_layers=(32,), aux_loss_multiplier=46)
    result = train(TrainConfig(num_labelled=0, batch_size=50, out=str(tmp_path / "run"),
                               **SMALL), pair=pair, progress=False)  # fmt: skip
    assert calls == {"labelled": 0, "unlabelled": 4}
    assert (result.config.num_labelled, result.config.classify_loss) == (0, "off")
    row = result.history[-1]
    assert "classify_loss" not in row and 0 <= row["valid_accuracy"] <= 1
    assert math.isfinite(row["valid_elbo"])


def test_label_flags_without_effect_are_noted(capsys, monkeypatch, tmp_path):
    """A pair that takes no labels: --label-encoding and --classify-loss off change nothing
    (a config file may carry them), and each says so once."""
    from pyro_vae import cli

    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", *TINY, "--pair-kwargs", '{"hidden": [8], "z_dim": 2}',
                     "--label-encoding", "onehot", "--classify-loss", "off",
                     "--out", str(tmp_path / "run")])  # fmt: skip
    stderr = _flat(capsys.readouterr().err)
    assert code == 0, stderr
    assert stderr.count("note: --label-encoding onehot has no effect: this run gives the "
                        "pair's programs no labels") == 1  # fmt: skip
    assert stderr.count("note: --classify-loss off has no effect") == 1


# ------------------------------------------------------------------------------------------
# The choices, on small pairs


class _Labelled:
    """model(x, y=None)/guide(x, y=None) over 2 classes whose programs take labels as
    ``takes`` (index or onehot) and fail on the other."""

    def __init__(self, takes: str, classify=None):
        self.takes = takes
        if classify is not None:
            self.model_classify, self.guide_classify = classify

    def _y(self, x, y):
        if y is None:
            return None
        if (y.dim() == 2) != (self.takes == "onehot"):
            raise RuntimeError(f"labels of shape {tuple(y.shape)}")
        return y

    def model(self, x, y=None):
        y = self._y(x, y)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Categorical(torch.ones(2) / 2)
            if self.takes == "onehot":
                prior = dist.OneHotCategorical(torch.ones(2) / 2)
            label = pyro.sample("y", prior, obs=y)
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            index = label.argmax(-1) if self.takes == "onehot" else label
            loc = z + index.unsqueeze(-1).to(x.dtype)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        y = self._y(x, y)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                posterior = dist.Categorical(torch.ones(2) / 2)
                if self.takes == "onehot":
                    posterior = dist.OneHotCategorical(torch.ones(2) / 2)
                pyro.sample("y", posterior)
            pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), 1.0).to_event(1))


X = torch.randn(6, 1)
CLASSES = torch.tensor([0, 1, 0, 1, 1, 0])


@pytest.mark.parametrize("takes", ["index", "onehot"])
def test_auto_keeps_the_encoding_the_programs_take_and_leaves_the_rng_alone(takes):
    notes = []
    pyro.set_rng_seed(3)
    encoding, info = choose_label_encoding(_Labelled(takes), X, CLASSES, 2, requested="auto",
                                           classify=False, log=notes.append)  # fmt: skip
    after_auto = torch.randn(3)
    assert encoding == takes and info.label_site == "y"
    assert notes and notes[0].startswith(f"note: --label-encoding auto chose {takes}")
    # the same draws as checking the pair with that encoding alone
    pyro.set_rng_seed(3)
    y = CLASSES if takes == "index" else torch.nn.functional.one_hot(CLASSES, 2).float()
    check_pair(_Labelled(takes), X, y)
    assert torch.equal(torch.randn(3), after_auto)


def test_auto_shows_both_failures_where_neither_encoding_fits():
    class Neither(_Labelled):
        def _y(self, x, y):
            if y is not None:
                raise RuntimeError(f"no labels of shape {tuple(y.shape)}, please")

    with pytest.raises(PairError) as caught:
        choose_label_encoding(Neither("index"), X, CLASSES, 2, requested="auto", classify=False,
                              log=lambda note: None)  # fmt: skip
    message = str(caught.value)
    assert message.startswith("--label-encoding auto: the pair's programs take neither")
    assert "with class indices of shape (6,): " in message and "(6,), please" in message
    assert "with one-hot rows of shape (6, 2): " in message and "(6, 2), please" in message


def test_a_named_encoding_that_fails_names_the_other_one():
    with pytest.raises(PairError, match="they run: pass --label-encoding index"):
        choose_label_encoding(_Labelled("index"), X, CLASSES, 2, requested="onehot",
                              classify=False, log=lambda note: None)  # fmt: skip


def _classify(scale, fail_in_guide=False):
    def model_classify(x, y=None):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=scale):
            pyro.sample("y_aux", dist.Categorical(torch.ones(2) / 2), obs=y)

    def guide_classify(x, y=None):
        if fail_in_guide:
            raise KeyError("no classifier here")

    return model_classify, guide_classify


def test_check_classifier_names_the_method_and_the_way_out():
    class WithMultiplier(_Labelled):
        def __init__(self, takes, aux_loss_multiplier=None, other=None):
            super().__init__(takes, _classify(aux_loss_multiplier))
            self.aux_loss_multiplier, self.other = aux_loss_multiplier, other

    state = torch.get_rng_state()
    with pytest.raises(PairError) as caught:
        check_classifier(WithMultiplier("index"), X, CLASSES, "index", 2)
    message = str(caught.value)
    assert message.startswith("model_classify failed on the probe batch (6 labelled points, "
                              "labels as class indices of shape (6,)): TypeError")  # fmt: skip
    assert "the pair's aux_loss_multiplier or other is None" in message
    assert """e.g. '{"aux_loss_multiplier": 46}'""" in message and "--classify-loss off" in message
    assert torch.equal(torch.get_rng_state(), state)
    check_classifier(WithMultiplier("index", aux_loss_multiplier=2.0), X, CLASSES, "index", 2)
    with pytest.raises(PairError, match=r"poutine.scale refusing scale=0 \(it needs a number"):
        check_classifier(_Labelled("index", _classify(0)), X, CLASSES, "index", 2)
    failing = r"^guide_classify failed .* KeyError: 'no classifier here'\. The pair .* Fix "
    with pytest.raises(PairError, match=failing + "guide_classify, or .* --classify-loss off$"):
        check_classifier(_Labelled("index", _classify(1.0, True)), X, CLASSES, "index", 2)


@pytest.mark.parametrize(
    "requested, classifier, used, num_labelled, expected",
    [
        (None, True, True, None, "on"),
        (None, True, True, 0, "off"),
        (None, True, False, None, "off"),
        (None, False, True, None, None),
        ("off", True, True, 50, "off"),
        ("on", True, True, 50, "on"),
        ("on", False, True, 50, "defines no classification loss"),
        ("on", True, True, 0, "--num-labelled 0 leaves no labelled batch"),
        ("on", True, False, None, "the run has no labels"),
    ],
)
def test_resolve_classify_loss(requested, classifier, used, num_labelled, expected):
    if expected in (None, "on", "off"):
        assert resolve_classify_loss(requested, classifier, used, num_labelled) == expected
    else:
        with pytest.raises(LabelError, match=expected):
            resolve_classify_loss(requested, classifier, used, num_labelled)
