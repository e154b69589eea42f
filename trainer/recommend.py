"""Prints recommendations for a viewing history from an exported model.

    python -m trainer.recommend --model_dir=URI --history=2858,260,1196 [--k=10]

Reads only the newest export (written by trainer.train through trainer.export):
MODEL_DIR/export/LATEST's version, or --export_dir; the SavedModel and its
vocab.tsv asset. The history is a comma-separated list of MovieLens ids, oldest
first; its last L ids (L = the context length the model was trained with) are
right-padded with 0 exactly like the training contexts.

Unknown ids are an error naming them here: the vocabulary holds every movie of
movies.dat, so an id typed outside it is a typo or a different dataset. (A
serving signature cannot ask back: it leaves unknown ids out of the history and
counts them in its `unknown_ids` output.) Movies of the whole history are left
out of the recommendations unless --no-exclude_history (by the
serving_exclude_context signature, which is given the whole history; exports
older than that covered only the last L, and the rest is filtered from their
results, so fewer than --k may remain there).
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections.abc import Sequence

from beam_jobs import process, schema

# TensorFlow is imported inside the functions that use it, so --help and flag errors
# answer at once (importing it takes seconds).

EXPORT_SUBDIR = "export"  # MODEL_DIR/export: trainer.config's default --export_dir


class UsageError(ValueError):
    """Bad flags or an unusable model_dir; the message names the flag or path."""


def parse_history(text: str) -> list[int]:
    """'1,2, 3' -> [1, 2, 3]; errors name --history and the bad entry."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--history is empty: give movie ids, oldest first, e.g. --history=1,2,3")
    ids = []
    for item in items:
        try:
            ids.append(int(item))
        except ValueError:
            raise UsageError(f"--history: {item!r} is not a movie id (an integer)") from None
    return ids


def context_row(history: Sequence[int], length: int) -> list[int]:
    """The model input for a history: its last `length` ids, oldest first, right-padded."""
    tail = list(history)[-length:]
    return tail + [schema.PAD_MOVIE_ID] * (length - len(tail))


def _load(model_dir: str | None, export_dir: str | None = None):
    import tensorflow as tf

    from trainer import export

    flag = "--export_dir" if export_dir else "--model_dir"
    base = export_dir or _export_dir_of(model_dir)
    export_dir = export.latest(base)
    if export_dir is None:
        raise UsageError(
            f"{flag}: no exported model at {base} (expected saved_model.pb there, or numbered "
            "versions); train with trainer.train --export first"
        )
    loaded = tf.saved_model.load(export_dir)
    vocab_path = loaded.vocab.asset_path.numpy().decode()
    with tf.io.gfile.GFile(vocab_path) as f:
        vocab = {row["movie_id"]: row for row in schema.parse_vocab(f.read(), vocab_path)}
    return loaded, vocab, export_dir


def _export_dir_of(model_dir: str) -> str:
    """Where trainer.train exported a model_dir's model: MODEL_DIR/export, unless its
    config.json names another --export_dir (e.g. Vertex AI's $AIP_MODEL_DIR)."""
    import tensorflow as tf

    config_path = schema.join(model_dir, "config.json")  # trainer.config.CONFIG_FILE
    if tf.io.gfile.exists(config_path):
        with tf.io.gfile.GFile(config_path) as f:
            chosen = json.loads(f.read()).get("export_dir")
        if chosen:
            return chosen
    return schema.join(model_dir, EXPORT_SUBDIR)


def recommend(model_dir: str | None, history: Sequence[int], k: int = 10,
              exclude_history: bool = True, export_dir: str | None = None):
    """Top-k recommendations for one history, from the newest export under
    `export_dir` (default: model_dir/export, or where the run's config.json says).

    Returns:
      (vocab {id: row}, [(movie_id, score), ...] best first, context length L).
    """
    import tensorflow as tf

    loaded, vocab, export_dir = _load(model_dir, export_dir)
    unknown = [m for m in history if m not in vocab]
    if unknown:
        raise UsageError(
            f"--history: movie id(s) {', '.join(map(str, unknown))} not in the model's "
            f"vocabulary ({len(vocab)} movies, {export_dir}/assets/vocab.tsv)"
        )
    name = "serving_exclude_context" if exclude_history else "serving_default"
    serve = loaded.signatures[name]
    length = int(loaded.context_length.numpy())
    available = serve.structured_outputs["movie_ids"].shape[1]
    if not 1 <= k <= available:
        raise UsageError(f"--k must be between 1 and {available} (the exported k), got {k}")
    # The whole history: the signatures read its last L ids, and serving_exclude_context
    # leaves out all of them (they come back at -inf only when fewer than k others exist).
    row = history if len(history) > length else context_row(history, length)
    out = serve(**{schema.CONTEXT_MOVIE_ID: tf.constant([row], tf.int64)})
    pairs = zip(out["movie_ids"][0].numpy().tolist(), out["scores"][0].numpy().tolist(), strict=True)
    # Exports written before serving_exclude_context covered the whole history left
    # out only the last L: older history movies are dropped here for those, which
    # can leave fewer than k results.
    seen = set(history) if exclude_history else set()
    results = [(m, s) for m, s in pairs if not math.isinf(s) and m not in seen][:k]
    return vocab, results, length


def _format(history, vocab, results, length) -> str:
    used = history[-length:]
    lines = [f"History ({len(history)} movies, oldest first; the model reads the last {len(used)}):"]
    lines.append(f"  {'movie_id':>8}  {'year':>4}  title")
    for m in history:
        row = vocab[m]
        mark = "" if m in used else "  (not used)"
        lines.append(f"  {m:>8}  {row['year']:>4}  {row['title']}{mark}")
    lines.append("")
    lines.append(f"Top {len(results)} recommendations:")
    lines.append(f"  {'rank':>4}  {'movie_id':>8}  {'year':>4}  {'score':>8}  title")
    for rank, (m, score) in enumerate(results, start=1):
        row = vocab.get(m, {"year": 0, "title": "?"})
        lines.append(f"  {rank:>4}  {m:>8}  {row['year']:>4}  {score:>8.4f}  {row['title']}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with a bad flag reported in one line (exit 2), no abbreviations."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        # Unknown flags first: a misspelt required flag is reported as misspelt.
        for arg in sys.argv[1:] if args is None else args:
            name = arg.split("=", 1)[0]
            if name.startswith("-") and name not in self._option_string_actions:
                near = difflib.get_close_matches(name, list(self._option_string_actions), 1)
                self.error(f"unknown flag {name}" + (f"; did you mean {near[0]}?" if near else ""))
        return super().parse_args(args, namespace)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m trainer.recommend` and the `seqrec-recommend` console script."""
    parser = _Parser(prog="python -m trainer.recommend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", help="trainer.train's --model_dir (local or gs://); "
                        "the model is read from MODEL_DIR/export")
    parser.add_argument("--export_dir", help="the SavedModel itself, where trainer.train "
                        "exported it elsewhere (--export_dir, or Vertex AI's $AIP_MODEL_DIR)")
    parser.add_argument("--history", required=True, help="comma-separated movie ids, oldest first")
    parser.add_argument("--k", type=int, default=10, help="number of recommendations")
    parser.add_argument(
        "--exclude_history", action=argparse.BooleanOptionalAction, default=True,
        help="leave the history's own movies out of the results (--no-exclude_history keeps them)",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if not (args.model_dir or args.export_dir):
        parser.error("one of --model_dir or --export_dir is required")
    if not args.verbose:
        from trainer import console

        console.quiet_tensorflow()
    try:
        history = parse_history(args.history)
        vocab, results, length = recommend(args.model_dir, history, args.k, args.exclude_history,
                                           export_dir=args.export_dir)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_format(history, vocab, results, length))
    return 0


def cli() -> None:
    """`python -m trainer.recommend` and the seqrec-recommend console script: main(), then
    exit without interpreter teardown (it destroyed TensorFlow's objects: 0.8 s of a 4 s
    call on the sample's export; beam_jobs/process.py). main() has printed everything."""
    process.exit_now(main())


if __name__ == "__main__":
    cli()
