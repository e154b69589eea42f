"""The counting baseline (trainer/markov.py) as one bench/quality.py row.

    python -m bench.markov_run --data_dir=DIR --output=metrics.json [--exclude_seen] \
        [--last=3 --decay=0.5 --smoothing=5]

One fresh process: reads the data_dir as the trainer does (trainer.data.load_data_dir:
the marker, manifest and every shard's SHA-256), counts the train split once in file
order (markov.count_successors) and scores every evaluation split with
trainer.evaluate.markov_baseline, the trainer rows' metrics over the same vocabulary.
The popularity baseline is scored too, under metrics.json's keys.

Writes --output: the trainer's metrics.json shape ({"eval_split", <split>: {...},
"popularity": {...}, "popularity_validation": {...}}) plus "timing": {"fit_s"} (the
counting pass) and "markov": the options used. Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports Keras)
from bench import child_cli
from trainer import config, data, evaluate, hooks, markov


def run(data_dir: str, exclude_seen: bool = False, last: int = markov.DEFAULT_LAST,
        decay: float = markov.DEFAULT_DECAY,
        smoothing: float = markov.DEFAULT_SMOOTHING) -> dict:
    """Counts data_dir's train split and scores its evaluation splits; returns what
    --output holds (see module doc)."""
    info = data.load_data_dir(data_dir)
    if exclude_seen:
        data.check_seen(info)
    start = time.perf_counter()
    successors = markov.count_successors(hooks.train_batches(info, "nothing counted"),
                                         info.movie_ids, last, decay, smoothing)
    results = {"eval_split": data.eval_split(info, "auto"),
               "timing": {"fit_s": time.perf_counter() - start},
               "markov": {"last": last, "decay": decay, "smoothing": smoothing},
               "exclude_seen": exclude_seen}
    batch = config.defaults()["eval_batch_size"]
    for split in data.eval_splits(info):
        ds = data.make_eval_dataset(info, batch, split, seen=exclude_seen)
        results[split] = evaluate.markov_baseline(ds, info.movie_ids, successors, info.counts,
                                                  exclude_seen=exclude_seen)
        results[hooks.popularity_name(split)] = evaluate.popularity_baseline(
            ds, info.movie_ids, info.counts, exclude_seen=exclude_seen)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.markov_run", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="a beam_jobs.pipeline output_dir")
    p.add_argument("--output", required=True, help="where to write the metrics JSON")
    p.add_argument("--exclude_seen", action="store_true",
                   help="rank without each user's already-rated movies (seen_movie_id)")
    p.add_argument("--last", type=int, default=markov.DEFAULT_LAST,
                   help="how many of each context's last movies count")
    p.add_argument("--decay", type=float, default=markov.DEFAULT_DECAY,
                   help="weight of each older one of them relative to the next")
    p.add_argument("--smoothing", type=float, default=markov.DEFAULT_SMOOTHING,
                   help="added to every movie's successor total")
    a = p.parse_args(argv)
    # ValueError: data.DataError, schema.SchemaError, markov's refusals.
    return child_cli.write_results(
        lambda: run(a.data_dir, a.exclude_seen, a.last, a.decay, a.smoothing), a.output,
        (ValueError,))


if __name__ == "__main__":
    sys.exit(main())
