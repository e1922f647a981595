"""Built-in pairs, user pairs from files and modules, and the one-time check of a pair."""

import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.pairs import PAIRS, FunctionPair, PairError, build_pair, check_pair
from pyro_vae.pairs.labels import label_arguments

IMAGE_SHAPES = {"conv": [(1, 8, 8), (1, 28, 20)]}


def labels_for(pair, x: torch.Tensor) -> torch.Tensor | None:
    """Class labels 0..9 for a pair whose programs take them, else None."""
    if not label_arguments(pair).takes:
        return None
    return torch.arange(x.shape[0], device=x.device) % 10


def data_for(name: str, image_shape, batch_size=6):
    x = torch.rand(batch_size, image_shape[0] * image_shape[1] * image_shape[2])
    return torch.bernoulli(x) if PAIRS[name].likelihood == "bernoulli" else x


@pytest.mark.parametrize(
    "name,image_shape",
    [(name, shape) for name in PAIRS for shape in IMAGE_SHAPES.get(name, [(1, 8, 8)])],
)
def test_every_built_in_pair_passes_the_check_and_vectorizes(name, image_shape):
    pair = build_pair(image_shape, name)
    x = data_for(name, image_shape)
    info = check_pair(pair, x, labels_for(pair, x))
    assert info.observed_sites == ("x",)
    # a class (M2's y) or a mixture component (c) beside z where the pair has one
    assert set(info.latent_sites) in ({"z"}, {"z1", "z2"}, {"y", "z"}, {"c", "z"})
    assert info.label_site == ("y" if "y" in info.latent_sites else None)
    assert info.vectorizable
    assert info.max_plate_nesting == 1
    assert info.data_plate == "data"


def test_built_in_pair_kwargs_and_bad_kwargs():
    pair = build_pair((1, 8, 8), "mlp", {"z_dim": 3, "hidden": [7]})
    trace = pyro.poutine.trace(pair.guide).get_trace(torch.rand(2, 64))
    assert trace.nodes["z"]["value"].shape == (2, 3)
    with pytest.raises(PairError, match=r"--pair mlp does not take --pair-kwargs .*hidden_dim"):
        build_pair((1, 8, 8), "mlp", {"hidden_dim": 3})


def test_unknown_pair_lists_the_built_ins():
    with pytest.raises(PairError, match="unknown pair 'mpl'.*mlp, gaussian-mlp"):
        build_pair((1, 8, 8), "mpl")


USER_PAIR = textwrap.dedent(
    """
    import pyro, pyro.distributions as dist, torch
    from torch import nn

    class Pair(nn.Module):
        def __init__(self, x_dim, z_dim=2):
            super().__init__()
            self.z_dim = z_dim
            self.decode = nn.Linear(z_dim, x_dim)
            self.encode = nn.Linear(x_dim, 2 * z_dim)

        def model(self, x):
            pyro.module("decoder", self.decode)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0)
                                .to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encode)
            with pyro.plate("data", x.shape[0]):
                loc, log_scale = self.encode(x).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def model(x):
        w = pyro.param("w", torch.zeros(x.shape[1]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Bernoulli(logits=w + z[:, None]).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).expand([x.shape[0]]))

    NOT_A_PAIR = 3
    """
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_pairs.py"
    path.write_text(USER_PAIR)
    return path


def test_user_pair_from_file_gets_x_dim_filled_in(user_file):
    pair = build_pair((1, 8, 8), f"{user_file}:Pair", {"z_dim": 3})
    assert pair.decode.in_features == 3 and pair.decode.out_features == 64
    info = check_pair(pair, torch.bernoulli(torch.rand(4, 64)))
    assert info.latent_sites == ("z",) and info.vectorizable


def test_user_model_and_guide_functions(user_file):
    pair = build_pair((1, 8, 8), model=f"{user_file}:model", guide=f"{user_file}:guide")
    assert isinstance(pair, FunctionPair)
    info = check_pair(pair, torch.bernoulli(torch.rand(4, 64)))
    assert info.observed_sites == ("x",)
    assert "w" in pyro.get_param_store() and "loc" in pyro.get_param_store()


def test_user_pair_from_an_installed_module():
    pair = build_pair((1, 8, 8), "pyro_vae.pairs:VAE", {
        "decoder": PAIRS["mlp"].factory((1, 8, 8)).decoder,
        "encoder": PAIRS["mlp"].factory((1, 8, 8)).encoder,
    })  # fmt: skip
    check_pair(pair, torch.bernoulli(torch.rand(3, 64)))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nowhere.py:Pair", "file 'nowhere.py' does not exist"),
        ("{file}:Missing", "has no 'Missing'; it defines: .*Pair"),
        ("{file}:NOT_A_PAIR", "built a int, which lacks methods model\\(x\\) and guide\\(x\\)"),
        ("no_such_module_xyz:Pair", "cannot import module 'no_such_module_xyz'"),
        ("{file}", "unknown pair"),
    ],
)
def test_bad_pair_specs_say_what_is_wrong(user_file, spec, message):
    with pytest.raises(PairError, match=message):
        build_pair((1, 8, 8), spec.format(file=user_file))


def test_model_without_guide_is_an_error(user_file):
    with pytest.raises(PairError, match="--guide is missing"):
        build_pair((1, 8, 8), model=f"{user_file}:model")


def _pair(model, guide):
    return FunctionPair(model, guide)


def _normal_model(x, latent="z", event=True):
    with pyro.plate("data", x.shape[0]):
        prior = dist.Normal(x.new_zeros(x.shape[0], 2), 1.0)
        z = pyro.sample(latent, prior.to_event(1) if event else prior)
        loc = z.sum(-1, keepdim=True).expand(x.shape) if event else z.sum(-1, keepdim=True)
        pyro.sample("x", dist.Normal(loc.expand(x.shape), 1.0).to_event(1), obs=x)


def _normal_guide(x, latent="z", event=True, extra=None):
    with pyro.plate("data", x.shape[0]):
        if event:
            pyro.sample(latent, dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        else:  # one scalar per point where the model has a 2-vector
            pyro.sample(latent, dist.Normal(x.new_zeros(x.shape[0]), 1.0))
        if extra:
            pyro.sample(extra, dist.Normal(x.new_zeros(x.shape), 1.0).to_event(1))


@pytest.mark.parametrize(
    "guide,message",
    [
        (lambda x: _normal_guide(x, latent="w"),
         r"latent site\(s\) \['z'\] of the model are not sampled by the guide"),
        (lambda x: _normal_guide(x, extra="x"), "the guide samples 'x', which the model observes"),
        (lambda x: _normal_guide(x, extra="y"), "the guide samples 'y', which the model does not"),
        (lambda x: _normal_guide(x, event=False),
         r"site 'z': event shape \(\) in the guide but \(2,\) in the model"),
        (lambda x: _normal_model(x),  # a model used as guide: observes x
         "the guide observes site 'x'"),
    ],
)  # fmt: skip
def test_mismatched_sites_are_named(guide, message):
    with pytest.raises(PairError, match=message):
        check_pair(_pair(_normal_model, guide), torch.randn(5, 3))


def test_model_without_observation_is_an_error():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))

    with pytest.raises(PairError, match="the model observes no site"):
        check_pair(_pair(model, guide), torch.randn(5, 3))


def test_bernoulli_likelihood_on_grey_data_says_binarize():
    pair = build_pair((1, 8, 8), "mlp")
    grey = torch.rand(4, 64) * 0.8 + 0.1
    with pytest.raises(PairError, match="--binarize dynamic or static.*--pair gaussian-mlp"):
        check_pair(pair, grey)


def test_shape_error_inside_the_model_names_the_batch_shape():
    pair = build_pair((1, 8, 8), "mlp")
    with pytest.raises(PairError, match=r"failed on a batch of shape \(4, 10\)"):
        check_pair(pair, torch.bernoulli(torch.rand(4, 10)))


@pytest.mark.parametrize("name", list(PAIRS))
def test_built_in_priors_follow_the_device_and_dtype(name, device):
    image_shape = (1, 8, 8)
    pair = build_pair(image_shape, name).to(device=device, dtype=torch.float64)
    x = data_for(name, image_shape).to(device=device, dtype=torch.float64)
    y = labels_for(pair, x)
    trace = pyro.poutine.trace(pair.model).get_trace(*((x,) if y is None else (x, y)))
    for site in ("z", "z1", "z2", "y"):
        if site in trace.nodes:
            assert trace.nodes[site]["value"].device.type == device.type
            assert trace.nodes[site]["value"].dtype == torch.float64


def test_plate_shape_error_inside_the_guide_names_the_site():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0))  # no .to_event(1)

    with pytest.raises(
        PairError, match=r"the guide's site 'z' does not fit plate\('data'\).*add .to_event\(1\)"
    ):
        check_pair(_pair(_normal_model, guide), torch.randn(5, 3))


NET = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Dropout(0.5))


def _global_model(x):
    pyro.module("net", NET)


def test_evaluation_mode_reaches_the_modules_that_plain_functions_use():
    from pyro_vae.pairs import evaluation_mode, pair_modules

    encoder = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))

    def guide(x):  # a closure over a local module
        pyro.module("encoder", encoder)

    pair = FunctionPair(_global_model, guide)
    assert [id(m) for m in pair_modules(pair)] == [id(NET), id(encoder)]
    with evaluation_mode(pair):
        assert not NET[1].training and not encoder[1].training
    assert NET[1].training and encoder[1].training
    assert pair_modules(FunctionPair(print, len)) == []  # builtins: nothing to find
