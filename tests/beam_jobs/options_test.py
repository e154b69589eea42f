"""beam_jobs.options: every job flag declared once, as a JobConfig field (option(...)); the
parser, the checks and metadata.json's "flags" derive from that declaration."""
import argparse
import dataclasses
import re

import pytest

from beam_jobs import options, synthetic
from beam_jobs.options import FlagError, JobConfig


def test_parser_flags_are_the_declared_fields():
    parser = options.make_parser()
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    for f in dataclasses.fields(JobConfig):
        action = actions.pop(f.name)
        assert action.help == options.help_text(f) and "{default}" not in action.help
        assert action.choices == f.metadata["choices"]
        if f.default is not dataclasses.MISSING:
            assert action.default == f.default, f.name
    # What is left is no option of the data: logging, a test hook, --help.
    assert sorted(actions) == ["download_base_url", "help", "verbosity"]
    assert actions["download_base_url"].help == argparse.SUPPRESS


def test_metadata_flags_are_pinned():
    """metadata.json "flags" of a default run: a change here changes every data_dir's
    metadata.json (and so its _SUCCESS)."""
    assert JobConfig(input_dir="in", output_dir="out").recorded_flags() == {
        "input_dir": "in", "min_rating": 2.0, "low_ratings_in_context": True,
        "min_timeline_length": 3,
        "max_context_length": 10, "max_context_movie_genre_length": 10,
        "context_before_label_second": False, "split": "last",
        "train_fraction": 0.9, "seed": 42, "num_shards": 8, "compression": "gzip",
        "max_bad_fraction": 0.001, "download": None, "validation": True}
    flags = options.parse_args(["--input_dir=in", "--output_dir=o", "--min_rating=3.5",
                                "--overwrite", "--read_chunk_bytes=7"])[0].recorded_flags()
    assert flags["min_rating"] == 3.5 and type(flags["min_rating"]) is float
    assert "overwrite" not in flags and "read_chunk_bytes" not in flags


@pytest.mark.parametrize("argv,value", [([], True), (["--validation"], True),
                                        (["--validation=false"], False),
                                        (["--novalidation"], False)])
def test_bool_flags_take_the_negative_spelling(argv, value):
    """--novalidation is absl's spelling of --validation=false (the trainer's flags take
    it too); it takes no value."""
    assert options.parse_args(["--input_dir=in", "--output_dir=o", *argv])[0].validation is value
    with pytest.raises(FlagError, match="--novalidation takes no value"):
        options.parse_args(["--input_dir=in", "--output_dir=o", "--novalidation=true"])


@pytest.mark.parametrize("change,message", [
    ({"num_shards": 0}, "--num_shards: must be >= 1, got 0"),
    ({"train_fraction": 1.5}, "--train_fraction: must be in [0, 1], got 1.5"),
    ({"read_chunk_bytes": -1}, "--read_chunk_bytes: must be >= 0, got -1"),
    ({"split": "lsat"}, "--split: must be one of ('last', 'random'), got 'lsat'"),
    ({"download": "ml-2m"}, "--download: must be one of"),
])
def test_configs_made_in_code_are_checked_like_flags(change, message):
    with pytest.raises(FlagError, match=re.escape(message)):
        JobConfig(input_dir="in", output_dir="out", **change)


def test_synthetic_flags_derive_from_its_config():
    with pytest.raises(FlagError, match=r"--num_movies: must be >= 34 \(every user rates "
                                        r">= 20 distinct movies\), got 10"):
        synthetic.Config(num_movies=10)
    out, cfg = synthetic.parse_args(["--output_dir=o", "--num_users=7", "--format=csv"])
    assert (out, cfg) == ("o", synthetic.Config(num_users=7, format="csv"))
    with pytest.raises(FlagError, match="--block_size: must be >= 1, got 0"):
        synthetic.parse_args(["--output_dir=o", "--block_size=0"])
