"""Checksummed download of the official GroupLens MovieLens zips into a local cache.

The SHA-256 values come from tensorflow/datasets, file
tensorflow_datasets/url_checksums/movielens.txt (URL, size, sha256 of each official zip).
GroupLens states that ml-1m/20m/25m are stable releases; ml-latest-small is rebuilt from time
to time, so its checksum can go stale: a mismatch then fails loudly rather than silently
training on different data.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "SEQREC_MOVIELENS_BASE_URL"
CACHE_ENV = "SEQREC_CACHE_DIR"

# name -> (zip size in bytes, sha256)
RELEASES = {
    "ml-1m": (5917549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-20m": (198702078, "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    "ml-25m": (261978986, "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
    "ml-latest-small": (978202,
                        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),
}
_MARKER = ".seqrec-sha256"
_LOG = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The download failed or its checksum did not match."""


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "seqrec", "movielens")


def download(name: str, cache_dir: str | None = None, base_url: str | None = None,
             expected_sha256: str | None = None, timeout_s: float = 60.0) -> str:
    """Fetches `name`.zip (once), checks its SHA-256, unpacks it; returns the directory
    holding its ratings/movies files (cache_dir/name).

    Args:
      name: a key of RELEASES.
      cache_dir: local directory for the zip's contents (default: $SEQREC_CACHE_DIR or
        ~/.cache/seqrec/movielens).
      base_url: where `name`.zip lives (default: $SEQREC_MOVIELENS_BASE_URL or GroupLens).
      expected_sha256: override of the recorded checksum (tests).
    """
    if name not in RELEASES:
        raise DownloadError(f"--download={name}: unknown release; choose one of {sorted(RELEASES)}")
    sha = expected_sha256 or RELEASES[name][1]
    cache_dir = cache_dir or default_cache_dir()
    base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    target = os.path.join(cache_dir, name)
    marker = os.path.join(target, _MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if f.read().strip() == sha:
                _LOG.info("--download=%s: using the copy checked earlier in %s", name, target)
                return target
    os.makedirs(cache_dir, exist_ok=True)
    url = f"{base_url}/{name}.zip"
    _LOG.info("--download=%s: fetching %s (%.1f MB) into %s", name, url,
              RELEASES[name][0] / 1e6, target)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        zip_path = os.path.join(tmp, f"{name}.zip")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(zip_path, "wb") as out:
                while block := resp.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        except OSError as e:  # URLError, HTTPError, timeouts
            raise DownloadError(f"--download={name}: fetching {url} failed: {e}") from e
        got = digest.hexdigest()
        if got != sha:
            raise DownloadError(
                f"--download={name}: {url} has SHA-256 {got}, expected {sha}; refusing to use it")
        unpacked = os.path.join(tmp, "unpacked")
        _safe_extract(zip_path, unpacked)
        # Official zips hold one top-level folder named like the release.
        inner = os.path.join(unpacked, name)
        source = inner if os.path.isdir(inner) else unpacked
        with open(os.path.join(source, _MARKER), "w") as f:
            f.write(sha + "\n")
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(source, target)
    return target


def _safe_extract(zip_path: str, dest: str) -> None:
    root = os.path.realpath(dest)
    with zipfile.ZipFile(zip_path) as z:
        for member in z.namelist():
            path = os.path.realpath(os.path.join(dest, member))
            if not path.startswith(root + os.sep) and path != root:
                raise DownloadError(f"{zip_path}: member {member!r} escapes the target directory")
        z.extractall(dest)
