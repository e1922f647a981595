"""`latents` and `sample` on the objects a user holds: a pair in memory gives the numbers of
its run directory, and a pair trained by a plain Pyro SVI loop works with no run directory."""

import json
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

import pyro_vae
from pyro_vae.analysis.latents import LatentMap, latent_map, latents, project
from pyro_vae.analysis.sampling import Samples, prior_samples, sample, sample_figure
from pyro_vae.pairs import check_pair
from pyro_vae.runs.config import ConfigError, TrainConfig
from pyro_vae.runs.reopen import load_run
from pyro_vae.training.train import train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One tiny digits run (MLP VAE, z_dim 3, labelled data) shared by the tests here."""
    out = tmp_path_factory.mktemp("objects") / "run"
    config = TrainConfig(
        dataset="digits",
        pair="mlp",
        pair_kwargs={"hidden": [16], "z_dim": 3},
        epochs=1,
        batch_size=50,
        train_limit=200,
        device="cpu",
        out=str(out),
    )
    return train(config, progress=False).run_dir


class TutorialVAE(nn.Module):
    """A VAE in the style of Pyro's tutorial: pyro.module, a data plate, .to_event(1)."""

    def __init__(self, x_dim: int = 64, z_dim: int = 2, hidden: int = 16):
        super().__init__()
        self.z_dim = z_dim
        self.encoder_hidden = nn.Linear(x_dim, hidden)
        self.encoder_loc = nn.Linear(hidden, z_dim)
        self.encoder_scale = nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def encode(self, x):
        hidden = torch.tanh(self.encoder_hidden(x))
        return self.encoder_loc(hidden), nn.functional.softplus(self.encoder_scale(hidden)) + 1e-3

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            logits = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encode(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


@pytest.fixture(scope="module")
def digits_points():
    """60 binarized test digits (64 pixels) and their classes."""
    data = pyro_vae.load_dataset("digits")
    x = torch.bernoulli(data.test[:60], generator=torch.Generator().manual_seed(0))
    return x, data.split_labels("test")[:60]


def trained_by_svi(x: torch.Tensor) -> TutorialVAE:
    vae = TutorialVAE()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(20):
        svi.step(x)
    return vae


# ------------------------------------------------------------------------------------------
# latents


def test_latents_of_a_pair_in_memory_equal_those_of_its_run_directory(digits_run, tmp_path):
    from_dir = latents(digits_run, limit=20, save=False)
    assert not (digits_run / "latents").exists()  # save=False writes nothing
    run = load_run(digits_run)
    classes = run.labels("test")[1][:20]
    in_memory = latents(run.pair, run.split("test")[:20], labels=classes)
    assert isinstance(in_memory, LatentMap) and in_memory.coordinates.shape == (20, 2)
    assert np.array_equal(in_memory.coordinates, from_dir.coordinates)
    assert torch.equal(in_memory.means, from_dir.means) and in_memory.means.shape == (20, 3)
    assert torch.equal(in_memory.labels, from_dir.labels) and torch.equal(in_memory.labels, classes)
    assert in_memory.site == "z" and in_memory.method == "pca" and in_memory["labelled"]
    assert in_memory["split"] is None and from_dir["split"] == "test"
    assert "20 points of the test split" in from_dir.summary()
    # one-hot labels colour the same map
    onehot = torch.nn.functional.one_hot(classes, 10)
    assert torch.equal(latents(run.pair, run.split("test")[:20], labels=onehot).labels, classes)
    # the old name writes the files and returns the same keys as before, with the paths
    summary = latent_map(digits_run, limit=20, out=tmp_path / "maps")
    assert list(summary) == ["png", "csv", "site", "method", "split", "num_points",
                             "latent_dims", "draws", "labelled"]  # fmt: skip
    assert Path(summary["png"]).read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "maps" / "latents_test_pca.json").read_text())
    assert saved == summary.to_dict()
    rows = Path(summary["csv"]).read_text().splitlines()
    assert rows[0] == "index,label,pca_1,pca_2,z_0,z_1,z_2" and len(rows) == 21
    assert float(rows[1].split(",")[2]) == pytest.approx(from_dir.coordinates[0, 0], rel=1e-5)


def test_latents_of_a_tutorial_vae_trained_by_svi(digits_points, tmp_path):
    x, classes = digits_points
    vae = trained_by_svi(x)
    mapped = latents(vae, x, labels=classes)
    # the map is the guide's mean, E_q[z|x] = z_loc, projected by PCA
    with torch.no_grad():
        z_loc, _ = vae.encode(x)
    assert torch.allclose(mapped.means, z_loc)
    assert np.allclose(mapped.coordinates, project(z_loc.double().numpy(), "pca"))
    assert mapped["latent_dims"] == 2 and mapped["draws"] == 1 and mapped["num_points"] == 60
    assert json.dumps(mapped.to_dict())  # plain JSON, without the arrays
    png = mapped.plot(tmp_path / "x.png")
    assert png == tmp_path / "x.png" and png.read_bytes()[:8] == PNG
    assert mapped.plot(tmp_path).name == "latents_x_pca.png"
    unlabelled = latents(vae, x)
    assert unlabelled.labels is None and "no labels" in unlabelled.summary()
    with pytest.raises(ConfigError, match="this pair has none. Pass out=FOLDER"):
        latents(vae, x, save=True)
    written = latents(vae, x, labels=classes, out=tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "latents_x_pca.png", "latents_x_pca.csv", "latents_x_pca.json"
    }  # fmt: skip
    assert Path(written["csv"]).is_file()
    with pytest.raises(ConfigError, match="at least 3 points"):
        latents(vae, x[:2])


# ------------------------------------------------------------------------------------------
# sample


def test_samples_of_a_pair_in_memory_equal_those_of_its_run_directory(digits_run, tmp_path):
    from_dir = sample(digits_run, num=3, seed=1)
    run = load_run(digits_run)
    in_memory = sample(run.pair, run.split("test")[:3], num=3, seed=1)
    assert isinstance(in_memory, Samples) and in_memory.image_shape == (1, 8, 8)
    assert [name for name, _ in in_memory.rows] == ["data", "reconstruction", "prior sample"]
    for (name, images), (other_name, other) in zip(in_memory.rows, from_dir.rows, strict=True):
        assert name == other_name and torch.equal(images, other) and images.shape[0] == 3
    assert in_memory["rows"] == from_dir["rows"] and from_dir["split"] == "test"
    # without x: prior samples only, on a placeholder batch of zeros of the given shape
    alone = sample(run.pair, num=3, seed=1, image_shape=(1, 8, 8))
    assert alone["rows"] == ["prior sample"] and alone.rows[0][1].shape == (3, 64)
    info = check_pair(run.pair, torch.zeros(3, 64))
    pyro.set_rng_seed(1)
    expected = prior_samples(run.pair, torch.zeros(3, 64), info.observed_sites, info.data_plate)
    assert torch.equal(alone.rows[0][1], expected["x"])
    with pytest.raises(ConfigError, match="pass image_shape="):
        sample(run.pair, num=3)
    with pytest.raises(ConfigError, match="label=3: the pair takes no labels"):
        sample(run.pair, run.split("test")[:3], label=3)
    # the command's figure is drawn from the same rows
    png = in_memory.plot(tmp_path / "x.png")
    assert png == tmp_path / "x.png" and png.read_bytes()[:8] == PNG
    assert sample_figure(digits_run, tmp_path / "samples.png", num=3).read_bytes()[:8] == PNG


def test_samples_of_a_tutorial_vae_trained_by_svi(digits_points, tmp_path):
    x, _ = digits_points
    vae = trained_by_svi(x)
    drawn = sample(vae, x[:4], num=4, seed=2)
    assert drawn.image_shape == (1, 8, 8)  # 64 values: a square
    names = [name for name, _ in drawn.rows]
    assert names == ["data", "reconstruction", "prior sample"] and drawn["skipped"] == []
    # a reconstruction is the decoder's mean E[x|z] at a draw z ~ q(z|x): Bernoulli probs
    reconstruction = drawn.rows[1][1]
    assert reconstruction.shape == (4, 64) and 0 <= reconstruction.min() < reconstruction.max() <= 1
    assert torch.equal(drawn.rows[0][1], x[:4])
    again = sample(vae, x[:4], num=4, seed=2)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(drawn.rows, again.rows, strict=True))
    assert drawn.plot(tmp_path / "x.png").read_bytes()[:8] == PNG
    assert drawn.plot(tmp_path).name == "samples.png"
    assert "3 rows of images of 1x8x8" in drawn.summary()


def test_samples_of_plain_functions_are_vectors_without_an_image_shape(tmp_path):
    """A model and a guide written as functions with pyro.param: points of 6 values are no
    square image, so they are drawn as vectors, or as images of a given image_shape."""

    def model(x):
        weight = pyro.param("weight", torch.ones(2, 6))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight, 1.0).to_event(1), obs=x)

    def guide(x):
        encoder = pyro.param("encoder", torch.full((6, 2), 0.1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ encoder, 0.5).to_event(1))

    x = torch.randn(5, 6)
    drawn = sample(model, x, guide=guide, num=3)
    assert drawn.image_shape is None and drawn["rows"] == ["data", "reconstruction",
                                                           "prior sample"]  # fmt: skip
    # the prior sample is E[x|z] = z @ weight with z ~ N(0, I)
    assert drawn.rows[2][1].shape == (3, 6)
    # vectors of 6 values: a heatmap, and the values in a CSV beside it
    assert drawn["layout"] == "vectors" and drawn.plot(tmp_path / "v.png").read_bytes()[:8] == PNG
    assert (tmp_path / "v.csv").read_text().splitlines()[0] == "row,point," + ",".join(
        f"x_{j}" for j in range(6)
    )
    shaped = sample((model, guide), x, num=3, image_shape=(1, 2, 3))
    assert shaped.plot(tmp_path / "x.png").read_bytes()[:8] == PNG


def test_a_conditional_pair_in_memory_draws_one_row_per_class(tmp_path):
    config = TrainConfig(
        dataset="digits",
        pair="cvae",
        pair_kwargs={"hidden": [16], "z_dim": 2},
        epochs=1,
        batch_size=50,
        train_limit=100,
        device="cpu",
        out=str(tmp_path / "cvae"),
    )
    run_dir = train(config, progress=False).run_dir
    from_dir = sample(run_dir, num=3, seed=2)
    run = load_run(run_dir)
    x, labels = run.split("test")[:3], run.labels("test")[0][:3]
    in_memory = sample(run.pair, x, labels=labels, num_classes=10, num=3, seed=2)
    assert in_memory["rows"] == ["data", "reconstruction", *(f"class {k}" for k in range(10))]
    for (name, images), (other_name, other) in zip(in_memory.rows, from_dir.rows, strict=True):
        assert name == other_name and torch.equal(images, other)
    with pytest.raises(ConfigError, match="pass num_classes= to draw one row"):
        sample(run.pair, num=3, image_shape=(1, 8, 8))
    one = sample(run.pair, num=3, image_shape=(8, 8), label=4)
    assert one["rows"] == ["class 4"] and one.image_shape == (1, 8, 8)
    with pytest.raises(ConfigError, match="label=12: must be a class in 0..9"):
        sample(run.pair, num=3, image_shape=(1, 8, 8), num_classes=10, label=12)
    with pytest.raises(ConfigError, match="labels= go with x"):
        sample(run.pair, labels=labels, num_classes=10, image_shape=(1, 8, 8))
