"""Tests for pyro_vae.data: readers, lookup, checksums, download, binarization, minibatches."""

import functools
import gzip
import hashlib
import http.server
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from pyro_vae import data
from pyro_vae.data import DataError

MNIST_TRAIN = "train-images-idx3-ubyte.gz"
MNIST_TEST = "t10k-images-idx3-ubyte.gz"
MNIST_TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
MNIST_TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FREY = "frey_rawface.mat"


# --------------------------------------------------------------------------------------------
# Helpers that write small files in the real formats


def write_idx(path: Path, images: np.ndarray, *, magic: int = 2051, count=None) -> Path:
    """Gzipped IDX image file; `count` overrides the header's image count (to fake truncation)."""
    header = [magic, len(images) if count is None else count, *images.shape[1:]]
    content = b"".join(value.to_bytes(4, "big") for value in header) + images.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content, compresslevel=1))
    return path


def write_mnist_like(folder: Path, seed: int = 0, num_train: int = 10_002, num_test: int = 3):
    """MNIST-format train/t10k image files of random bytes; returns the two uint8 arrays."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, size=(num_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(num_test, 28, 28), dtype=np.uint8)
    write_idx(folder / MNIST_TRAIN, train)
    write_idx(folder / MNIST_TEST, test)
    return train, test


def write_idx_labels(path: Path, labels, *, magic: int = 2049, count=None, zipped=True) -> Path:
    """IDX label file (gzipped unless `zipped` is False); `count` overrides the header's count."""
    labels = np.asarray(labels, dtype=np.uint8)
    header = [magic, len(labels) if count is None else count]
    content = b"".join(value.to_bytes(4, "big") for value in header) + labels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content, compresslevel=1) if zipped else content)
    return path


def write_labelled_mnist_like(folder: Path, num_train: int = 10_003, num_test: int = 4):
    """MNIST-format images and labels whose first pixel is the row's label (to check pairing);
    returns (train labels, test labels)."""
    rng = np.random.default_rng(14)
    train_labels = rng.integers(0, 10, size=num_train, dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=num_test, dtype=np.uint8)
    train, test = write_mnist_like(folder, num_train=num_train, num_test=num_test)
    train[:, 0, 0], test[:, 0, 0] = train_labels, test_labels
    write_idx(folder / MNIST_TRAIN, train)
    write_idx(folder / MNIST_TEST, test)
    write_idx_labels(folder / MNIST_TRAIN_LABELS, train_labels)
    write_idx_labels(folder / MNIST_TEST_LABELS, test_labels)
    return train_labels.astype(np.int64), test_labels.astype(np.int64)


def amat_text(rows: np.ndarray) -> bytes:
    """Rows of 0/1 in the canonical .amat text format."""
    return b"".join(b" ".join(b"%d" % value for value in row) + b"\n" for row in rows)


def write_frey_like(path: Path, num_faces: int = 410, seed: int = 0) -> np.ndarray:
    """A MATLAB file holding `ff` uint8 (560, num_faces), like frey_rawface.mat; returns ff."""
    faces = np.random.default_rng(seed).integers(0, 256, size=(560, num_faces), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"ff": faces})
    return faces


def checksum_like(expected: str, path: Path) -> str:
    """The file's digest in the same algorithm as `expected` (md5 or sha256, told by length)."""
    algorithm = "md5" if len(expected) == 32 else "sha256"
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def trust(monkeypatch, name: str, *paths: Path) -> None:
    """Make DATASETS[name] accept these generated files: their digests replace the real ones."""
    by_name = {path.name: path for path in paths}
    spec = data.DATASETS[name]
    files = {
        role: tuple(
            replace(form, checksum=checksum_like(form.checksum, by_name[form.filename]))
            if form.filename in by_name
            else form
            for form in forms
        )
        for role, forms in spec.files.items()
    }
    monkeypatch.setitem(data.DATASETS, name, replace(spec, files=files))


def as_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 images as the expected flattened float32 / 255."""
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)) / 255


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> Path:
    """No $PYRO_VAE_DATA_DIR and a fresh cache under tmp_path; returns the cache folder."""
    monkeypatch.delenv("PYRO_VAE_DATA_DIR", raising=False)
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------
# Readers on generated files


def test_read_idx_images_round_trip(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "images.gz", images)
    np.testing.assert_array_equal(data.read_idx_images(path), images)


def test_mnist_like_split_and_scaling(tmp_path, clean_env, monkeypatch):
    train, test = write_mnist_like(tmp_path / "root" / "mnist")
    trust(monkeypatch, "mnist", tmp_path / "root" / "mnist" / MNIST_TRAIN)
    trust(monkeypatch, "mnist", tmp_path / "root" / "mnist" / MNIST_TEST)
    dataset = data.load_dataset("mnist", tmp_path / "root")
    assert torch.equal(dataset.train, as_unit(train[:2]))
    assert torch.equal(dataset.valid, as_unit(train[2:]))
    assert torch.equal(dataset.test, as_unit(test))
    assert dataset.train.dtype == torch.float32
    assert dataset.image_shape == (1, 28, 28)
    assert dataset.binary is False
    assert dataset.pixel_scale == 255.0
    assert dataset.train[0, 0].item() == np.float32(train[0, 0, 0]) / np.float32(255)


def test_read_amat_canonical_and_loose_text(tmp_path):
    rows = np.random.default_rng(2).integers(0, 2, size=(3, 784))
    canonical = tmp_path / "rows.amat.gz"
    canonical.write_bytes(gzip.compress(amat_text(rows)))
    loose = tmp_path / "rows.amat"  # \r\n, doubled spaces, trailing blanks, no final newline
    loose.write_bytes(amat_text(rows).replace(b" ", b"  ").replace(b"\n", b" \r\n").rstrip())
    for path in (canonical, loose):
        values = data.read_amat(path)
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, rows)


def test_binarized_mnist_from_amat_files(tmp_path, clean_env, monkeypatch):
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    rng = np.random.default_rng(3)
    expected, written = {}, []
    for size, split in zip((5, 2, 2), data.SPLITS):
        expected[split] = rng.integers(0, 2, size=(size, 784))
        path = folder / f"binarized_mnist_{split}.amat"  # the uncompressed form, sha256-checked
        path.write_bytes(amat_text(expected[split]))
        written.append(path)
    trust(monkeypatch, "binarized-mnist", *written)
    dataset = data.load_dataset("binarized-mnist", tmp_path)
    for split in data.SPLITS:
        assert torch.equal(dataset.split(split), torch.tensor(expected[split], dtype=torch.float32))
    assert dataset.binary is True
    assert dataset.pixel_scale is None  # 0/1 bits, nothing to scale, so --pixel-scale none is fine
    kept = data.load_dataset("binarized-mnist", tmp_path, pixel_scale="none")
    assert torch.equal(kept.train, dataset.train) and kept.pixel_scale is None


def test_frey_face_from_mat(tmp_path, clean_env, monkeypatch):
    faces = write_frey_like(tmp_path / "frey_face" / FREY)
    trust(monkeypatch, "frey-face", tmp_path / "frey_face" / FREY)
    dataset = data.load_dataset("frey-face", tmp_path)
    assert (len(dataset.train), len(dataset.valid), len(dataset.test)) == (10, 200, 200)
    assert dataset.image_shape == (1, 28, 20)
    images = faces.T.reshape(-1, 28, 20)
    assert torch.equal(dataset.train, as_unit(images[:10]))
    assert torch.equal(dataset.valid, as_unit(images[10:210]))
    assert torch.equal(dataset.test, as_unit(images[210:]))
    assert dataset.pixel_scale == 255.0
    assert data.DATASETS["frey-face"].default_pair == "gaussian-mlp"


@pytest.mark.parametrize(
    "shape, image_shape, pixel_scale",
    [((20, 5, 4), (1, 5, 4), 255.0), ((20, 3, 4, 4), (3, 4, 4), 255.0), ((20, 7), (1, 1, 7), None)],
)
def test_npy_splits_and_image_shape(tmp_path, clean_env, shape, image_shape, pixel_scale):
    array = np.random.default_rng(4).integers(0, 256, size=shape, dtype=np.uint8)
    np.save(tmp_path / "images.npy", array)
    dataset = data.load_dataset(str(tmp_path / "images.npy"))
    assert dataset.image_shape == image_shape
    assert dataset.pixel_scale == pixel_scale  # flat uint8 rows may be counts: kept (auto)
    flat = as_unit(array) * 255 if pixel_scale is None else as_unit(array)
    assert torch.equal(dataset.train, flat[:16])
    assert torch.equal(dataset.valid, flat[16:18])
    assert torch.equal(dataset.test, flat[18:])


def test_npy_float_data_used_as_is(tmp_path, clean_env):
    array = np.linspace(-1.0, 2.0, 30 * 4).reshape(30, 4)
    np.save(tmp_path / "values.npy", array)
    dataset = data.load_dataset(str(tmp_path / "values.npy"))
    assert torch.equal(dataset.test, torch.tensor(array[27:], dtype=torch.float32))


def test_npz_named_splits(tmp_path, clean_env):
    rng = np.random.default_rng(5)
    arrays = {
        split: rng.random((n, 2, 3)).astype(np.float32) for split, n in zip(data.SPLITS, (6, 3, 4))
    }
    np.savez(tmp_path / "named.npz", **arrays)
    dataset = data.load_dataset(str(tmp_path / "named.npz"))
    for split in data.SPLITS:
        assert torch.equal(dataset.split(split), torch.from_numpy(arrays[split].reshape(-1, 6)))
    assert dataset.image_shape == (1, 2, 3)


def test_npz_without_valid_takes_last_tenth_of_train(tmp_path, clean_env):
    train = np.arange(20 * 3, dtype=np.uint8).reshape(20, 3)
    test = np.full((4, 3), 255, dtype=np.uint8)
    np.savez(tmp_path / "no_valid.npz", train=train, test=test)
    dataset = data.load_dataset(str(tmp_path / "no_valid.npz"), pixel_scale="255")
    assert torch.equal(dataset.train, as_unit(train[:18]))
    assert torch.equal(dataset.valid, as_unit(train[18:]))
    assert torch.equal(dataset.test, torch.ones(4, 3))


def test_npz_single_array_split_like_npy(tmp_path, clean_env):
    array = np.random.default_rng(6).random((40, 5)).astype(np.float32)
    np.savez(tmp_path / "single.npz", images=array)
    dataset = data.load_dataset(str(tmp_path / "single.npz"))
    assert [len(dataset.split(split)) for split in data.SPLITS] == [32, 4, 4]
    assert torch.equal(dataset.valid, torch.from_numpy(array[32:36]))


def test_array_path_relative_to_data_dir(tmp_path, clean_env):
    np.save(tmp_path / "mine.npy", np.zeros((10, 2), dtype=np.float32))
    assert data.load_dataset("mine.npy", tmp_path).binary is True


def test_digits_is_default_and_offline(clean_env):
    from sklearn.datasets import load_digits

    dataset = data.load_dataset(data.DEFAULT_DATASET)
    expected = torch.from_numpy((load_digits().data / 16.0).astype(np.float32))
    assert data.DEFAULT_DATASET == "digits"
    assert torch.equal(dataset.train, expected[:1297])
    assert torch.equal(dataset.valid, expected[1297:1497])
    assert torch.equal(dataset.test, expected[1497:])
    target = torch.from_numpy(load_digits().target.astype(np.int64))
    assert torch.equal(torch.cat([dataset.labels[s] for s in data.SPLITS]), target)
    assert dataset.image_shape == (1, 8, 8)
    assert dataset.train.max().item() == 1.0 and dataset.train.min().item() == 0.0
    assert not list(clean_env.parent.glob("cache/**/*"))  # nothing written anywhere


# --------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_registry_entries_are_consistent(name):
    spec = data.DATASETS[name]
    assert spec.name == name
    assert spec.default_binarize in data.BINARIZATIONS
    assert spec.default_pair in ("mlp", "gaussian-mlp")
    assert len(spec.image_shape) == 3 and spec.description
    assert spec.pixel_scale is None or spec.pixel_scale > 1  # a divisor of stored levels
    assert set(spec.label_roles) <= set(spec.files)
    assert spec.num_classes is not None or not spec.label_roles  # label files need classes
    for forms in spec.files.values():
        assert forms and any(form.url for form in forms)  # every file can be downloaded
        for form in forms:
            assert len(form.checksum) in (32, 64)
            int(form.checksum, 16)


def test_binarizations_table():
    assert data.BINARIZATIONS == ("none", "static", "dynamic")


# --------------------------------------------------------------------------------------------
# Errors a user can cause


def test_missing_file_lists_names_places_and_fixes(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", str(tmp_path / "env_root"))
    (tmp_path / "flag_root").mkdir()
    with pytest.raises(DataError) as caught:
        data.load_dataset("mnist", tmp_path / "flag_root")
    message = str(caught.value)
    for root in (tmp_path / "flag_root", tmp_path / "env_root", clean_env):
        for filename in (MNIST_TRAIN, MNIST_TEST):
            assert str(root / "mnist" / filename) in message
            assert str(root / filename) in message
    assert message.index("flag_root") < message.index("env_root") < message.index(str(clean_env))
    for fix in ("--data-dir", "PYRO_VAE_DATA_DIR", "--download"):
        assert fix in message


def test_missing_array_file(tmp_path, clean_env):
    with pytest.raises(DataError, match="not found") as caught:
        data.load_dataset(str(tmp_path / "absent.npz"))
    assert "absent.npz" in str(caught.value)


@pytest.mark.parametrize(
    "content, complaint",
    [(b"this is not gzip at all", "not a valid gzip"), (None, "not a valid gzip")],
    ids=["garbage", "truncated-gzip"],
)
def test_corrupt_gzip(tmp_path, clean_env, monkeypatch, content, complaint):
    write_mnist_like(tmp_path, num_train=10_001, num_test=1)
    path = tmp_path / MNIST_TRAIN
    path.write_bytes(content if content is not None else path.read_bytes()[:5000])
    trust(monkeypatch, "mnist", path, tmp_path / MNIST_TEST)
    with pytest.raises(DataError, match=complaint) as caught:
        data.load_dataset("mnist", tmp_path)
    assert str(path) in str(caught.value)
    assert "--download" in str(caught.value)


def test_truncated_idx(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "short.gz", images, count=5)
    with pytest.raises(DataError, match="truncated") as caught:
        data.read_idx_images(path)
    assert str(path) in str(caught.value) and "5 images" in str(caught.value)


def test_idx_with_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros((3, 28, 28), dtype=np.uint8), magic=2049)
    with pytest.raises(DataError, match="magic number 2049"):
        data.read_idx_images(path)


def test_mnist_with_too_few_training_images(tmp_path, clean_env, monkeypatch):
    write_mnist_like(tmp_path, num_train=10, num_test=1)
    trust(monkeypatch, "mnist", tmp_path / MNIST_TRAIN, tmp_path / MNIST_TEST)
    with pytest.raises(DataError, match="has 10 images; need more than 10000"):
        data.load_dataset("mnist", tmp_path)


def test_corrupt_amat(tmp_path):
    path = tmp_path / "bad.amat"
    path.write_bytes(b"0 1 2\n")
    with pytest.raises(DataError, match="other than 0, 1") as caught:
        data.read_amat(path, dim=3)
    assert str(path) in str(caught.value)
    path.write_bytes(b"0 1 1\n0 1\n")
    with pytest.raises(DataError, match="row 2 has 2 values, expected 3"):
        data.read_amat(path, dim=3)


def test_corrupt_mat(tmp_path, clean_env, monkeypatch):
    path = tmp_path / FREY
    write_frey_like(path)
    path.write_bytes(path.read_bytes()[:300])
    trust(monkeypatch, "frey-face", path)
    with pytest.raises(DataError, match="could not be read as a MATLAB") as caught:
        data.load_dataset("frey-face", tmp_path)
    assert str(path) in str(caught.value)


def test_wrong_checksum_names_file_and_both_digests(tmp_path, clean_env):
    path = tmp_path / "frey_face" / FREY
    write_frey_like(path)
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(DataError) as caught:
        data.load_dataset("frey-face", tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert data.DATASETS["frey-face"].files["faces"][0].checksum in message
    assert actual in message
    assert "delete it" in message and "--download" in message


def test_nan_in_npy_counts_bad_values(tmp_path, clean_env):
    array = np.ones((20, 4), dtype=np.float32)
    array[1, 2] = np.nan
    array[3, 0] = np.inf
    array[3, 1] = np.nan
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match="3 non-finite values") as caught:
        data.load_dataset(str(tmp_path / "bad.npy"))
    message = str(caught.value)
    assert "bad.npy" in message and "'train'" in message and "nan_to_num" in message


def test_unknown_dataset_lists_known_names(clean_env):
    with pytest.raises(DataError, match="unknown data set 'mnits'") as caught:
        data.load_dataset("mnits")
    for name in data.DATASETS:
        assert name in str(caught.value)
    assert ".npy" in str(caught.value)


def test_unknown_binarization_lists_choices(clean_env):
    for call in (
        lambda: data.load_dataset("digits", binarize="sometimes"),
        lambda: data.minibatches(torch.zeros(4, 2), 2, binarize="sometimes"),
    ):
        with pytest.raises(DataError, match="--binarize") as caught:
            call()
        assert "'sometimes'" in str(caught.value)
        assert all(choice in str(caught.value) for choice in data.BINARIZATIONS)


def test_bernoulli_binarization_needs_unit_interval(tmp_path, clean_env):
    np.save(tmp_path / "wide.npy", np.full((10, 2), 3.0, dtype=np.float32))
    with pytest.raises(DataError, match=r"needs values in \[0, 1\]"):
        data.load_dataset(str(tmp_path / "wide.npy"), binarize="static")
    assert data.load_dataset(str(tmp_path / "wide.npy")).train.max().item() == 3.0


def test_bernoulli_binarization_of_flat_pixels_points_to_pixel_scale(tmp_path, clean_env):
    pixels = np.tile(np.array([0, 51, 255], dtype=np.uint8), (10, 1))  # flat: kept under auto
    np.save(tmp_path / "flat_pixels.npy", pixels)
    with pytest.raises(DataError, match="--pixel-scale 255"):
        data.load_dataset(str(tmp_path / "flat_pixels.npy"), binarize="static")
    path = str(tmp_path / "flat_pixels.npy")
    dataset = data.load_dataset(path, binarize="static", pixel_scale="255")
    assert torch.equal(dataset.train[:, [0, 2]], torch.tensor([[0.0, 1.0]]).expand(8, 2))


def test_dataset_split_and_shape_errors():
    dataset = data.Dataset(
        "toy", torch.zeros(3, 4), torch.zeros(1, 4), torch.ones(2, 4), (1, 2, 2), True
    )
    assert dataset.split("test") is dataset.test
    assert dataset.pixel_scale is None  # the field's default: positional callers keep working
    with pytest.raises(DataError, match="unknown split 'dev'"):
        dataset.split("dev")
    with pytest.raises(DataError, match=r"expected \(N, 5\)"):
        data.Dataset("toy", torch.zeros(3, 4), torch.zeros(1, 4), torch.ones(2, 4), (1, 1, 5), True)


def test_dataset_to_device(device):
    dataset = data.Dataset(
        "toy", torch.zeros(3, 4), torch.zeros(1, 4), torch.ones(2, 4), (1, 2, 2), True
    )
    moved = dataset.to(device)
    assert all(moved.split(split).device.type == device.type for split in data.SPLITS)
    assert torch.equal(moved.test.cpu(), dataset.test) and moved.image_shape == (1, 2, 2)


# --------------------------------------------------------------------------------------------
# Pixel scale (--pixel-scale): counts stay counts, pixels go to [0, 1]


def test_flat_uint8_counts_come_back_as_the_same_integers(tmp_path, clean_env, caplog):
    counts = np.random.default_rng(7).poisson(4.0, size=(30, 6)).astype(np.uint8)
    counts[0] = [0, 3, 17, 1, 0, 200]  # bag-of-words counts, one far above 1
    np.save(tmp_path / "counts.npy", counts)
    with caplog.at_level("INFO", logger="pyro_vae.data"):
        dataset = data.load_dataset(str(tmp_path / "counts.npy"))
    assert torch.equal(dataset.train[0], torch.tensor([0.0, 3.0, 17.0, 1.0, 0.0, 200.0]))
    expected = torch.from_numpy(counts.astype(np.float32))
    assert torch.equal(torch.cat([dataset.train, dataset.valid, dataset.test]), expected)
    assert dataset.train.dtype == torch.float32
    assert dataset.pixel_scale is None and dataset.binary is False
    assert "--pixel-scale 255" in caplog.text  # not an error, but the way out is named


@pytest.mark.parametrize("example_shape", [(5,), (2, 3)])
def test_int64_npz_counts_with_named_splits_stay_integers(tmp_path, clean_env, example_shape):
    rng = np.random.default_rng(8)
    arrays = {
        split: rng.integers(0, 5000, size=(n, *example_shape), dtype=np.int64)
        for split, n in zip(data.SPLITS, (12, 4, 5))
    }
    arrays["test"][0].flat[:3] = [0, 3, 17]
    np.savez(tmp_path / "counts.npz", **arrays)
    dataset = data.load_dataset(str(tmp_path / "counts.npz"))
    for split in data.SPLITS:
        expected = torch.from_numpy(arrays[split].reshape(len(arrays[split]), -1)).float()
        assert torch.equal(dataset.split(split), expected)
    assert dataset.test[0, :3].tolist() == [0.0, 3.0, 17.0]
    assert dataset.train.max().item() > 255  # nothing divided, whatever the example shape
    assert dataset.pixel_scale is None


@pytest.mark.parametrize("pixel_scale", [None, "auto"])  # None: the keyword's default
def test_uint8_images_scaled_to_unit_interval_under_auto(tmp_path, clean_env, pixel_scale):
    images = np.random.default_rng(9).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    images[0, 0, :3] = [0, 51, 255]
    np.save(tmp_path / "images.npy", images)
    keywords = {} if pixel_scale is None else {"pixel_scale": pixel_scale}
    dataset = data.load_dataset(str(tmp_path / "images.npy"), **keywords)
    assert dataset.train[0, :3].tolist() == [0.0, np.float32(51) / np.float32(255), 1.0]
    assert torch.equal(torch.cat([dataset.train, dataset.valid, dataset.test]), as_unit(images))
    assert dataset.image_shape == (1, 8, 8) and dataset.pixel_scale == 255.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float64])
def test_pixel_scale_255_divides_every_array_file(tmp_path, clean_env, dtype):
    rows = np.random.default_rng(10).integers(0, 256, size=(20, 6)).astype(dtype)
    rows[0, :3] = [0, 17, 255]
    np.save(tmp_path / "rows.npy", rows)
    dataset = data.load_dataset(str(tmp_path / "rows.npy"), pixel_scale="255")
    assert dataset.train[0, :3].tolist() == [0.0, np.float32(17) / np.float32(255), 1.0]
    expected = torch.from_numpy(rows.astype(np.float32)) / 255
    assert torch.equal(torch.cat([dataset.train, dataset.valid, dataset.test]), expected)
    assert dataset.pixel_scale == 255.0


def test_pixel_scale_none_keeps_uint8_images_raw(tmp_path, clean_env):
    images = np.random.default_rng(11).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    images[-1, -1, -3:] = [0, 3, 255]
    np.save(tmp_path / "images.npy", images)
    dataset = data.load_dataset(str(tmp_path / "images.npy"), pixel_scale="none")
    assert dataset.test[-1, -3:].tolist() == [0.0, 3.0, 255.0]
    expected = torch.from_numpy(images.reshape(20, 64).astype(np.float32))
    assert torch.equal(torch.cat([dataset.train, dataset.valid, dataset.test]), expected)
    assert dataset.image_shape == (1, 8, 8) and dataset.pixel_scale is None


@pytest.mark.parametrize(
    "name", sorted(name for name, spec in data.DATASETS.items() if spec.pixel_scale is not None)
)
def test_pixel_scale_none_with_a_named_pixel_set_is_an_error(clean_env, name):
    # Raised before any file lookup: mnist's missing files are not the error reported.
    with pytest.raises(DataError, match="--pixel-scale") as caught:
        data.load_dataset(name, pixel_scale="none")
    message = str(caught.value)
    assert repr(name) in message and "always scaled to [0, 1]" in message
    assert ".npy/.npz" in message


def test_pixel_scale_none_with_digits_names_the_flag(clean_env):
    with pytest.raises(DataError, match="--pixel-scale none") as caught:
        data.load_dataset("digits", pixel_scale="none")
    assert "'digits'" in str(caught.value) and "/16" in str(caught.value)
    assert data.load_dataset("digits", pixel_scale="255").pixel_scale == 16.0  # as under auto


@pytest.mark.parametrize("pixel_scale", ["1/255", "AUTO", 255, None])
def test_unknown_pixel_scale_lists_choices(tmp_path, clean_env, pixel_scale):
    np.save(tmp_path / "rows.npy", np.zeros((10, 2), dtype=np.uint8))
    for name in ("digits", str(tmp_path / "rows.npy")):
        with pytest.raises(DataError, match="--pixel-scale") as caught:
            data.load_dataset(name, pixel_scale=pixel_scale)
        assert repr(pixel_scale) in str(caught.value)
        assert all(choice in str(caught.value) for choice in data.PIXEL_SCALES)
    assert data.PIXEL_SCALES == ("auto", "none", "255")


@pytest.mark.parametrize("pixel_scale", data.PIXEL_SCALES)
@pytest.mark.parametrize(
    "dtype, shape", [(np.uint8, (20, 6)), (np.uint8, (20, 2, 3)), (np.int32, (20, 2, 3))]
)
def test_dataset_records_the_divisor_it_applied(tmp_path, clean_env, pixel_scale, dtype, shape):
    stored = np.random.default_rng(12).integers(0, 256, size=shape).astype(dtype)
    np.save(tmp_path / "stored.npy", stored)
    dataset = data.load_dataset(str(tmp_path / "stored.npy"), pixel_scale=pixel_scale)
    values = torch.cat([dataset.train, dataset.valid, dataset.test])
    raw = torch.from_numpy(stored.reshape(20, 6).astype(np.float32))
    expected = raw if dataset.pixel_scale is None else raw / np.float32(dataset.pixel_scale)
    assert torch.equal(values, expected)
    image_uint8 = dtype == np.uint8 and len(shape) == 3
    divisors = {"auto": 255.0 if image_uint8 else None, "none": None, "255": 255.0}
    assert dataset.pixel_scale == divisors[pixel_scale]


def test_splits_that_auto_would_scale_differently_are_an_error(tmp_path, clean_env):
    images = np.random.default_rng(13).integers(0, 256, size=(10, 2, 3), dtype=np.uint8)
    np.savez(tmp_path / "mixed.npz", train=images, test=images.astype(np.float32) / 255)
    with pytest.raises(DataError, match="scale the splits differently") as caught:
        data.load_dataset(str(tmp_path / "mixed.npz"))
    assert "uint8" in str(caught.value) and "float32" in str(caught.value)
    raw = data.load_dataset(str(tmp_path / "mixed.npz"), pixel_scale="none")
    assert torch.equal(raw.train, torch.from_numpy(images[:9].reshape(9, 6)).float())


# --------------------------------------------------------------------------------------------
# Where files are looked up


def test_search_roots_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "cache"))
    assert data.search_roots(tmp_path / "flag") == [
        tmp_path / "flag",
        tmp_path / "env",
        tmp_path / "cache",
    ]
    monkeypatch.delenv("PYRO_VAE_DATA_DIR")
    assert data.search_roots() == [tmp_path / "cache"]


def test_cache_dir_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("PYRO_VAE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "pyro_vae"
    monkeypatch.setenv("PYRO_VAE_CACHE", str(tmp_path / "mine"))
    assert data.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("PYRO_VAE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "pyro_vae"


def test_lookup_order_flag_then_env_then_cache(tmp_path, monkeypatch):
    roots = {place: tmp_path / place for place in ("flag", "env", "cache")}
    faces = {
        place: write_frey_like(root / "frey_face" / FREY, seed=i)
        for i, (place, root) in enumerate(roots.items())
    }
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", str(roots["env"]))
    monkeypatch.setenv("PYRO_VAE_CACHE", str(roots["cache"]))
    # The checksum accepts only the expected winner, so a wrong pick fails loudly too.
    for place, data_dir in (("flag", roots["flag"]), ("env", None), ("cache", None)):
        if place == "cache":
            monkeypatch.delenv("PYRO_VAE_DATA_DIR")
        trust(monkeypatch, "frey-face", roots[place] / "frey_face" / FREY)
        dataset = data.load_dataset("frey-face", data_dir)
        assert torch.equal(dataset.train[0], as_unit(faces[place].T[:1])[0]), place


def test_files_own_folder_accepted(tmp_path, clean_env, monkeypatch):
    faces = write_frey_like(tmp_path / "anywhere" / FREY)
    trust(monkeypatch, "frey-face", tmp_path / "anywhere" / FREY)
    dataset = data.load_dataset("frey-face", tmp_path / "anywhere")
    assert torch.equal(dataset.test[-1], as_unit(faces.T[-1:])[0])


# --------------------------------------------------------------------------------------------
# Download, against a local HTTP server only


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 (port chosen by the OS); yields (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_success_lands_in_cache(http_folder, clean_env, monkeypatch):
    folder, base_url = http_folder
    faces = write_frey_like(folder / FREY)
    trust(monkeypatch, "frey-face", folder / FREY)
    with pytest.raises(DataError, match="--download"):
        data.load_dataset("frey-face")
    dataset = data.load_dataset("frey-face", download=True, base_url=base_url + "/")
    assert (clean_env / "frey_face" / FREY).read_bytes() == (folder / FREY).read_bytes()
    assert [path.name for path in (clean_env / "frey_face").iterdir()] == [FREY]
    assert torch.equal(dataset.train, as_unit(faces.T[:10]))
    (folder / FREY).unlink()  # now served from the cache, no second download
    assert torch.equal(data.load_dataset("frey-face").train, dataset.train)


def test_download_fetches_uncompressed_amat(http_folder, clean_env, monkeypatch):
    folder, base_url = http_folder
    rows = np.eye(2, 784, dtype=np.int64)
    names = [f"binarized_mnist_{split}.amat" for split in data.SPLITS]
    for name in names:
        (folder / name).write_bytes(amat_text(rows))
    trust(monkeypatch, "binarized-mnist", *(folder / name for name in names))
    dataset = data.load_dataset("binarized-mnist", download=True, base_url=base_url)
    assert sorted(path.name for path in (clean_env / "binarized_mnist").iterdir()) == sorted(names)
    assert torch.equal(dataset.valid, torch.eye(2, 784))


def test_download_checksum_mismatch_leaves_nothing(http_folder, clean_env):
    folder, base_url = http_folder
    write_frey_like(folder / FREY)
    with pytest.raises(DataError, match="checksum mismatch") as caught:
        data.load_dataset("frey-face", download=True, base_url=base_url)
    assert FREY in str(caught.value)
    assert list((clean_env / "frey_face").iterdir()) == []


def test_download_http_error_says_how_to_place_by_hand(http_folder, clean_env):
    _, base_url = http_folder  # serves nothing: 404
    with pytest.raises(DataError, match="download of .*frey_rawface.mat failed") as caught:
        data.load_dataset("frey-face", download=True, base_url=base_url)
    assert "by hand" in str(caught.value) and "--data-dir" in str(caught.value)
    assert list((clean_env / "frey_face").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Class labels


@pytest.mark.parametrize("zipped", [True, False])
def test_read_idx_labels_round_trip(tmp_path, zipped):
    labels = np.array([7, 2, 1, 0, 4, 9, 5], dtype=np.uint8)
    name = "labels.gz" if zipped else "labels"
    path = write_idx_labels(tmp_path / name, labels, zipped=zipped)
    read = data.read_idx_labels(path)
    assert read.dtype == np.int64 and read.flags.writeable
    np.testing.assert_array_equal(read, labels)


@pytest.mark.parametrize(
    "keywords, complaint",
    [
        ({"magic": 2051}, "magic number 2051 marks an IDX image file"),
        ({"magic": 7}, "magic number 7, expected 2049"),
        ({"count": 5}, "promises 5 labels .* truncated or corrupt"),
    ],
    ids=["image-file", "other-magic", "truncated"],
)
def test_idx_labels_errors(tmp_path, keywords, complaint):
    path = write_idx_labels(tmp_path / "labels.gz", [1, 2, 3], **keywords)
    with pytest.raises(DataError, match=complaint) as caught:
        data.read_idx_labels(path)
    assert str(path) in str(caught.value)


def test_idx_labels_too_short(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="too short .3 bytes. to be an IDX label file"):
        data.read_idx_labels(path)


def test_mnist_like_labels_split_like_images(tmp_path, clean_env, monkeypatch):
    folder = tmp_path / "mnist"
    train_labels, test_labels = write_labelled_mnist_like(folder)
    names = (MNIST_TRAIN, MNIST_TEST, MNIST_TRAIN_LABELS, MNIST_TEST_LABELS)
    trust(monkeypatch, "mnist", *(folder / name for name in names))
    dataset = data.load_dataset("mnist", tmp_path)
    assert dataset.num_classes == 10
    expected = {"train": train_labels[:3], "valid": train_labels[3:], "test": test_labels}
    for split in data.SPLITS:
        labels = dataset.split_labels(split)
        assert labels.dtype == torch.int64
        assert torch.equal(labels, torch.from_numpy(expected[split]))
        # Row i's first pixel holds row i's label: images and labels in the same order.
        assert torch.equal((dataset.split(split)[:, 0] * 255).round().long(), labels)
    assert "num_classes=10" in repr(dataset)


def test_mnist_like_without_label_files_loads_unlabelled(tmp_path, clean_env, monkeypatch):
    train, test = write_mnist_like(tmp_path / "mnist")
    trust(monkeypatch, "mnist", tmp_path / "mnist" / MNIST_TRAIN, tmp_path / "mnist" / MNIST_TEST)
    dataset = data.load_dataset("mnist", tmp_path)
    assert torch.equal(dataset.valid, as_unit(train[2:]))  # the images as ever
    assert dataset.labels is None and dataset.num_classes is None
    assert "num_classes=None" in repr(dataset)
    with pytest.raises(DataError, match="'mnist' was loaded without class labels") as caught:
        dataset.split_labels("train")
    message = str(caught.value)
    for name in (MNIST_TRAIN_LABELS, MNIST_TEST_LABELS):
        assert name in message
        assert str(tmp_path / "mnist" / name) in message and str(clean_env / name) in message
    assert "--download" in message and "--data-dir" in message


def test_one_missing_label_file_is_the_one_named(tmp_path, clean_env, monkeypatch):
    folder = tmp_path / "mnist"
    write_labelled_mnist_like(folder)
    (folder / MNIST_TEST_LABELS).unlink()
    names = (MNIST_TRAIN, MNIST_TEST, MNIST_TRAIN_LABELS)
    trust(monkeypatch, "mnist", *(folder / name for name in names))
    dataset = data.load_dataset("mnist", tmp_path)
    with pytest.raises(DataError) as caught:
        dataset.split_labels("test")
    assert MNIST_TEST_LABELS in str(caught.value)
    assert MNIST_TRAIN_LABELS not in str(caught.value)


def test_label_file_checksum_is_verified(tmp_path, clean_env, monkeypatch):
    folder = tmp_path / "mnist"
    write_labelled_mnist_like(folder)
    trust(monkeypatch, "mnist", *(folder / name for name in (MNIST_TRAIN, MNIST_TEST)))
    with pytest.raises(DataError, match="checksum mismatch") as caught:
        data.load_dataset("mnist", tmp_path)  # our fake label files are not the real ones
    assert str(folder / MNIST_TRAIN_LABELS) in str(caught.value)  # the first label file looked up


@pytest.mark.parametrize(
    "labels, complaint",
    [
        ([1, 2], "holds 2 labels but .*train-images-idx3-ubyte.gz holds 10003 images"),
        ([10] * 10_003, "holds label 10, but the classes are 0..9"),
    ],
    ids=["count-mismatch", "label-out-of-range"],
)
def test_bad_mnist_label_file(tmp_path, clean_env, monkeypatch, labels, complaint):
    folder = tmp_path / "mnist"
    write_labelled_mnist_like(folder)
    write_idx_labels(folder / MNIST_TRAIN_LABELS, labels)
    names = (MNIST_TRAIN, MNIST_TEST, MNIST_TRAIN_LABELS, MNIST_TEST_LABELS)
    trust(monkeypatch, "mnist", *(folder / name for name in names))
    with pytest.raises(DataError, match=complaint) as caught:
        data.load_dataset("mnist", tmp_path)
    assert str(folder / MNIST_TRAIN_LABELS) in str(caught.value)


def test_digits_labels_are_sklearn_targets_split_like_images(clean_env):
    from sklearn.datasets import load_digits

    target = torch.from_numpy(load_digits().target).long()
    dataset = data.load_dataset("digits")
    assert dataset.num_classes == 10
    assert torch.equal(dataset.split_labels("train"), target[:1297])
    assert torch.equal(dataset.split_labels("valid"), target[1297:1497])
    assert torch.equal(dataset.split_labels("test"), target[1497:])
    assert dataset.split_labels("test")[:4].tolist() == [6, 3, 2, 1]


def test_npz_labels_beside_named_splits(tmp_path, clean_env):
    rng = np.random.default_rng(15)
    sizes = dict(zip(data.SPLITS, (6, 3, 4)))
    arrays = {split: rng.random((n, 2, 3)).astype(np.float32) for split, n in sizes.items()}
    arrays |= {"y_train": [0, 1, 2, 0, 1, 2], "y_valid": [2, 2, 0], "y_test": [0, 1, 4, 1]}
    np.savez(tmp_path / "labelled.npz", **arrays)
    dataset = data.load_dataset(str(tmp_path / "labelled.npz"))
    for split in data.SPLITS:
        labels = dataset.split_labels(split)
        assert labels.dtype == torch.int64
        assert labels.tolist() == list(arrays[f"y_{split}"])
        assert torch.equal(dataset.split(split), torch.from_numpy(arrays[split].reshape(-1, 6)))
    assert dataset.num_classes == 5  # the largest label, 4 (in test only), plus one


def test_npz_labels_follow_the_valid_split_off_train(tmp_path, clean_env):
    train = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    y_train = np.arange(20) % 3
    y_test = np.array([2.0, 0.0])  # whole-number floats are taken as class indices
    np.savez(tmp_path / "split.npz", train=train, test=train[:2], y_train=y_train, y_test=y_test)
    dataset = data.load_dataset(str(tmp_path / "split.npz"))
    assert torch.equal(dataset.valid, torch.from_numpy(train[18:]))
    assert dataset.split_labels("train").tolist() == y_train[:18].tolist()
    assert dataset.split_labels("valid").tolist() == y_train[18:].tolist()
    assert dataset.split_labels("test").tolist() == [2, 0]
    assert dataset.num_classes == 3


def save_npz_with_labels(path: Path, **labels) -> Path:
    """A 10/3-row train/test .npz beside the given label arrays."""
    arrays = {"train": np.zeros((10, 4), np.float32), "test": np.zeros((3, 4), np.float32)}
    np.savez(path, **arrays, **labels)
    return path


@pytest.mark.parametrize(
    "y_train, complaint",
    [
        (np.eye(3)[np.zeros(10, int)], r"'y_train' has shape \(10, 3\).*argmax\(1\)"),
        (np.zeros((10, 1)), r"'y_train' has shape \(10, 1\).*reshape\(-1\)"),
        (np.full(10, 0.5), "'y_train' holds 10 values that are not whole numbers"),
        (np.r_[np.zeros(9), np.nan], "'y_train' holds 1 values that are not whole"),
        (np.full(10, -1), "'y_train' holds negative labels .smallest -1."),
        (np.zeros(9), "'y_train' has 9 labels but 'train' has 10 examples"),
        (np.array(["cat"] * 10), "'y_train' has dtype <U3.*return_inverse"),
    ],
    ids=["one-hot", "column", "fractional", "nan", "negative", "row-count", "strings"],
)
def test_bad_npz_label_array(tmp_path, clean_env, y_train, complaint):
    path = save_npz_with_labels(tmp_path / "bad.npz", y_train=y_train, y_test=np.zeros(3, int))
    with pytest.raises(DataError, match=complaint) as caught:
        data.load_dataset(str(path))
    assert str(path) in str(caught.value)


def test_npz_labels_for_some_splits_only(tmp_path, clean_env):
    path = save_npz_with_labels(tmp_path / "partial.npz", y_train=np.zeros(10, int))
    with pytest.raises(DataError, match=r"\['y_train'\] but not \['y_test'\]") as caught:
        data.load_dataset(str(path))
    assert str(path) in str(caught.value) and "or none" in str(caught.value)
    labels = {"y_train": np.zeros(10, int), "y_valid": np.zeros(2, int), "y_test": np.zeros(3)}
    path = save_npz_with_labels(tmp_path / "stray.npz", **labels)
    with pytest.raises(DataError, match=r"\['y_valid'\] but no images for them") as caught:
        data.load_dataset(str(path))
    assert str(path) in str(caught.value)


def test_object_label_array_is_refused_unread(tmp_path, clean_env):
    arrays = {"train": np.zeros((10, 4)), "test": np.zeros((3, 4)), "y_test": np.zeros(3, int)}
    np.savez(tmp_path / "pickled.npz", **arrays, y_train=np.array([None] * 10, dtype=object))
    with pytest.raises(DataError, match="array 'y_train' holds Python objects"):
        data.load_dataset(str(tmp_path / "pickled.npz"))


def test_arrays_without_y_have_no_labels(tmp_path, clean_env):
    np.save(tmp_path / "plain.npy", np.zeros((20, 3), np.float32))
    np.savez(tmp_path / "single.npz", images=np.zeros((20, 3), np.float32))
    for name in ("plain.npy", "single.npz"):
        dataset = data.load_dataset(str(tmp_path / name))
        assert dataset.labels is None and dataset.num_classes is None
        with pytest.raises(DataError, match="y_train, y_valid, y_test"):
            dataset.split_labels("train")


def test_binarized_mnist_has_no_labels_and_says_where_to_get_them(tmp_path, clean_env, monkeypatch):
    paths = []
    for split in data.SPLITS:
        paths.append(tmp_path / f"binarized_mnist_{split}.amat")
        paths[-1].write_bytes(amat_text(np.eye(2, 784, dtype=np.int64)))
    trust(monkeypatch, "binarized-mnist", *paths)
    dataset = data.load_dataset("binarized-mnist", tmp_path)
    assert dataset.labels is None and dataset.num_classes is None
    with pytest.raises(DataError) as caught:
        dataset.split_labels("valid")
    message = str(caught.value)
    assert message.startswith("data set 'binarized-mnist' has no class labels")
    for hint in ("frey-face", "mnist", "fashion-mnist", "digits", "y_train", "y_valid", "y_test"):
        assert hint in message
    with pytest.raises(DataError, match="unknown split 'dev'"):
        dataset.split_labels("dev")


def toy_labelled(labels=None, num_classes=3, **fields) -> data.Dataset:
    """A 3/1/2-row toy data set with the given labels (default: valid ones)."""
    if labels is None:
        labels = {"train": torch.tensor([0, 2, 1]), "valid": torch.tensor([2])}
        labels["test"] = torch.tensor([1, 1])
    images = (torch.zeros(3, 4), torch.zeros(1, 4), torch.ones(2, 4))
    return data.Dataset("toy", *images, (1, 2, 2), True, labels=labels, num_classes=num_classes)


def test_dataset_to_device_moves_labels(device):
    dataset = toy_labelled()
    moved = dataset.to(device)
    for split in data.SPLITS:
        assert moved.split_labels(split).device.type == device.type
        assert torch.equal(moved.split_labels(split).cpu(), dataset.split_labels(split))
    assert moved.num_classes == 3


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"valid": torch.tensor([2.0])}, "labels of split 'valid' are torch.float32"),
        ({"test": torch.tensor([1])}, r"split 'test' .* expected torch.int64 of shape \(2,\)"),
        (
            {"train": torch.tensor([0, 3, 1])},
            r"split 'train' range over \[0, 3\], outside \[0, 3\)",
        ),
        ({"train": torch.tensor([0, -1, 1])}, r"split 'train' range over \[-1, 1\]"),
    ],
)
def test_dataset_label_checks_name_the_split(change, complaint):
    labels = {split: toy_labelled().split_labels(split) for split in data.SPLITS} | change
    with pytest.raises(DataError, match=complaint):
        toy_labelled(labels)


def test_dataset_labels_and_num_classes_come_together():
    with pytest.raises(DataError, match="labels need num_classes"):
        toy_labelled(num_classes=None)
    with pytest.raises(DataError, match="num_classes=3 given without labels"):
        data.Dataset(
            "toy", torch.zeros(3, 4), torch.zeros(1, 4), torch.ones(2, 4), (1, 2, 2), True,
            num_classes=3,
        )  # fmt: skip
    with pytest.raises(DataError, match="one tensor per split"):
        toy_labelled({"train": torch.tensor([0, 2, 1])})


def test_download_fetches_missing_label_files(http_folder, tmp_path, clean_env, monkeypatch):
    folder, base_url = http_folder
    train_labels, _ = write_labelled_mnist_like(folder)
    names = (MNIST_TRAIN, MNIST_TEST, MNIST_TRAIN_LABELS, MNIST_TEST_LABELS)
    trust(monkeypatch, "mnist", *(folder / name for name in names))
    local = tmp_path / "images_only"
    local.mkdir()
    for name in (MNIST_TRAIN, MNIST_TEST):  # the images are here already, the labels are not
        (local / name).write_bytes((folder / name).read_bytes())
    assert data.load_dataset("mnist", local).labels is None
    dataset = data.load_dataset("mnist", local, download=True, base_url=base_url)
    fetched = sorted(path.name for path in (clean_env / "mnist").iterdir())
    assert fetched == sorted([MNIST_TRAIN_LABELS, MNIST_TEST_LABELS])
    assert torch.equal(dataset.split_labels("valid"), torch.from_numpy(train_labels[3:]))


def test_label_files_that_cannot_be_fetched_leave_the_images_loadable(
    http_folder, clean_env, monkeypatch, caplog
):
    folder, base_url = http_folder  # serves the images only: the label files are a 404
    train, _ = write_mnist_like(folder)
    trust(monkeypatch, "mnist", folder / MNIST_TRAIN, folder / MNIST_TEST)
    with caplog.at_level("WARNING", logger="pyro_vae.data"):
        dataset = data.load_dataset("mnist", download=True, base_url=base_url)
    assert torch.equal(dataset.valid, as_unit(train[2:])) and dataset.labels is None
    assert MNIST_TRAIN_LABELS in caplog.text and "404" in caplog.text
    with pytest.raises(DataError, match="--download was given but failed: download of") as caught:
        dataset.split_labels("test")
    assert MNIST_TEST_LABELS in str(caught.value) and "by hand" in str(caught.value)
    monkeypatch.setenv("PYRO_VAE_CACHE", str(clean_env.parent / "empty_cache"))
    with pytest.raises(DataError, match="download of .*/absent/train-images.* failed"):
        data.load_dataset("mnist", download=True, base_url=f"{base_url}/absent")  # images: strict


# --------------------------------------------------------------------------------------------
# Minibatches


def test_minibatches_cover_every_index_once_per_epoch(device):
    rows = torch.arange(103, dtype=torch.float32, device=device).unsqueeze(1)
    batches = list(data.minibatches(rows, 10))
    assert [len(batch) for batch in batches] == [10] * 10 + [3]
    assert all(batch.device.type == device.type for batch in batches)
    seen = torch.cat(batches).squeeze(1)
    assert torch.equal(seen.sort().values, rows.squeeze(1))
    assert not torch.equal(seen, rows.squeeze(1))  # shuffled


def test_minibatches_same_seed_same_order():
    rows = torch.arange(50, dtype=torch.float32).unsqueeze(1)

    def epoch(seed):
        torch.manual_seed(seed)
        return torch.cat(list(data.minibatches(rows, 7)))

    assert torch.equal(epoch(1), epoch(1))
    assert not torch.equal(epoch(1), epoch(2))


def test_minibatches_in_order_and_drop_last():
    rows = torch.arange(25, dtype=torch.float32).unsqueeze(1)
    batches = list(data.minibatches(rows, 10, shuffle=False, drop_last=True))
    assert [len(batch) for batch in batches] == [10, 10]
    assert torch.equal(torch.cat(batches), rows[:20])
    assert len(list(data.minibatches(rows, 5, drop_last=True))) == 5
    with pytest.raises(DataError, match="--batch-size"):
        data.minibatches(rows, 0)


def test_minibatches_static_and_none_pass_values_through():
    rows = torch.rand(12, 3)
    for binarize in ("none", "static"):
        (batch,) = data.minibatches(rows, 12, shuffle=False, binarize=binarize)
        assert torch.equal(batch, rows)


def test_dynamic_binarization_mean_approaches_intensity():
    intensities = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    rows = intensities.expand(20_000, 5).contiguous()
    first = torch.cat(list(data.minibatches(rows, 1000, shuffle=False, binarize="dynamic")))
    second = torch.cat(list(data.minibatches(rows, 1000, shuffle=False, binarize="dynamic")))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    # 20000 draws: the standard error is at most 0.0036, so 0.015 is over 4 of them.
    torch.testing.assert_close(first.mean(0), intensities, atol=0.015, rtol=0)
    assert torch.equal(first[:, [0, 4]], rows[:, [0, 4]])  # p = 0 and p = 1 are exact
    assert not torch.equal(first, second)  # a fresh draw every time a batch is used


# --------------------------------------------------------------------------------------------
# Static binarization


def test_binarize_static_is_deterministic_and_leaves_global_rng():
    intensities = torch.full((4000, 5), 0.3)
    state = torch.get_rng_state()
    first = data.binarize_static(intensities, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, data.binarize_static(intensities, seed=7))
    assert not torch.equal(first, data.binarize_static(intensities, seed=8))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert abs(first.mean().item() - 0.3) < 0.01  # 20000 draws: standard error 0.0032


def test_load_static_binarization(clean_env):
    intensities = data.load_dataset("digits")
    assert intensities.binary is False
    static = data.load_dataset("digits", binarize="static", seed=3)
    assert static.binary is True
    assert torch.equal(static.train, data.binarize_static(intensities.train, 3))
    assert torch.equal(static.valid, data.binarize_static(intensities.valid, 4))
    assert torch.equal(static.test, data.binarize_static(intensities.test, 5))
    again = data.load_dataset("digits", binarize="static", seed=3)
    assert torch.equal(again.test, static.test)
    dynamic = data.load_dataset("digits", binarize="dynamic")
    assert torch.equal(dynamic.train, intensities.train) and dynamic.binary is False


# --------------------------------------------------------------------------------------------
# The real files ($PYRO_VAE_DATA_DIR), each read once per module


@pytest.fixture(scope="module")
def loaded_once() -> dict:
    """Data sets already read in this module, by name."""
    return {}


def load_real(loaded_once: dict, name: str, root: Path) -> data.Dataset:
    if name not in loaded_once:
        loaded_once[name] = data.load_dataset(name, root)
    return loaded_once[name]


@pytest.mark.real_data
@pytest.mark.parametrize(
    "name, mean, std",
    [("mnist", 0.1307, 0.3081), ("fashion-mnist", 0.2860, 0.3530)],
)
def test_real_grey_level_sets(real_data_dir, loaded_once, name, mean, std):
    dataset = load_real(loaded_once, name, real_data_dir)
    assert [tuple(dataset.split(split).shape) for split in data.SPLITS] == [
        (50_000, 784),
        (10_000, 784),
        (10_000, 784),
    ]
    all_train = torch.cat([dataset.train, dataset.valid])  # the 60000 original train images
    # The published normalisation constants, over all 60000 train images.
    assert abs(all_train.mean().item() - mean) < 5e-4
    assert abs(all_train.std().item() - std) < 5e-4
    assert all_train.min().item() == 0.0 and all_train.max().item() == 1.0
    levels = dataset.test * 255
    assert torch.equal(levels, levels.round())  # exactly k / 255
    assert dataset.binary is False and dataset.pixel_scale == 255.0


@pytest.mark.real_data
def test_real_mnist_test_mean(real_data_dir, loaded_once):
    dataset = load_real(loaded_once, "mnist", real_data_dir)
    assert abs(dataset.test.mean().item() - 0.1325) < 5e-4  # the known t10k mean


@pytest.mark.real_data
def test_real_mnist_labels(real_data_dir, loaded_once):
    dataset = load_real(loaded_once, "mnist", real_data_dir)
    assert dataset.num_classes == 10
    sizes = [len(dataset.split_labels(split)) for split in data.SPLITS]
    assert sizes == [50_000, 10_000, 10_000]
    for split in data.SPLITS:
        assert dataset.split_labels(split).unique().tolist() == list(range(10))
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert dataset.split_labels("test").bincount().tolist() == test_counts
    all_train = torch.cat([dataset.split_labels("train"), dataset.split_labels("valid")])
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert all_train.bincount().tolist() == train_counts  # the 60000 original train labels


@pytest.mark.real_data
def test_real_fashion_mnist_labels_are_balanced(real_data_dir, loaded_once):
    dataset = load_real(loaded_once, "fashion-mnist", real_data_dir)
    assert dataset.split_labels("test").bincount().tolist() == [1000] * 10
    all_train = torch.cat([dataset.split_labels("train"), dataset.split_labels("valid")])
    assert all_train.bincount().tolist() == [6000] * 10


@pytest.mark.real_data
def test_real_binarized_mnist(real_data_dir, loaded_once):
    dataset = load_real(loaded_once, "binarized-mnist", real_data_dir)
    assert [tuple(dataset.split(split).shape) for split in data.SPLITS] == [
        (50_000, 784),
        (10_000, 784),
        (10_000, 784),
    ]
    assert dataset.binary is True and dataset.pixel_scale is None
    assert set(dataset.train.unique().tolist()) == {0.0, 1.0}
    # A Bernoulli draw of the MNIST intensities: its mean is MNIST's mean intensity.
    assert abs(dataset.train.mean().item() - 0.1307) < 2e-3


@pytest.mark.real_data
def test_real_frey_face(real_data_dir, loaded_once):
    dataset = load_real(loaded_once, "frey-face", real_data_dir)
    assert [tuple(dataset.split(split).shape) for split in data.SPLITS] == [
        (1565, 560),
        (200, 560),
        (200, 560),
    ]
    faces = torch.cat([dataset.train, dataset.valid, dataset.test])
    assert faces.min().item() * 255 == pytest.approx(8)  # the file's range is 8..238
    assert faces.max().item() * 255 == pytest.approx(238)
    assert dataset.image_shape == (1, 28, 20) and dataset.pixel_scale == 255.0


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_fall_through(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="--data-dir '.*nowhere' is not a folder"):
        data.load_dataset("digits", tmp_path / "nowhere")
