"""Finding a named set's files: every place searched in order, each file found checksum-
verified, the missing fetched when asked, and errors that list where we looked and what
to do."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pyro_vae.data.checks import _verify
from pyro_vae.data.download import _fetch
from pyro_vae.data.errors import DataError, logger
from pyro_vae.data.registry import DataFile, DatasetSpec
from pyro_vae.data.roots import cache_dir


def _candidate_paths(
    spec: DatasetSpec, role: str, roots: list[Path]
) -> list[tuple[Path, DataFile]]:
    """Every place a file may be, in order: each root's `<folder>/` and then the root itself."""
    return [
        (place / form.filename, form)
        for root in roots
        for place in (root / spec.folder, root)
        for form in spec.files[role]
    ]


def _missing_files_error(spec: DatasetSpec, missing: Mapping[str, list[Path]]) -> DataError:
    """The error for files found nowhere: names, every place searched, and how to fix it."""
    wanted = ", ".join(" or ".join(form.filename for form in spec.files[role]) for role in missing)
    searched = "\n".join(f"  {path}" for paths in missing.values() for path in paths)
    return DataError(
        f"data set {spec.name!r}: {len(missing)} file(s) not found: {wanted}.\n"
        f"Searched:\n{searched}\n"
        f"To fix: put the files in DIR/{spec.folder}/ (or in DIR itself) and pass --data-dir DIR "
        f"or set PYRO_VAE_DATA_DIR=DIR; or pass --download to fetch them into "
        f"{cache_dir() / spec.folder}."
    )


def _missing_labels_reason(
    spec: DatasetSpec, missing: Mapping[str, list[Path]], download_errors: list[str]
) -> str:
    """Why a set loaded without labels: its label files, every place searched, how to fix it,
    and why --download could not fetch them when it was asked to."""
    wanted = ", ".join(form.filename for role in missing for form in spec.files[role])
    searched = "\n".join(f"  {path}" for paths in missing.values() for path in paths)
    failed = "".join(f"\n--download was given but failed: {error}" for error in download_errors)
    return (
        f"data set {spec.name!r} was loaded without class labels: label file(s) not found: "
        f"{wanted} (the images load without them).\n"
        f"Searched:\n{searched}\n"
        f"To fix: put the label files beside the images, in DIR/{spec.folder}/ (or in DIR "
        f"itself), and pass --data-dir DIR or set PYRO_VAE_DATA_DIR=DIR; or pass --download to "
        f"fetch them into {cache_dir() / spec.folder}.{failed}"
    )


def _locate(
    spec: DatasetSpec, roots: list[Path], download: bool, base_url: str | None
) -> tuple[dict[str, Path], str | None]:
    """Path of every file of a data set, checksum-verified; downloads the missing if asked.

    Returns the paths found by role and, when label files (`spec.label_roles`) are found
    nowhere, the reason the set comes without labels (for `Dataset.split_labels`). Label files
    are optional: one that --download cannot fetch leaves the set unlabelled, with a warning,
    rather than blocking images already on disk (an offline run with --download, a mirror
    without label files).
    """
    found: dict[str, Path] = {}
    missing: dict[str, list[Path]] = {}
    for role in spec.files:
        candidates = _candidate_paths(spec, role, roots)
        hit = next(((path, form) for path, form in candidates if path.is_file()), None)
        if hit is not None:
            path, form = hit
            _verify(path, form.checksum)
            found[role] = path
        else:
            missing[role] = [path for path, _ in candidates]
    required = {role: paths for role, paths in missing.items() if role not in spec.label_roles}
    if required and not download:
        raise _missing_files_error(spec, required)
    for role in required:
        found[role] = _fetch(spec, role, base_url)
    missing_labels = {role: paths for role, paths in missing.items() if role in spec.label_roles}
    download_errors = []
    for role in list(missing_labels) if download else []:
        try:
            found[role] = _fetch(spec, role, base_url)
        except DataError as error:
            logger.warning("%s: loading without class labels: %s", spec.name, error)
            download_errors.append(str(error))
        else:
            del missing_labels[role]
    if not missing_labels:
        return found, None
    logger.info("%s: label files not found; loading without class labels", spec.name)
    return found, _missing_labels_reason(spec, missing_labels, download_errors)
