"""The user's own data in the forms it comes in: a folder of PNG/JPEG images (class subfolders,
train/valid/test subfolders, sizes to resize), a .csv table, and sets too large for memory,
memory-mapped (pyro_vae.data.images, .tables, .lazy)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import cli
from pyro_vae.data import DataError, load_dataset
from pyro_vae.data.splits import _split_by_fractions


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test decodes into a cache of its own."""
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "cache"))


def write_images(folder: Path, pixels: np.ndarray, prefix: str = "img") -> list[Path]:
    """Save each of `pixels` (N, H, W) grey or (N, H, W, 3) RGB uint8 as a PNG in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{i:03d}.png" for i in range(len(pixels))]
    for path, image in zip(paths, pixels):
        Image.fromarray(image).save(path)
    return paths


def random_pixels(seed: int, shape: tuple) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def cli_error(argv, capsys, monkeypatch) -> str:
    """Run `pyro-vae ARGV` in this process: exit 2 and one message, which is returned."""
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *args: None)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyro-vae {argv[0]}: error: ") and err.count("error:") == 1, err
    assert "Traceback" not in err
    return err


def test_an_image_folder_with_class_subfolders_is_split_by_seed_and_labelled(tmp_path):
    root = tmp_path / "pets"
    cats = random_pixels(0, (12, 5, 4))
    dogs = random_pixels(1, (8, 5, 4))
    write_images(root / "dog", dogs)  # written first: classes are numbered by sorted name
    write_images(root / "cat", cats)
    (root / "notes.txt").write_text("not an image")
    data = load_dataset(str(root), seed=3, valid_fraction=0.2, test_fraction=0.1)
    assert data.image_shape == (1, 5, 4) and data.class_names == ("cat", "dog")
    assert (data.train.shape[0], data.valid.shape[0], data.test.shape[0]) == (14, 4, 2)
    assert data.pixel_scale == 255.0 and data.num_classes == 2 and not data.lazy
    # the images in sorted order (cat/img000 ... dog/img007), split as _split_by_fractions says
    every = np.concatenate([cats, dogs]).reshape(20, -1).astype(np.float32) / np.float32(255)
    classes = np.array([0] * 12 + [1] * 8)
    for split, rows in zip(("train", "valid", "test"), _split_by_fractions(20, 0.2, 0.1, 3, "")):
        assert torch.equal(data.split(split), torch.from_numpy(every[rows]))
        assert data.split_labels(split).tolist() == classes[rows].tolist()
    again = load_dataset(str(root), seed=3, valid_fraction=0.2, test_fraction=0.1)
    assert torch.equal(again.train, data.train)  # the same seed: the same split
    other = load_dataset(str(root), seed=4, valid_fraction=0.2, test_fraction=0.1)
    assert not torch.equal(other.test, data.test)


def test_rgb_images_are_channels_first_and_a_mode_can_be_forced(tmp_path):
    pixels = random_pixels(2, (10, 3, 4, 3))
    write_images(tmp_path / "rgb", pixels)
    data = load_dataset(str(tmp_path / "rgb"), valid_fraction=0.0, test_fraction=0.1)
    assert data.image_shape == (3, 3, 4) and data.labels is None and data.valid.shape[0] == 0
    rows = _split_by_fractions(10, 0.0, 0.1, 0, "")[0]
    expected = pixels[rows].transpose(0, 3, 1, 2).reshape(len(rows), -1) / np.float32(255)
    assert torch.equal(data.train, torch.from_numpy(expected.astype(np.float32)))
    grey = load_dataset(str(tmp_path / "rgb"), image_mode="grey", test_fraction=0.1)
    first = np.asarray(Image.fromarray(pixels[rows[0]]).convert("L"), np.float32).reshape(-1) / 255
    assert grey.image_shape == (1, 3, 4) and torch.equal(grey.train[0], torch.from_numpy(first))


def test_split_subfolders_give_the_splits_and_mixed_sizes_take_image_size(tmp_path, monkeypatch):
    root = tmp_path / "split"
    for split, count in (("train", 9), ("test", 3)):
        for name, seed in (("a", 0), ("b", 1)):
            write_images(root / split / name, random_pixels(seed, (count, 6, 6)))
    odd = random_pixels(5, (1, 9, 7))[0]
    Image.fromarray(odd).save(root / "train" / "b" / "odd.png")
    with pytest.raises(DataError, match=r"differ in size .*pass --image-size N or HxW"):
        load_dataset(str(root))
    data = load_dataset(str(root), image_size="4x5", valid_fraction=0.25)
    # test/ as it is; valid cut from train/ (19 images) by --valid-fraction
    assert (data.train.shape[0], data.valid.shape[0], data.test.shape[0]) == (14, 5, 6)
    assert data.image_shape == (1, 4, 5) and data.split_labels("test").tolist() == [0] * 3 + [1] * 3
    resized = Image.fromarray(odd).resize((5, 4), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(resized, np.float32).reshape(-1) / 255)
    where = [i for i in range(14) if torch.equal(data.train[i], expected)]
    where += [i for i in range(5) if torch.equal(data.valid[i], expected)]
    assert len(where) == 1  # the odd image, resized as Pillow resizes it
    # decoded once: the second load reads the cache, a changed file decodes again
    monkeypatch.setattr("pyro_vae.data.images._decode", lambda *a: pytest.fail("decoded"))
    cached = load_dataset(str(root), image_size="4x5", valid_fraction=0.25)
    assert torch.equal(cached.train, data.train) and torch.equal(cached.test, data.test)
    (root / "train" / "b" / "odd.png").touch()
    with pytest.raises(pytest.fail.Exception, match="decoded"):
        load_dataset(str(root), image_size="4x5", valid_fraction=0.25)


def test_a_csv_table_with_and_without_a_label_column(tmp_path):
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=(20, 3)), 3).astype(np.float32)
    kinds = ["setosa", "virginica", "versicolor", "setosa"] * 5
    lines = ["sepal,kind,petal,width"] + [
        f"{a},{kind},{b},{c}" for (a, b, c), kind in zip(values.tolist(), kinds)
    ]
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(str(tmp_path / "iris.csv"), label_column="kind", seed=1)
    assert data.image_shape == (1, 1, 3) and data.pixel_scale is None
    assert data.class_names == ("setosa", "versicolor", "virginica")
    train, valid, test = _split_by_fractions(20, 0.1, 0.1, 1, "")
    assert torch.equal(data.train, torch.from_numpy(values[train]))
    index = {"setosa": 0, "versicolor": 1, "virginica": 2}
    assert data.split_labels("test").tolist() == [index[kinds[i]] for i in test]
    # no header: every column a feature; --label-column as a 0-based index, integer labels
    plain = "\n".join(f"{a},{b},{c},{i % 3 + 1}" for i, (a, b, c) in enumerate(values.tolist()))
    (tmp_path / "plain.csv").write_text(plain)
    unlabelled = load_dataset(str(tmp_path / "plain.csv"), seed=1)
    assert unlabelled.image_shape == (1, 1, 4) and unlabelled.labels is None
    labelled = load_dataset(str(tmp_path / "plain.csv"), label_column="3", seed=1)
    assert labelled.class_names == ("1", "2", "3") and torch.equal(labelled.train, data.train)
    assert labelled.split_labels("valid").tolist() == [i % 3 for i in valid]


def test_bad_image_folders_and_tables_are_one_message(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = ["train", "--out", "run", "--epochs", "1", "--device", "cpu", "--dataset"]
    write_images(tmp_path / "broken" / "a", random_pixels(0, (4, 5, 5)))
    (tmp_path / "broken" / "a" / "img002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    err = cli_error([*train, "broken"], capsys, monkeypatch)
    assert "img002.png could not be" in err and "Delete or replace it" in err
    (tmp_path / "empty").mkdir()
    err = cli_error([*train, "empty"], capsys, monkeypatch)
    assert "holds no PNG or JPEG images" in err and "class subfolders" in err
    write_images(tmp_path / "mixed", random_pixels(0, (3, 5, 5)))
    write_images(tmp_path / "mixed", random_pixels(0, (1, 6, 5)), prefix="big")
    err = cli_error([*train, "mixed"], capsys, monkeypatch)
    assert "differ in size (5x5 (img000.png), 6x5 (big000.png))" in err and "--image-size" in err
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,x7\n")
    err = cli_error([*train, "t.csv"], capsys, monkeypatch)
    assert "t.csv line 3, column 2 ('b'): 'x7' is not a number" in err and "--label-column" in err
    err = cli_error([*train, "t.csv", "--image-size", "4"], capsys, monkeypatch)
    assert "--image-size 4 has no effect here" in err and "is a .csv table" in err
    err = cli_error([*train, "nosuch"], capsys, monkeypatch)
    assert "unknown data set 'nosuch'" in err and ".csv table" in err and "folder of PNG" in err
    assert not list(tmp_path.rglob("config.toml"))


def test_an_image_folder_trains_and_its_labels_reach_evaluate(tmp_path, capsys, monkeypatch):
    """Two classes of 6x6 images, one of them 8x8 (so --image-size must reach evaluate through
    config.toml); a mixture pair's cluster accuracy is computed against the folder's labels."""
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *args: None)
    rng = np.random.default_rng(0)
    dark = (rng.random((30, 6, 6)) * 60).astype(np.uint8)
    light = (195 + rng.random((30, 6, 6)) * 60).astype(np.uint8)
    write_images(tmp_path / "shades" / "light", light)
    write_images(tmp_path / "shades" / "dark", dark)
    Image.fromarray(dark[0]).resize((8, 8)).save(tmp_path / "shades" / "dark" / "zbig.png")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "shades", "--image-size", "6", "--pair", "gmvae",
            "--pair-kwargs", '{"hidden": [16], "z_dim": 2}', "--objective", "enum",
            "--epochs", "2", "--batch-size", "20", "--device", "cpu", "--out", "run"]  # fmt: skip
    assert cli.main(argv) == 0
    config = (tmp_path / "run" / "config.toml").read_text()
    assert f'dataset = "{tmp_path / "shades"}"' in config and 'image_size = "6"' in config
    monkeypatch.chdir(tmp_path / "run")  # the folder is recorded as an absolute path
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "run"), "--num-samples", "5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cluster_site"] == "c" and summary["num_points"] == 6
    from pyro_vae.analysis.evaluate import restore_run

    restored = restore_run(tmp_path / "run")
    assert (
        restored.classes.tolist()
        == load_dataset(str(tmp_path / "shades"), image_size="6").split_labels("test").tolist()
    )
    assert set(restored.classes.tolist()) <= {0, 1}
    assert 0.5 <= summary["cluster_accuracy"] <= 1.0


def _mapped_files(tensor: torch.Tensor) -> set[str]:
    """The files mapped into this process at the address of `tensor`'s first value."""
    address, found = tensor.data_ptr(), set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(part, 16) for part in fields[0].split("-"))
        if low <= address < high and len(fields) >= 6:
            found.add(fields[5])
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc")
def test_a_lazy_npy_is_memory_mapped_through_training_and_evaluate(tmp_path):
    from pyro_vae.analysis.evaluate import evaluate
    from pyro_vae.runs.config import TrainConfig
    from pyro_vae.runs.reopen import load_data
    from pyro_vae.training.train import train

    rows = np.random.default_rng(0).random((400, 16), dtype=np.float32)
    path = tmp_path / "big.npy"
    np.save(path, rows)
    config = TrainConfig(dataset=str(path), lazy="on", pair="gaussian-mlp", device="cpu",
                         pair_kwargs={"hidden": [8], "z_dim": 2}, epochs=1, batch_size=50,
                         out=str(tmp_path / "run"))  # fmt: skip
    data = load_data(config, torch.device("cpu"))  # what training holds, moved to its device
    assert data.lazy and str(path) in _mapped_files(data.train)
    assert str(path) in _mapped_files(data.test)
    assert torch.equal(data.train, torch.from_numpy(rows[:320]))
    train(config, progress=False)
    summary = evaluate(tmp_path / "run", num_samples=5, progress=False)
    assert summary["num_points"] == 40 and np.isfinite(summary["log_px"])
    assert np.array_equal(np.load(path), rows)  # copy-on-write: the file is never written
    # what would copy the whole set is refused, naming the way out
    with pytest.raises(DataError, match="--binarize static .* would copy all of it"):
        load_dataset(str(path), lazy="on", binarize="static")
    with pytest.raises(DataError, match="--valid-size 10: .* memory-mapped"):
        data.with_valid_size(10)
    np.save(tmp_path / "bytes.npy", (rows * 255).astype(np.uint8).reshape(400, 4, 4))
    with pytest.raises(DataError, match="dtype is uint8, not float32 and --pixel-scale divides"):
        load_dataset(str(tmp_path / "bytes.npy"), lazy="on")
    auto = load_dataset(str(path))  # small: loaded whole
    assert not auto.lazy and str(path) not in _mapped_files(auto.train)


def test_an_image_folders_cache_is_memory_mapped_with_lazy(tmp_path):
    write_images(tmp_path / "few", random_pixels(0, (10, 4, 4)))
    data = load_dataset(str(tmp_path / "few"), lazy="on")
    (cache,) = (tmp_path / "cache" / "image-folders").glob("*.npy")
    assert data.lazy and str(cache) in _mapped_files(data.train)
    assert torch.equal(data.train, load_dataset(str(tmp_path / "few"), lazy="off").train)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"image_size": "0"}, "--image-size '0': give one size N"),
        ({"image_size": "28x"}, "--image-size '28x'"),
        ({"image_mode": "colour"}, "--image-mode 'colour': choose from auto, grey, rgb"),
        ({"valid_fraction": 0.6, "test_fraction": 0.5}, "together below 1"),
        ({"test_fraction": 0.0}, "the test fraction above 0"),
        ({"lazy": "yes"}, "--lazy 'yes': choose from auto, on, off"),
    ],
)
def test_source_settings_are_checked_with_the_config(values, message):
    from pyro_vae.runs.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values).validate()


def test_source_settings_round_trip_through_toml(tmp_path):
    from pyro_vae.runs.config import TrainConfig, dumps_toml, load_toml

    config = TrainConfig(dataset="pets", image_size="32x24", image_mode="rgb", lazy="on",
                         valid_fraction=0.2, test_fraction=0.05, label_column="kind")  # fmt: skip
    (tmp_path / "config.toml").write_text(dumps_toml(config.to_dict()))
    assert TrainConfig(**load_toml(tmp_path / "config.toml")) == config
    (tmp_path / "typed.toml").write_text("image_size = 28\n")  # a number, as a user writes it
    assert load_toml(tmp_path / "typed.toml") == {"image_size": "28"}
