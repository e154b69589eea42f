"""Pure functions of the data contract's rules: a title's year, a genre list, the shard of
a user, the split of an example (train, validation or test).

No Beam, no TensorFlow: the job calls these per movie, user or example, tests call them
directly. Timelines are ordered (by (timestamp, movie_id)) in beam_jobs/shards.py, and
examples are encoded in beam_jobs/example_records.py.
"""
from __future__ import annotations

import hashlib
import re

from beam_jobs import schema

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def year_from_title(title: str) -> int:
    """The release year in a MovieLens title like "Toy Story (1995)"; 0 if there is none."""
    m = _YEAR.search(title)
    return int(m.group(1)) if m else schema.PAD_YEAR


def split_genres(genres: str) -> list[str]:
    """"Animation|Children's" -> ["Animation", "Children's"]; "" -> []."""
    return [g for g in genres.split("|") if g]


def stable_u64(*parts: object) -> int:
    """A 64-bit hash of the parts' text that is the same in every process and on every
    machine (Python's hash() is salted per process)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def shard_of_user(user_id: int, num_shards: int) -> int:
    """The shard that holds all examples of `user_id` (both splits)."""
    return stable_u64("shard", user_id) % num_shards


def is_train(user_id: int, position: int, num_positions: int, split: str,
             train_fraction: float, seed: int) -> bool:
    """Split of the example labelled by timeline `position` (1..num_positions-1 valid).

    "last": the user's last example (position num_positions-1) is test.
    "random": stable_u64(user, position, seed) / 2**64 < train_fraction is train.
    """
    if split == "last":
        return position != num_positions - 1
    if split == "random":
        return stable_u64("split", user_id, position, seed) < train_fraction * 2.0**64
    raise ValueError(f"split must be 'last' or 'random', got {split!r}")


def writes_validation(split: str, validation: bool) -> bool:
    """Whether a run writes validation/: --split=last with the validation flag on. The
    random split is the reference's leaky protocol: it gets no validation split."""
    return split == "last" and validation


def split_of(user_id: int, position: int, num_positions: int, split: str, validation: bool,
             train_fraction: float, seed: int) -> str:
    """schema.TRAIN, VALIDATION or TEST of the example labelled by timeline `position`
    (1..num_positions-1).

    "last": the user's last example is test; with `validation`, the one before it
    (position num_positions-2, when that is >= 1) is validation; the rest train. A
    timeline of 3 ratings (2 examples) thus has no train example.
    "random": is_train's draw; never validation.
    """
    if is_train(user_id, position, num_positions, split, train_fraction, seed):
        if writes_validation(split, validation) and position == num_positions - 2:
            return schema.VALIDATION
        return schema.TRAIN
    return schema.TEST
