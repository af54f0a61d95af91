"""Image folders in the class-subfolder layout, read through Pillow.

``root/<class>/*.png`` (or ``.jpg``/``.jpeg``): every subfolder is a class, classes are numbered
in the sorted order of their names, and every image is one sample. With ``root/train/<class>``
and ``root/test/<class>`` the two splits are read with one class numbering (the sorted union of
both). Images are read as 8-bit grey (when every image is grey) or RGB, must all have one size,
and come back as uint8 ``[N, H, W, C]`` arrays for :func:`~.arrays.standard_images`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustbench_local.data.arrays import Notes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
_GREY = frozenset({"1", "L", "LA"})
_SUPPORTED = _GREY | {"P", "RGB", "RGBA"}


@dataclass(frozen=True)
class FolderImages:
    """What an image folder holds: uint8 ``[N, H, W, C]`` images and int64 labels per split.

    ``train`` is None without a ``train/`` folder.
    """

    classes: tuple[str, ...]
    test: tuple[np.ndarray, np.ndarray]
    train: tuple[np.ndarray, np.ndarray] | None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path) -> list[Path]:
    """The class subfolders of ``folder``.

    Raises:
        ValueError: There are none.
    """
    found = _subfolders(folder)
    if not found:
        raise ValueError(
            f"{folder} has no class subfolders: lay the images out as {folder}/<class>/*.png "
            "(one subfolder per class, named after it)"
        )
    return found


def _image_files(folder: Path, notes: Notes) -> list[Path]:
    """The images of one class folder (sorted), other files noted as ignored.

    Raises:
        ValueError: The folder holds no image.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ValueError(
            f"class folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} image; remove it or "
            "add its images"
        )
    if len(images) < len(files):
        notes.add(f"files that are not {'/'.join(IMAGE_SUFFIXES)} images ignored")
    return images


def _read(path: Path, mode: str) -> np.ndarray:
    """One image as a uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` array.

    Raises:
        ValueError: Pillow cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}; replace or remove it") from err


def _mode_of(paths: list[Path], notes: Notes) -> str:
    """``"L"`` when every image is grey, else ``"RGB"``.

    Raises:
        ValueError: An image is 16-bit, float or in another colour space.
    """
    from PIL import Image, UnidentifiedImageError

    modes = set()
    for path in paths:
        try:
            with Image.open(path) as im:
                mode = im.mode
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path}: {err}; replace or remove it") from err
        if mode not in _SUPPORTED:
            raise ValueError(
                f"{path} has Pillow mode {mode!r}; save the images as 8-bit grey or RGB PNG/JPEG"
            )
        modes.add(mode)
    if modes & {"LA", "RGBA"}:
        notes.add("alpha channels dropped")
    return "L" if modes <= _GREY else "RGB"


def _read_split(folder: Path, classes: list[str], notes: Notes) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[N, H, W, C]`` images and their labels of one split folder.

    Raises:
        ValueError: An empty class folder, unreadable images, or images of different sizes.
    """
    files: list[Path] = []
    labels: list[int] = []
    for folder_path in _class_folders(folder):
        images = _image_files(folder_path, notes)
        files += images
        labels += [classes.index(folder_path.name)] * len(images)
    mode = _mode_of(files, notes)
    arrays = [_read(p, mode) for p in files]
    h, w = arrays[0].shape[:2]
    for path, a in zip(files, arrays, strict=True):
        if a.shape[:2] != (h, w):
            raise ValueError(
                f"the images of {folder} differ in size: {files[0]} is {w}x{h} but {path} is "
                f"{a.shape[1]}x{a.shape[0]}; resize them to one size"
            )
    x = np.stack(arrays)
    return (x[..., None] if x.ndim == 3 else x), np.asarray(labels, dtype=np.int64)


def read_image_folder(root: Path, notes: Notes) -> FolderImages:
    """Read ``root/<class>/*`` (or ``root/train/<class>/*`` and ``root/test/<class>/*``).

    Raises:
        ValueError: No class subfolders, an empty class folder, unreadable images, images of
            different sizes, or ``train``/``test`` mixed with class folders.
    """
    names = [p.name for p in _subfolders(root)]
    split = set(names) & set(SPLITS)
    if split and not set(names) <= set(SPLITS):
        raise ValueError(
            f"{root} mixes split folders ({', '.join(sorted(split))}) with class folders; put "
            f"the classes inside {root}/test/ (and {root}/train/), or rename them"
        )
    if not split:
        return FolderImages(tuple(names), _read_split(root, names, notes), None)
    if "test" not in split:
        raise ValueError(f"{root} has train/ but no test/ folder; add {root}/test/<class>/")
    parts = {s: [p.name for p in _class_folders(root / s)] for s in split}
    classes = sorted(set().union(*parts.values()))
    if len(parts) == 2 and set(parts["train"]) != set(parts["test"]):
        notes.add("train/ and test/ have different class folders (numbered over both)")
    test = _read_split(root / "test", classes, notes)
    train = _read_split(root / "train", classes, notes) if "train" in split else None
    return FolderImages(tuple(classes), test, train)


__all__ = ["IMAGE_SUFFIXES", "SPLITS", "FolderImages", "read_image_folder"]
