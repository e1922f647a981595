"""``sample`` for every kind of observation: images as a grid, count vectors as a heatmap with
a CSV, half-observed images drawn whole beside their input, and a message, not a blank
figure, where nothing can be drawn."""

import csv
import json
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from PIL import Image

import pyro_vae
from pyro_vae import cli
from pyro_vae.analysis.sample_kinds import NothingToDraw, observed_positions
from pyro_vae.analysis.sampling import prior_samples, reconstructions, sample
from pyro_vae.pairs import build_pair, check_pair
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.train import train

PAIRS_DIR = Path(__file__).resolve().parent / "pairs"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are not grey (labels and image grids are black, white and grey)."""
    return rgb.max(-1) - rgb.min(-1) > 40


def red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)


def sample_cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """``pyro-vae sample ARGS`` in this process: exit code, stdout, stderr."""
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *a: None)  # pytest's SIGTERM
    capsys.readouterr()
    code = cli.main(["sample", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def digits(num: int) -> torch.Tensor:
    """The first ``num`` test digits, black and white (for Bernoulli likelihoods)."""
    return (pyro_vae.load_dataset("digits").test[:num] > 0.5).float()


# ---------------------------------------------------------------------------------------------
# count vectors: a topic model in the style of Pyro's ProdLDA


@pytest.fixture(scope="module")
def counts_run(tmp_path_factory):
    """A ProdLDA-style pair trained briefly on 240 documents of 40 words (an .npy of counts)."""
    folder = tmp_path_factory.mktemp("counts")
    generator = np.random.default_rng(0)
    topics = generator.dirichlet(np.full(40, 0.2), size=3)
    mixes = generator.dirichlet(np.full(3, 0.5), size=240)
    counts = np.stack([generator.multinomial(30, mix @ topics) for mix in mixes])
    np.save(folder / "bow.npy", counts.astype(np.int64))
    config = TrainConfig(dataset=str(folder / "bow.npy"), pair=f"{PAIRS_DIR}/prodlda.py:ProdLDA",
                         epochs=1, batch_size=60, device="cpu",
                         out=str(folder / "run"))  # fmt: skip
    pyro.set_rng_seed(0)
    return train(config, progress=False).run_dir


def test_count_vectors_get_a_heatmap_and_a_table_of_the_draws(counts_run, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    out = tmp_path / "words.png"
    code, stdout, _ = sample_cli(capsys, monkeypatch, counts_run, "--out", out, "--num", "4",
                                 "--json")  # fmt: skip
    assert code == 0
    shown = json.loads(stdout)
    assert shown["layout"] == "vectors" and shown["rows"] == ["data", "reconstruction",
                                                              "prior sample"]  # fmt: skip
    assert shown["png"] == str(out) and shown["csv"] == str(tmp_path / "words.csv")
    rgb = pixels(out)
    assert coloured(rgb).sum() > 20_000  # the heatmap's cells, not only row labels
    with open(tmp_path / "words.csv", newline="") as table:
        lines = list(csv.reader(table))
    assert lines[0] == ["row", "point", *(f"obs_{j}" for j in range(40))]
    assert [line[0] for line in lines[1:]] == ["data"] * 4 + ["reconstruction"] * 4 + [
        "prior sample"
    ] * 4
    values = np.array([[float(v) for v in line[2:]] for line in lines[1:]])
    assert values.shape == (12, 40)
    run = pyro_vae.load_run(counts_run)
    assert np.array_equal(values[:4], run.split("test")[:4].numpy())  # the counts as stored
    # draws are E[x|z] of a Multinomial: total_count (the batch's longest document) * probs
    assert np.allclose(values[8:].sum(1), 30.0, atol=1e-3) and (values[4:] >= 0).all()
    # the library returns the same rows
    drawn = sample(counts_run, num=4)
    assert drawn["layout"] == "vectors" and drawn.columns[0] == "obs_0"
    assert torch.allclose(drawn.rows[2][1], torch.from_numpy(values[8:]).float(), atol=1e-4)


def test_wide_vectors_show_the_strongest_columns(tmp_path):
    from pyro_vae.analysis.plots import vector_heatmap

    values = torch.zeros(3, 500)
    values[:, 7] = 5.0
    rows = [("data", values), ("prior sample", values + torch.rand(3, 500))]
    path = vector_heatmap(rows, [f"obs_{j}" for j in range(500)], tmp_path / "wide.png")
    rgb = pixels(path)
    assert rgb.shape[1] <= 1400 and coloured(rgb).sum() > 20_000


# ---------------------------------------------------------------------------------------------
# half-observed images: a CVAE in the style of Pyro's examples/cvae


@pytest.mark.parametrize(
    "name", ["cvae_halves.py:CVAE", "partial_image.py:ConditionalCompletionVAE"]
)
def test_a_model_of_the_lower_half_is_drawn_as_whole_images(name, tmp_path):
    pair = build_pair((1, 8, 8), f"{PAIRS_DIR}/{name}", {})
    x = digits(4)
    info = check_pair(pair, x)
    (site,) = info.observed_sites
    positions = observed_positions(pair, x, info.observed_sites, info.data_plate)
    assert torch.equal(positions[site], torch.arange(32, 64))  # the lower four rows
    drawn = sample(pair, x, num=4, seed=3)
    assert drawn["layout"] == "image parts" and drawn["drawn_values"] == 32
    assert drawn["rows"] == ["data", "reconstruction", "prior sample"] and not drawn["skipped"]
    pyro.set_rng_seed(3)
    expected = {"reconstruction": reconstructions(pair, x, info.observed_sites)[site],
                "prior sample": prior_samples(pair, x, info.observed_sites)[site]}  # fmt: skip
    for row, images in drawn.rows[1:]:
        assert images.shape == (4, 64)
        assert torch.equal(images[:, :32], x[:4, :32])  # the given upper half, as given
        assert torch.allclose(images[:, 32:], expected[row][:4])  # the model's lower half
    rgb = pixels(drawn.plot(tmp_path / "halves.png"))
    assert red(rgb).sum() > 100  # the line between the given and the drawn part
    assert "32 of 64 values drawn" in drawn.summary()


def test_a_trained_cvae_run_samples_its_reconstructions(tmp_path, capsys, monkeypatch):
    config = TrainConfig(dataset="digits", pair=f"{PAIRS_DIR}/cvae_halves.py:CVAE", epochs=1,
                         batch_size=50, train_limit=100, device="cpu",
                         out=str(tmp_path / "run"))  # fmt: skip
    run_dir = train(config, progress=False).run_dir
    code, stdout, stderr = sample_cli(capsys, monkeypatch, run_dir, "--out",
                                      tmp_path / "cvae.png", "--num", "3")  # fmt: skip
    assert code == 0 and "skipped" not in stderr and stdout.strip() == f"wrote {tmp_path}/cvae.png"
    with Image.open(tmp_path / "cvae.png") as image:
        height = image.size[1]
    # four rows of images: data, input, reconstruction, prior sample
    assert height > 4 * 0.9 * 100 * 0.9


# ---------------------------------------------------------------------------------------------
# images as before; nothing to draw


def test_an_image_pair_is_drawn_as_before(tmp_path):
    pair = build_pair((1, 8, 8), "mlp", {"hidden": [16], "z_dim": 2})
    x = digits(5)
    drawn = sample(pair, x, num=5, seed=1)
    assert drawn["layout"] == "images" and drawn.drawn is None
    assert drawn["rows"] == ["data", "reconstruction", "prior sample"]
    info = check_pair(pair, x)
    pyro.set_rng_seed(1)
    pyro.clear_param_store()
    reconstruction = reconstructions(pair, x, info.observed_sites)
    prior = prior_samples(pair, x, info.observed_sites)
    assert torch.equal(drawn.rows[0][1], x)
    assert torch.equal(drawn.rows[2][1], next(iter(prior.values())))
    assert torch.equal(drawn.rows[1][1], next(iter(reconstruction.values())))
    rgb = pixels(drawn.plot(tmp_path / "grid.png"))
    assert not red(rgb).any() and not coloured(rgb).any()  # grey images, no outline


SCORE_ONLY_PAIR = '''
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints


class BinaryCrossEntropy(dist.TorchDistribution):
    """A likelihood written as its log-density only: it scores x, it cannot be drawn from."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, logits):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def log_prob(self, value):
        return -nn.functional.binary_cross_entropy_with_logits(
            self.logits, value, reduction="none"
        ).sum(-1)


class ScoreOnlyVAE(nn.Module):
    def __init__(self, x_dim, z_dim=2):
        super().__init__()
        self.z_dim = z_dim
        self.decoder = nn.Linear(z_dim, x_dim)
        self.encoder = nn.Linear(x_dim, 2 * z_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", BinaryCrossEntropy(self.decoder(z)), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
'''


def test_a_pair_with_nothing_to_draw_is_an_error_and_no_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "score_only.py").write_text(SCORE_ONLY_PAIR)
    config = TrainConfig(dataset="digits", pair=f"{tmp_path}/score_only.py:ScoreOnlyVAE",
                         epochs=1, batch_size=50, train_limit=100, device="cpu",
                         out=str(tmp_path / "run"))  # fmt: skip
    run_dir = train(config, progress=False).run_dir
    with pytest.raises(NothingToDraw, match=r"nothing to draw .*'x': BinaryCrossEntropy has no"):
        sample(run_dir, num=3)
    out = tmp_path / "figures" / "score_only.png"
    code, stdout, stderr = sample_cli(capsys, monkeypatch, run_dir, "--out", out)
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    assert stderr.startswith("pyro-vae sample: error: sample: nothing to draw for this pair")
    assert "no .mean and no .sample()" in stderr and not out.exists()


def test_every_sample_option_shows_its_default():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["sample"]
    for action in sub._actions:
        if action.option_strings and action.dest not in ("help", "out"):
            assert "default" in (action.help or ""), action.option_strings
    text = sub.format_help()
    assert "(default 10)" in text and "(default test)" in text and "FILE.csv" in text
