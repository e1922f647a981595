"""The settings of the user's own data sources, checked as a run's configuration holds them:
an image folder's --image-size and --image-mode, the --valid-fraction and --test-fraction
that split a folder or a .csv table, a table's --label-column, and --lazy; and which of them
a given --dataset leaves without effect."""

from __future__ import annotations

from pathlib import Path

from pyro_vae.data.errors import DataError
from pyro_vae.data.images import IMAGE_MODES, parse_image_size
from pyro_vae.data.lazy import LAZY_MODES
from pyro_vae.data.registry import DATASETS


def source_settings_problem(
    image_size: str | None,
    image_mode: str,
    valid_fraction: float,
    test_fraction: float,
    lazy: str,
) -> str | None:
    """What is wrong with these settings, naming the flag, or None when they can work."""
    try:
        parse_image_size(image_size)
    except DataError as error:
        return str(error)
    for flag, value, allowed in (("--image-mode", image_mode, IMAGE_MODES),
                                 ("--lazy", lazy, LAZY_MODES)):  # fmt: skip
        if value not in allowed:
            return f"{flag} {value!r}: choose from {', '.join(allowed)}"
    valid, test = valid_fraction, test_fraction
    if not (0 <= valid < 1 and 0 < test < 1 and valid + test < 1):
        return (
            f"--valid-fraction {valid_fraction!r} and --test-fraction {test_fraction!r}: each "
            "must be in [0, 1) (the test fraction above 0), and together below 1, e.g. 0.1 and 0.1"
        )
    return None


def _data_source(dataset: str) -> str | None:
    """What kind of data --dataset names, as messages say it; None for a path that is not
    there (loading the data says so)."""
    if dataset in DATASETS:
        return "named data set"
    if dataset.lower().endswith(".csv"):
        return ".csv table"
    if dataset.lower().endswith((".npy", ".npz")):
        return "NumPy array file"
    folder = dataset.strip() and Path(dataset).expanduser().is_dir()
    return "image folder" if folder else None


def unused_source_settings(dataset: str) -> dict[str, tuple[str, str]]:
    """The source settings that `dataset` does not read, as ``{field: (why, remedy)}`` (see
    :func:`pyro_vae.runs.config.unused_settings`, which keeps those that differ from their
    defaults)."""
    source = _data_source(dataset)
    if source is None:
        return {}
    unused = {}
    if source != "image folder":
        for name in ("image_size", "image_mode"):
            unused[name] = (
                f"it is for a folder of images; --dataset {dataset} is a {source}",
                "pass a folder of PNG/JPEG images as --dataset",
            )
    if source not in ("image folder", ".csv table"):
        for name in ("valid_fraction", "test_fraction"):
            unused[name] = (
                f"it splits an image folder or a .csv table; --dataset {dataset} is a {source} "
                "with splits of its own (--valid-size re-cuts train + valid)",
                "pass an image folder or a .csv table as --dataset",
            )
    if source != ".csv table":
        unused["label_column"] = (
            f"it names the class column of a .csv table; --dataset {dataset} is a {source}",
            "pass a .csv table as --dataset",
        )
    if source != "named data set":
        unused["download"] = (
            f"it fetches the named data sets; --dataset {dataset} is a file of yours",
            "name a data set (pyro-vae list)",
        )
    return unused
