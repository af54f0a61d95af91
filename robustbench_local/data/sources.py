"""Where dataset files come from: a local mirror, the download cache or a verified download.

Per file, in order:

1. a local mirror, ``data_dir`` or ``$ROBUSTBENCH_LOCAL_DATA_DIR``, laid out as
   ``<dir>/<name>/<official file name>``;
2. the download cache, ``cache_dir`` or ``$ROBUSTBENCH_LOCAL_CACHE`` (default
   ``~/.cache/robustbench_local``), same layout;
3. a download (if ``download=True``) from ``base_url`` / ``$ROBUSTBENCH_LOCAL_BASE_URL``
   (``<base_url>/<name>/<file>``) or else the official URLs, into the cache.

Every file, wherever it comes from, must match its published MD5: a mismatch raises
:class:`ChecksumError` and the file is never used. Downloads go to a temporary file in the cache
folder (:func:`defenses.storage.atomic_write`), are verified, then renamed into place, so a
failed or tampered download leaves nothing behind.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from defenses.storage import atomic_write
from robustbench_local.data.specs import DatasetSpec, FileSpec

logger = logging.getLogger(__name__)

ENV_DATA_DIR = "ROBUSTBENCH_LOCAL_DATA_DIR"
ENV_CACHE = "ROBUSTBENCH_LOCAL_CACHE"
ENV_BASE_URL = "ROBUSTBENCH_LOCAL_BASE_URL"
DEFAULT_CACHE = Path("~/.cache/robustbench_local")
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_USER_AGENT = "robustbench_local/0.1 (python urllib)"


class ChecksumError(ValueError):
    """A dataset file whose MD5 (or size) differs from the published one: corrupt or tampered."""


class DownloadError(OSError):
    """No URL could deliver a dataset file (network error, HTTP error, incomplete transfer)."""


@dataclass(frozen=True)
class FileSources:
    """Where to look for files and where to download them."""

    data_dir: Path | None
    cache_dir: Path
    base_url: str | None
    download: bool

    @classmethod
    def resolve(
        cls,
        data_dir: str | os.PathLike[str] | None,
        cache_dir: str | os.PathLike[str] | None,
        base_url: str | None,
        download: bool,
    ) -> FileSources:
        """The sources of a call: explicit arguments first, else the environment variables.

        Raises:
            ValueError: ``base_url`` is not an http(s):// or file:// URL.
        """
        data_dir = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR) or None
        cache_dir = cache_dir if cache_dir is not None else os.environ.get(ENV_CACHE) or None
        base_url = base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or None
        if base_url is not None:
            scheme = urllib.parse.urlparse(base_url).scheme
            if scheme not in ("http", "https", "file"):
                raise ValueError(
                    f"base_url must be an http(s):// or file:// URL, got {base_url!r}; "
                    f"fix the argument or ${ENV_BASE_URL}"
                )
        return cls(
            data_dir=Path(data_dir).expanduser() if data_dir is not None else None,
            cache_dir=Path(cache_dir if cache_dir is not None else DEFAULT_CACHE).expanduser(),
            base_url=base_url,
            download=bool(download),
        )

    def urls(self, spec: DatasetSpec, file: FileSpec) -> list[str]:
        """Where ``file`` can be downloaded from, in order."""
        if self.base_url is not None:
            return [f"{self.base_url.rstrip('/')}/{spec.name}/{file.name}"]
        return [base + file.name for base in spec.urls]


def fetch_all(spec: DatasetSpec, src: FileSources) -> list[Path]:
    """Resolve (and download if needed) every file of ``spec``; each is MD5-verified.

    Raises:
        ChecksumError: A local, cached or downloaded file does not match its MD5.
        FileNotFoundError: A file is missing and downloads are off.
        DownloadError: Every URL failed for a missing file.
    """
    return [_fetch(spec, f, src) for f in spec.files]


def _fetch(spec: DatasetSpec, file: FileSpec, src: FileSources) -> Path:
    """The mirror's copy, else the cache's, else a download into the cache."""
    dataset = spec.name
    looked: list[Path] = []
    if src.data_dir is not None:
        local = src.data_dir / dataset / file.name
        looked.append(local)
        if local.is_file():
            verify_file(local, file, advice="repair or remove the mirror file")
            return local
    cached = src.cache_dir / dataset / file.name
    looked.append(cached)
    if cached.is_file():
        verify_file(cached, file, advice="delete it so that it is downloaded again")
        return cached
    if not src.download:
        raise FileNotFoundError(
            f"{dataset}: {file.name} not found; looked in {', '.join(map(str, looked))}. "
            f"Pass data_dir= (or set ${ENV_DATA_DIR}) to a folder holding "
            f"{dataset}/{file.name}, or call with download=True."
        )
    return download_file(src.urls(spec, file), cached, file)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _md5_cached(path: str, size: int, mtime_ns: int) -> str:
    return _md5(Path(path))


def file_stamp(path: Path) -> tuple[str, int, int]:
    """``(resolved path, size, mtime_ns)``: the key of the per-process decode caches."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def verify_file(path: Path, file: FileSpec, *, advice: str) -> None:
    """Check a file's MD5 against ``file.md5`` (cached per path, size and mtime).

    Raises:
        ChecksumError: Naming the file, the expected and actual MD5 and what to do.

    """
    actual = _md5_cached(*file_stamp(path))
    if actual != file.md5:
        size = f", expected {file.size}" if file.size is not None else ""
        raise ChecksumError(
            f"{path} is corrupt or tampered: MD5 {actual}, expected {file.md5} "
            f"(size {path.stat().st_size} bytes{size}). It was not used; {advice}."
        )


def download_file(urls: list[str], dest: Path, file: FileSpec) -> Path:
    """Download ``file`` from the first working URL to ``dest`` (atomic, MD5-verified).

    The bytes go to a temporary file next to ``dest``; only a file whose MD5 matches is renamed
    to ``dest``. A mirror serving a wrong file is skipped (with a warning) for the next one.

    Raises:
        ChecksumError: Every response had the wrong MD5 or size (nothing is saved).
        DownloadError: No URL could be read.

    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        logger.info("Downloading %s to %s", url, dest)
        try:
            _download_verified(url, dest, file)
        except ChecksumError as err:
            bad_checksum = True
            failures.append(str(err))
            logger.warning("%s", err)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            failures.append(f"{url}: {type(err).__name__}: {err}")
            logger.warning("Download of %s failed: %s", url, err)
        else:
            return dest
    detail = "\n  ".join(failures)
    if bad_checksum:
        raise ChecksumError(
            f"Refusing {file.name}: the download is corrupt, truncated or tampered; nothing was "
            f"saved to {dest.parent}. Re-run to download again, or point base_url / data_dir at "
            f"a trusted copy.\n  {detail}"
        )
    raise DownloadError(
        f"Could not download {file.name} into {dest.parent}:\n  {detail}\n"
        f"Check the network, pass base_url= (or ${ENV_BASE_URL}) for a reachable mirror, or "
        f"pass data_dir= (or ${ENV_DATA_DIR}) to a folder holding the official files."
    )


def _download_verified(url: str, dest: Path, file: FileSpec) -> None:
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest, size = hashlib.md5(usedforsecurity=False), 0
    with (
        atomic_write(dest) as out,
        urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp,
        tqdm(
            total=int(resp.headers.get("Content-Length") or 0) or None,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=file.name,
            disable=None,
            leave=False,
        ) as bar,
    ):
        for chunk in iter(lambda: resp.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != file.md5 or (file.size is not None and size != file.size):
            want = f" and {file.size} bytes" if file.size is not None else ""
            raise ChecksumError(
                f"{url}: downloaded {file.name} has MD5 {actual} and {size} bytes, expected MD5 "
                f"{file.md5}{want} (corrupt, truncated or tampered)"
            )


__all__ = [
    "DEFAULT_CACHE",
    "ENV_BASE_URL",
    "ENV_CACHE",
    "ENV_DATA_DIR",
    "TIMEOUT_S",
    "ChecksumError",
    "DownloadError",
    "FileSources",
    "download_file",
    "fetch_all",
    "file_stamp",
    "verify_file",
]
