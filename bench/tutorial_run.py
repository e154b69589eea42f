"""The TFRS tutorial's own code (bench/tutorial.py) as one bench/quality.py row.

    python -m bench.tutorial_run --data_dir=DIR --train_file=FILE --epochs=3 \
        --output=metrics.json [--exclude_seen]

One fresh process (bench/quality.py starts it from its frozen source copy):

1. Checks: data_dir as the trainer reads it (trainer.data.load_data_dir: the
   marker, manifest and every shard's SHA-256), and that --train_file holds
   exactly its train examples. --train_file is the train split as ONE
   uncompressed TFRecord file, the tutorial's input (bench/quality.py makes it
   once per data_dir, outside every timing).
2. Trains with the tutorial's code unchanged: bench.tutorial.cached_train
   (strings, shuffle(10_000), batch(12800), cache()), build() (StringLookup,
   32-d Embedding, GRU(32); Adagrad(0.1)) and model.fit for --epochs. Like the
   tutorial, fit computes no metrics (its compute_loss passes
   compute_metrics=not training), so FactorizedTopK costs nothing there; the
   tutorial's model.evaluate(cached_test) is NOT run. "train_s" is model.fit's
   wall time and nothing else (so it includes tracing and the first epoch's
   parse-and-cache pass, as the tutorial pays them); "epoch_s" each epoch's.
3. Scores the towers with trainer.evaluate.evaluate_retrieval, the trainer
   rows' evaluator, on the same splits (validation when the data_dir has it,
   then test) over the same vocabulary (vocab.tsv), optionally excluding each
   user's seen movies. The towers take string ids, so they are wrapped: int64
   ids -> tf.strings.as_string -> tower. The popularity baseline is scored too,
   under metrics.json's keys, so a tutorial-only call still has that row.

Deviations from the tutorial, none affecting its speed: the vocabulary is
vocab.tsv (see bench/tutorial.py), and a fixed seed (--seed, default 42, through
tf.keras.utils.set_random_seed) makes the row repeatable; the tutorial seeds
nothing.

Writes --output: the trainer's metrics.json shape ({"step", "eval_split",
<split>: {...}, "popularity": {...}, "popularity_validation": {...}}) plus
"timing": {"train_s", "epoch_s", "examples_per_epoch"} and "exclude_seen".
Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tensorflow as tf

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)
from beam_jobs import schema
from bench import child_cli, tutorial
from trainer import config, data, evaluate, hooks

# The tutorial's feature_description parses contexts of exactly this length.
TUTORIAL_CONTEXT_LENGTH = 10
SEED = 42


class EpochTimer(tf.keras.callbacks.Callback):
    """Seconds of each model.fit epoch (perf_counter at epoch begin and end). No batch
    hooks: a callback with one makes fit fetch the logs after every step."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        print(f"tutorial epoch {epoch + 1}: {self.seconds[-1]:.1f} s", file=sys.stderr,
              flush=True)


def check_inputs(info: data.DataInfo, train_file: str, exclude_seen: bool) -> None:
    """Refuses a data_dir or train file the tutorial's code cannot run on honestly.

    Raises:
      data.DataError naming the file.
    """
    if info.context_length != TUTORIAL_CONTEXT_LENGTH:
        raise data.DataError(
            f"{schema.join(info.data_dir, schema.METADATA_FILE)}: contexts of "
            f"{info.context_length} movies; the tutorial's code parses exactly "
            f"{TUTORIAL_CONTEXT_LENGTH} (beam_jobs.pipeline --max_context_length=10)")
    if exclude_seen:
        data.check_seen(info)
    if not tf.io.gfile.exists(train_file):
        raise data.DataError(f"--train_file={train_file} does not exist")
    try:
        records = int(tf.data.TFRecordDataset(train_file).reduce(
            np.int64(0), lambda n, _: n + 1))
    except tf.errors.OpError as e:
        raise data.DataError(f"--train_file={train_file}: unreadable as an uncompressed TFRecord "
                             f"file ({(e.message or str(e)).splitlines()[0]})") from None
    expected = info.num_examples[schema.TRAIN]
    if records != expected:
        raise data.DataError(f"--train_file={train_file}: {records} records, but "
                             f"{info.data_dir}'s train split has {expected}: not made from it")


def string_towers(query_model, candidate_model):
    """The tutorial's string-id towers as evaluate_retrieval's int64 ones.

    Returns:
      (query: int64 [B, L] -> float32 [B, d], candidate: int64 [N] -> float32 [N, d]).
      The pad id 0 becomes "0", out of the vocabulary, as in the tutorial.
    """
    def query(ids):
        return query_model(tf.strings.as_string(ids))

    def candidate(ids):
        return candidate_model(tf.strings.as_string(ids))

    return query, candidate


def run(data_dir: str, train_file: str, epochs: int, exclude_seen: bool = False,
        seed: int = SEED) -> dict:
    """Trains the tutorial's model on train_file and scores it on data_dir's
    evaluation splits; returns what --output holds (see module doc)."""
    info = data.load_data_dir(data_dir)
    check_inputs(info, train_file, exclude_seen)
    tf.keras.utils.set_random_seed(seed)
    vocab = np.array([str(i).encode() for i in info.movie_ids])
    model, query_model, candidate_model = tutorial.build(vocab)
    timer = EpochTimer()
    start = time.perf_counter()
    model.fit(tutorial.cached_train(train_file), epochs=epochs, verbose=0, callbacks=[timer])
    train_s = time.perf_counter() - start

    query, candidate = string_towers(query_model, candidate_model)
    batch = config.defaults()["eval_batch_size"]
    # Batches trained: batch(12800) keeps the remainder. (Not the optimizer's
    # `iterations`: it came out one higher after fit's first pass over a dataset
    # of unknown length.)
    examples = info.num_examples[schema.TRAIN]
    results = {"step": epochs * -(-examples // tutorial.BATCH_SIZE),
               "eval_split": data.eval_split(info, "auto")}
    for split in data.eval_splits(info):
        ds = data.make_eval_dataset(info, batch, split, seen=exclude_seen)
        results[split] = evaluate.evaluate_retrieval(query, candidate, ds, info.movie_ids,
                                                     exclude_seen=exclude_seen)
        results[hooks.popularity_name(split)] = evaluate.popularity_baseline(
            ds, info.movie_ids, info.counts, exclude_seen=exclude_seen)
    results["exclude_seen"] = exclude_seen
    results["timing"] = {"train_s": train_s, "epoch_s": timer.seconds,
                         "examples_per_epoch": examples}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tutorial_run", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="a beam_jobs.pipeline output_dir")
    p.add_argument("--train_file", required=True,
                   help="its train split as one uncompressed TFRecord file")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--exclude_seen", action="store_true",
                   help="rank without each user's already-rated movies (seen_movie_id)")
    p.add_argument("--output", required=True, help="where to write the metrics JSON")
    p.add_argument("--seed", type=int, default=SEED, help="seed of weights and shuffles")
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error(f"--epochs={a.epochs}: must be at least 1")
    return child_cli.write_results(
        lambda: run(a.data_dir, a.train_file, a.epochs, a.exclude_seen, a.seed), a.output,
        (data.DataError, schema.SchemaError))


if __name__ == "__main__":
    sys.exit(main())
