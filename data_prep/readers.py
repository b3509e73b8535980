"""Read one concrete source (official archive/folder, image-folder tree/archive) into a Dataset."""

from __future__ import annotations

from pathlib import Path

from . import archive, image_folder, official
from .dataset import Dataset
from .errors import DataError
from .specs import DatasetSpec


def read_source(
    path: Path,
    spec: DatasetSpec,
    *,
    verbose: bool = True,
    verify_md5: bool = True,
    expected_sizes: tuple[int, int] | None = None,
) -> Dataset:
    """Read and validate ``path`` as dataset ``spec``; the kind of source is detected.

    * directory: an extracted official folder (``cifar-10-batches-py/``) or an image-folder tree
      (``train/<class>/``, ``test/<class>/``);
    * tar archive (any compression): the official layout or an image-folder tree, optionally
      under one top-level folder. Read in one streaming pass, nothing is extracted to disk.

    ``verify_md5``: check the md5 of a file carrying the official archive name (see
    ``official.check_md5``). ``expected_sizes``: (train, test) counts required of the official
    layout, default 50000/10000 (tests lower them).
    """
    if path.is_dir():
        found = official.official_dir_dataset(path)
        if found == spec.name:
            return official.read_official_dir(path, spec, expected_sizes)
        if found is not None:
            raise DataError(f"{path} holds {found}, not {spec.name}")
        if image_folder.is_image_folder_dir(path):
            return image_folder.read_image_dir(path, spec, verbose)
        raise DataError(
            f"{path}: not a {spec.name} source (expected {spec.folder}/ files or "
            f"train/<class>/ and test/<class>/ folders)"
        )

    official.check_md5(path, spec, verify_md5)
    files = archive.read_tar_files(path, verbose)
    layout = official.official_layout(files)
    if layout is not None:
        if layout["dataset"] != spec.name:
            raise DataError(f"{path} holds {layout['dataset']}, not {spec.name}")
        prefix = layout["prefix"]
        blobs = {f: files[prefix + f] for f in spec.member_files if prefix + f in files}
        del files
        return official.parse_official(
            blobs, spec, f"official {spec.name} archive {path}", expected_sizes
        )
    if image_folder.tar_tree_layout(files) is not None:
        return image_folder.read_image_tar(files, path, spec, verbose)
    raise DataError(
        f"{path}: not a {spec.name} archive (found neither {spec.folder}/ "
        f"nor train/<class>/ and test/<class>/ folders)"
    )
