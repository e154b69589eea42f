"""Batch recommendations for every user of a data_dir, on Beam's RunInference.

    python -m beam_jobs.recommend_all --data_dir=URI --output_dir=URI
        (--model_dir=MODEL_DIR | --export_dir=SAVED_MODEL) [--k=10] [--exclude_seen]
        [--batch_size=1024] [--overwrite] [Beam options]

Input: the data_dir's users/ shards (schema.USERS: user_id, context_movie_id [L],
seen_movie_id [n]), each checked against metadata.json's manifest (size, SHA-256) as it is
read; the SavedModel trainer/export.py wrote (default: MODEL_DIR/export's newest version,
by its LATEST file).

Output, in output_dir:

    part-00000-of-00008.parquet ...  user_id int64, rank int32 (1 = best), movie_id int64,
                                     score float32, title string; users ascending, then
                                     rank; part i holds the users of users/ shard i (as
                                     many files as the data_dir's shards, empty ones too)
    metadata.json                    flags, the inputs (data_dir's metadata SHA-256, the
                                     export), counts, and every shard's bytes/SHA-256/rows
    _SUCCESS                         written last: schema.success_record(metadata.json)

Each user gets exactly min(k, V) rows, V the export's candidates; with --exclude_seen
every movie the user rated is removed first, and a user who has seen all but m < k
candidates gets m rows. Scores are the export's own: its `query_embedding` signature
(the same history handling as serving_default: unknown ids dropped, last L kept) times
its `candidates` embeddings, top-k by tf.math.top_k (ties: vocabulary order) -- so
without exclusion the rows are what `serving_default` returns for k <= the export's k.
Scoring here rather than through serving_default because an export's k is fixed (100 by
default) and exclusion needs k + |seen| candidates, which reach thousands on ML-1M.

How: RunInference with KeyedModelHandler(SavedModelHandler) (a Beam ModelHandler: Beam
loads the SavedModel once per worker process and calls run_inference per batch of
--batch_size users, batches cut in users/ file order and keyed (shard, batch): see
read_users_shard for why), then one GroupByKey per users/ shard into its Parquet file.
Why not Beam's own TFModelHandlerTensor (checked on Beam 2.77,
apache_beam/ml/inference/tensorflow_inference.py): that module imports tensorflow_hub
when it is imported (not installed here: ModuleNotFoundError), and the handler loads
models with tf.keras.models.load_model(hub.resolve(uri)), which refuses this export
("lacks the TF-Keras metadata file": trainer/export.py saves a plain tf.Module with
tf.saved_model.save, which keeps it portable). Its inference calls the model itself, not
a named signature.

TensorFlow is imported only inside SavedModelHandler (import_tensorflow): the prep job's
workers (beam_jobs.pipeline) never import this module, and this one's flag parsing, checks
and pipeline construction do not need TensorFlow either. Workers running it need the
`recommend` extra (TensorFlow; infra/dataflow/launch_recommend.py installs it on Dataflow).
At verbosity 0 that import is quiet in every process that loads the model, workers
included: the handler carries the verbosity (import_tensorflow says what is dropped).

Locally (no --runner, or DirectRunner) the pipeline runs on Beam's FnApiRunner: what
Beam 2.77's DirectRunner runs it on here, but without first trying the Prism runner,
which downloads a binary from GitHub at every start (local_runner).

Bad input (exit status 2, one line naming the flag or path, before the pipeline starts):
unknown, abbreviated or bad flags; neither or both of --model_dir/--export_dir; no
SavedModel there; a data_dir without _SUCCESS, with a metadata.json _SUCCESS does not
commit to, or without users/ (written before users/ existed: rerun beam_jobs.pipeline);
an output_dir that is a file, cannot be written, or holds a finished run without
--overwrite.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference import base as _inference_base
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from beam_jobs import options, outputs, pipeline, process, schema
from beam_jobs.options import FlagError, at_least, option
from beam_jobs.tfrecord import write_bytes

# Beam 2.77's ml/inference/base.py imports `resource` in one try block with its
# ModelManager, which needs torch: without torch, `resource` is None there, and every
# model load logs "Resource module is not available for current platform, memory usage
# cannot be fetched." twice (a WARNING; the module is there) and records 0 bytes. Give it
# the module it meant to import: every process that unpickles the handler imports this
# module first, Dataflow workers included.
if getattr(_inference_base, "resource", False) is None:
    try:
        import resource as _resource
    except ImportError:  # a platform without it: Beam's warning is then true
        pass
    else:
        _inference_base.resource = _resource

_LOG = logging.getLogger("beam_jobs.recommend_all")
PROG = "python -m beam_jobs.recommend_all"
SHARD_GLOB = "part-*-of-*.parquet"
LATEST_FILE = "LATEST"  # trainer/export.py's pointer (not imported: it imports TensorFlow)
COLUMNS = ("user_id", "rank", "movie_id", "score", "title")


@dataclasses.dataclass(frozen=True)
class RecommendConfig:
    """Every flag of the job, declared once (options.option). Recorded ones go to the
    output's metadata.json "flags"."""

    data_dir: str = option(help="A finished beam_jobs.pipeline output (local or gs://) "
                           "with users/.")
    output_dir: str = option(help="Where the Parquet shards go (local or gs://).",
                             recorded=False)
    model_dir: str | None = option(
        None, "The trainer's MODEL_DIR: its export/ newest version (LATEST) is used.")
    export_dir: str | None = option(
        None, "A SavedModel directory (MODEL_DIR/export/<N>) to use instead of --model_dir.")
    k: int = option(10, "Recommendations per user (default {default}; capped at the "
                    "number of candidates).", check=at_least(1))
    exclude_seen: bool = option(False, "Leave out every movie the user rated.")
    # Recorded: scores may change in the last bit with the batch shape (read_users_shard).
    batch_size: int = option(1024, "Users per model call (default {default}).",
                             check=at_least(1))
    overwrite: bool = option(False, "Replace a finished run in output_dir.", recorded=False)

    __post_init__ = options.validate

    def recorded_flags(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata["recorded"]}


def make_parser(prog: str = PROG) -> options.StrictParser:
    p = options.StrictParser(
        prog=prog, description="Top-k recommendations for every user of a data_dir's users/ "
        "(Parquet). Other flags must be Beam pipeline options; no flag may be abbreviated.")
    options.add_options(p, RecommendConfig)
    options.add_verbosity(p)
    return p


def parse_command_line(argv: list[str], prog: str = PROG
                       ) -> tuple[RecommendConfig, list[str], int]:
    """(config, Beam arguments, verbosity). Raises FlagError (unknown, abbreviated, bad
    flags; neither or both of --model_dir/--export_dir); SystemExit for --help."""
    parser = make_parser(prog)
    args, rest = parser.parse_known_args(argv)
    beam_parser = options.beam_parser()
    _, unknown = beam_parser.parse_known_args(rest)
    options.refuse_unknown(unknown, options.flag_names(parser)
                           + options.flag_names(beam_parser), prog)
    if (args.model_dir is None) == (args.export_dir is None):
        raise FlagError("give one of --model_dir (its newest export) or --export_dir")
    cfg = RecommendConfig(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(RecommendConfig)})
    return cfg, rest, args.verbosity


# --------------------------------------------------------------------------- checks


class InputError(ValueError):
    """A model or data_dir path the job cannot use (a one-line message naming it)."""


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def resolve_export(cfg: RecommendConfig) -> str:
    """The SavedModel directory: --export_dir itself, or --model_dir/export's newest
    version (its LATEST file, else the highest number), as trainer.export.latest.
    Raises InputError naming the flag and path."""
    if cfg.export_dir is not None:
        if not FileSystems.exists(schema.join(cfg.export_dir, "saved_model.pb")):
            raise InputError(f"--export_dir {cfg.export_dir}: no saved_model.pb there")
        return cfg.export_dir.rstrip("/")
    base = schema.join(cfg.model_dir, "export")
    pointer = schema.join(base, LATEST_FILE)
    if FileSystems.exists(pointer):
        found = schema.join(base, _read(pointer).decode().strip())
    else:
        pattern = schema.join(base, "*", "saved_model.pb")
        numbers = sorted(int(m.path.split("/")[-2]) for r in FileSystems.match([pattern])
                         for m in r.metadata_list if re.fullmatch(r"[0-9]+", m.path.split("/")[-2]))
        if not numbers:
            raise InputError(f"--model_dir {cfg.model_dir}: no exported model under {base} "
                             "(train first, or name one with --export_dir)")
        found = schema.join(base, str(numbers[-1]))
    if not FileSystems.exists(schema.join(found, "saved_model.pb")):
        raise InputError(f"--model_dir {cfg.model_dir}: {found} (named by {pointer}) holds no "
                         "saved_model.pb")
    return found


class UsersInput(NamedTuple):
    """users/ of a checked data_dir. shards: (path, {"bytes", "sha256", "examples"})."""

    shards: list[tuple[str, dict]]
    metadata_sha256: str
    users: int


def check_data_dir(data_dir: str) -> UsersInput:
    """Reads the data_dir's _SUCCESS and metadata.json (committed to by _SUCCESS) and its
    users/ manifest. Raises InputError naming the path."""
    success = schema.join(data_dir, schema.SUCCESS_FILE)
    metadata_path = schema.join(data_dir, schema.METADATA_FILE)
    if not FileSystems.exists(success):
        raise InputError(f"--data_dir {data_dir}: no {schema.SUCCESS_FILE} ({success}): not a "
                         "finished beam_jobs.pipeline run")
    if not FileSystems.exists(metadata_path):
        raise InputError(f"--data_dir {data_dir}: {metadata_path} is missing")
    metadata_bytes = _read(metadata_path)
    try:
        metadata = schema.loads_metadata(metadata_bytes.decode("utf-8", "replace"),
                                         metadata_path)
        if not schema.check_success(_read(success), metadata_bytes, success):
            raise InputError(f"--data_dir {data_dir}: {success} is empty (written before "
                             "manifests existed); rerun beam_jobs.pipeline")
    except schema.SchemaError as e:
        raise InputError(f"--data_dir {e}") from None
    entries = metadata.get(schema.MANIFEST, {}).get(schema.USERS)
    if entries is None:
        raise InputError(f"--data_dir {data_dir}: no {schema.USERS}/ in its manifest (written "
                         "before users/ existed); rerun beam_jobs.pipeline")
    shards = [(schema.join(data_dir, schema.USERS, e["name"]), e) for e in entries]
    return UsersInput(shards, hashlib.sha256(metadata_bytes).hexdigest(),
                      sum(e["examples"] for e in entries))


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuses an output_dir that is a file or not writable, or holds a finished run
    without `overwrite`; removes an earlier run's files (_SUCCESS first)."""
    try:
        outputs.prepare_output_dir(output_dir, overwrite,
                                   run_outputs=[schema.join(output_dir, SHARD_GLOB)])
    except outputs.OutputError as e:
        raise InputError(str(e)) from None


# --------------------------------------------------------------------------- reading users/


def read_tfrecords(data: bytes) -> list[bytes]:
    """The records of a TFRecord file's bytes (framing as tf.io.TFRecordWriter writes it;
    the whole file is SHA-256 checked by the caller, so the CRCs are not)."""
    out, pos, n = [], 0, len(data)
    while pos < n:
        length = int.from_bytes(data[pos:pos + 8], "little")
        out.append(data[pos + 12:pos + 12 + length])
        pos += 16 + length
    if pos != n:
        raise ValueError("truncated TFRecord file")
    return out


def read_users_shard(shard: tuple[int, str, dict], batch_size: int
                     ) -> list[tuple[tuple[int, int], list[bytes]]]:
    """((shard index, batch index), serialized users/ examples) of one shard (index, path,
    manifest entry) in batches of `batch_size` (file order; the last may be shorter; an
    empty shard gives one empty batch, so its Parquet file is written too).

    Why batches are made here and not by RunInference's own batching: that one follows
    bundle boundaries, which change from run to run, and a matmul's float32 results
    change in the last bit with the batch's shape (measured: 5e-10 on scores of 2e-3).
    Fixed batches give the same bytes on every run and runner."""
    index, path, entry = shard
    records = read_users_records(path, entry)
    return [((index, b), records[i:i + batch_size])
            for b, i in enumerate(range(0, max(len(records), 1), batch_size))]


def read_users_records(path: str, entry: dict) -> list[bytes]:
    """Serialized users/ examples of one shard (path, its manifest entry), after checking
    the file's size and SHA-256 against the manifest (a data_dir changed since its run
    fails here, naming the file) and its record count."""
    raw = _read(path)
    if len(raw) != entry["bytes"] or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise outputs.JobError(f"{path}: not the file its data_dir's metadata.json lists "
                               "(size or SHA-256 differs); rerun beam_jobs.pipeline")
    data = gzip.decompress(raw) if path.endswith(".gz") else raw
    records = read_tfrecords(data)
    if len(records) != entry["examples"]:
        raise outputs.JobError(f"{path}: {len(records)} records, the manifest lists "
                               f"{entry['examples']}")
    return records


# --------------------------------------------------------------------------- inference


class BatchRecs(NamedTuple):
    """Results of B users, flat (a few arrays per batch, not objects per user, cross the
    shuffle): user_ids [B] int64; counts [B] int64, rows per user: min(k, V), fewer only
    when exclusion leaves fewer candidates; movie_ids [R] int64 and scores [R] float32,
    R = sum(counts), each user's best first."""

    user_ids: np.ndarray
    counts: np.ndarray
    movie_ids: np.ndarray
    scores: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """The loaded export (a plain class: RunInference keeps models by weak reference,
    which tuples do not allow)."""

    query_embedding: Any  # the export's query_embedding signature
    candidates: Any  # tf.Tensor [V, D]
    ids: np.ndarray  # [V] int64
    row_of_movie: np.ndarray  # movie id -> candidate row, -1 when not a candidate


# Lines TensorFlow's native libraries print while they load, before their logging is set
# up (so TF_CPP_MIN_LOG_LEVEL cannot reach them): the absl banner, oneDNN's notice, and "no
# cuda drivers" on a GPU-less host. trainer/console.py drops the same lines for the trainer;
# this package may not import it (the import direction is trainer -> beam_jobs only).
_TF_IMPORT_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers")


def import_tensorflow(verbosity: int):
    """`import tensorflow` for the handler, in whichever process loads the model (a
    Dataflow worker inherits neither the launcher's environment nor its logging):

    - TF_USE_LEGACY_KERAS=1 (unless set), as the exporter ran: the export's Keras layers
      are revived by tf-keras, not Keras 3;
    - verbosity 0: TF_CPP_MIN_LOG_LEVEL=3 (unless set; TF's C++ INFO/WARNING lines and
      "errors" that are not ours, such as cuInit failing on a GPU-less host), and file
      descriptor 2 captured during the import, every captured line re-printed but the
      _TF_IMPORT_NOISE ones. Verbosity >= 1 changes neither.

    Returns the tensorflow module.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if verbosity > 0 or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not _TF_IMPORT_NOISE.search(line)))
            sys.stderr.flush()
    return tf


class SavedModelHandler(ModelHandler):
    """RunInference handler: a batch of serialized users/ examples -> BatchRecs (wrapped
    in KeyedModelHandler to carry the batch's (shard, batch) key).

    load_model: tf.saved_model.load(export_dir) (once per worker process, by RunInference),
    plus its candidates; TensorFlow imported by import_tensorflow(verbosity). run_inference:
    one call of the export's query_embedding on the whole batch, one [B, V] score matmul,
    seen movies set to -inf when asked, top-k.
    """

    def __init__(self, export_dir: str, k: int, exclude_seen: bool, verbosity: int = 0):
        super().__init__()
        self._export_dir, self._k, self._exclude = export_dir, k, exclude_seen
        self._verbosity = verbosity

    def load_model(self) -> _Loaded:
        tf = import_tensorflow(self._verbosity)
        loaded = tf.saved_model.load(self._export_dir)
        cands = loaded.signatures["candidates"]()
        ids = cands["movie_ids"].numpy()
        row_of_movie = np.full(int(ids.max()) + 1, -1, np.int64)
        row_of_movie[ids] = np.arange(len(ids))
        return _Loaded(loaded.signatures["query_embedding"], cands["embeddings"], ids,
                       row_of_movie)

    def run_inference(self, batch: Sequence[list[bytes]], model: _Loaded,
                      inference_args=None) -> list[BatchRecs]:
        """batch: [1] list of serialized users/ examples (read_users_shard's batches; at
        most one per call: batch_elements_kwargs) -> [1] BatchRecs."""
        return [self._recommend(users, model) for users in batch]

    def _recommend(self, batch: list[bytes], model: _Loaded) -> BatchRecs:
        import tensorflow as tf

        if not batch:
            z = np.zeros(0, np.int64)
            return BatchRecs(z, z, z, np.zeros(0, np.float32))
        spec = {schema.USER_ID: tf.io.FixedLenFeature([1], tf.int64),
                schema.CONTEXT_MOVIE_ID: tf.io.VarLenFeature(tf.int64),
                schema.SEEN_MOVIE_ID: tf.io.VarLenFeature(tf.int64)}
        parsed = tf.io.parse_example(tf.constant(list(batch)), spec)
        context = tf.sparse.to_dense(parsed[schema.CONTEXT_MOVIE_ID])
        query = model.query_embedding(context_movie_id=context)["embedding"]
        # [B, V], as the export scores; in numpy, where setting the seen movies' scores is
        # one indexed assignment (TF's scatter_nd + where took 0.5 s per 60k users).
        scores = tf.matmul(query, model.candidates, transpose_b=True).numpy()
        k = min(self._k, len(model.ids))
        if self._exclude:
            seen = parsed[schema.SEEN_MOVIE_ID]
            movies = seen.values.numpy()
            rows = np.full(len(movies), -1, np.int64)
            known = movies < len(model.row_of_movie)
            rows[known] = model.row_of_movie[movies[known]]
            hit = rows >= 0  # seen movies that are candidates
            scores[seen.indices.numpy()[hit, 0], rows[hit]] = -np.inf
        values, indices = tf.math.top_k(scores, k=k)
        values, indices = values.numpy(), indices.numpy()
        users = parsed[schema.USER_ID].numpy()[:, 0]
        keep = np.isfinite(values)  # -inf: seen (top_k puts them last)
        return BatchRecs(users.astype(np.int64), keep.sum(axis=1).astype(np.int64),
                         model.ids[indices[keep]], values[keep].astype(np.float32))

    def get_num_bytes(self, batch: Sequence[list[bytes]]) -> int:  # Beam's metrics
        return sum(len(x) for users in batch for x in users)

    def batch_elements_kwargs(self):
        # Elements are already fixed batches of users (read_users_shard: why).
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_metrics_namespace(self) -> str:
        return outputs.COUNTER_NAMESPACE


# --------------------------------------------------------------------------- writing


def shard_name(index: int, num_shards: int) -> str:
    return f"part-{index:05d}-of-{num_shards:05d}.parquet"


def read_titles(export_dir: str) -> dict[int, str]:
    """{movie id: title} of the export's assets/vocab.tsv: the titles its `candidates`
    signature returns (trainer/export.py copies the data_dir's vocab.tsv there)."""
    path = schema.join(export_dir, "assets", schema.VOCAB_FILE)
    rows = schema.parse_vocab(_read(path).decode("utf-8"), path)
    return {r["movie_id"]: r["title"] for r in rows}


def title_column(movie_ids: np.ndarray, title_of: dict[int, str]):
    """The titles of movie_ids [R] as one pyarrow string array, "" for an id the
    vocabulary lacks: a take from the vocabulary's titles (a Python loop over the rows
    took 1 s per 6M rows)."""
    import pyarrow as pa

    ids = np.array(sorted(title_of), np.int64)
    titles = pa.array([title_of[m] for m in ids.tolist()] + [""], pa.string())
    pos = np.searchsorted(ids, movie_ids)
    found = pos < len(ids)
    found[found] = ids[pos[found]] == movie_ids[found]
    return titles.take(pa.array(np.where(found, pos, len(ids))))


def write_parquet_shard(element: tuple[int, list], output_dir: str, num_shards: int,
                        export_dir: str) -> dict:
    """(shard, its [((shard, batch), BatchRecs)]) -> one Parquet file, in batch order
    (= users/ order: users ascending), then rank; titles from the export (read_titles).
    Returns its {"name", "bytes", "sha256", "users", "rows"}. pyarrow writes the same
    bytes for the same table (no timestamps; its version, in the footer, is the install's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard, batches = element
    recs = [r for _, r in sorted(batches, key=lambda kv: kv[0])]
    user_ids = np.concatenate([r.user_ids for r in recs])
    counts = np.concatenate([r.counts for r in recs])
    movie_ids = np.concatenate([r.movie_ids for r in recs])
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    title_of = read_titles(export_dir)
    table = pa.table({
        "user_id": pa.array(np.repeat(user_ids, counts).astype(np.int64)),
        "rank": pa.array((np.arange(len(movie_ids)) - starts + 1).astype(np.int32)),
        "movie_id": pa.array(movie_ids.astype(np.int64)),
        "score": pa.array(np.concatenate([r.scores for r in recs]).astype(np.float32)),
        "title": title_column(movie_ids, title_of),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    data = buf.getvalue()
    name = shard_name(shard, num_shards)
    write_bytes(schema.join(output_dir, name), data)
    return {"name": name, **schema.file_record(data), "users": len(user_ids),
            "rows": len(movie_ids)}


def finalize(_, cfg: RecommendConfig, export_dir: str, users: UsersInput,
             shards: list[dict]) -> dict:
    """metadata.json (flags, inputs, counts, shard list), then _SUCCESS committing to it."""
    shards = sorted(shards, key=lambda s: s["name"])
    users_out = sum(s["users"] for s in shards)
    if users_out != users.users:
        raise outputs.JobError(f"{users_out} users recommended, users/ holds {users.users}")
    metadata = {
        "flags": cfg.recorded_flags(),
        "input": {"data_dir": cfg.data_dir, "data_metadata_sha256": users.metadata_sha256,
                  "export_dir": export_dir},
        "columns": list(COLUMNS),
        "counts": {"users": users_out, "rows": sum(s["rows"] for s in shards)},
        "shards": shards,
    }
    data = (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode()
    write_bytes(schema.join(cfg.output_dir, schema.METADATA_FILE), data)
    write_bytes(schema.join(cfg.output_dir, schema.SUCCESS_FILE), schema.success_record(data))
    return metadata


def build(pipeline: beam.Pipeline, cfg: RecommendConfig, export_dir: str,
          users: UsersInput, verbosity: int = 0) -> beam.PCollection:
    """Adds the job to `pipeline`; returns the metadata dict's PCollection."""
    n = len(users.shards)
    handler = KeyedModelHandler(SavedModelHandler(export_dir, cfg.k, cfg.exclude_seen,
                                                  verbosity))
    shards = [(i, path, entry) for i, (path, entry) in enumerate(users.shards)]
    written = (pipeline
               | "UsersShards" >> beam.Create(shards, reshuffle=n > 1)
               | "ReadUsers" >> beam.FlatMap(read_users_shard, cfg.batch_size)
               | "Recommend" >> RunInference(handler)
               | "ByShard" >> beam.Map(lambda kv: (kv[0][0], kv))
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteParquet" >> beam.Map(write_parquet_shard, cfg.output_dir, n, export_dir))
    return (pipeline
            | "FinalizeTrigger" >> beam.Create([None])
            | "WriteMetadataAndSuccess" >> beam.Map(finalize, cfg, export_dir, users,
                                                    beam.pvalue.AsList(written)))


_REFUSED = (FlagError, InputError)


class Job(NamedTuple):
    """A checked command line: what execute() runs."""

    config: RecommendConfig
    export_dir: str
    users: UsersInput
    options: PipelineOptions
    dry_run: bool  # Beam's --dry_run=True: build the job (Dataflow: offline), run nothing


def prepare(argv: list[str]) -> Job:
    """Parses and checks the command line: every check that can fail before a worker
    starts. Raises FlagError/InputError (one line naming the flag or path)."""
    cfg, beam_args, _ = parse_command_line(argv)
    return _check(cfg, beam_args)


def _check(cfg: RecommendConfig, beam_args: list[str]) -> Job:
    export_dir = resolve_export(cfg)
    users = check_data_dir(cfg.data_dir)
    pipeline_options = PipelineOptions(beam_args)
    dry_run = bool(pipeline_options.view_as(TestOptions).dry_run)
    if not dry_run:  # a dry run writes nothing
        prepare_output_dir(cfg.output_dir, cfg.overwrite)
    return Job(cfg, export_dir, users, pipeline_options, dry_run)


def local_runner(pipeline_options: PipelineOptions):
    """The runner for no --runner or --runner=DirectRunner: Beam's FnApiRunner, built as
    Beam 2.77's DirectRunner builds it for this pipeline (direct_runner.py: the options in
    its provision info; --direct_num_workers and --direct_running_mode apply), without
    what DirectRunner tries first for a pipeline Prism supports: downloading the Prism
    runner's binary from GitHub and running there (offline: a failed download and ~0.1 s
    lost per run, measured; online: another runner, fetched at run time)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(pipeline_options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def execute(job: Job, verbosity: int = 0):
    """Builds the pipeline and runs it to the end (a dry run: builds it only); returns
    Beam's PipelineResult. `verbosity` reaches the model handler (import_tensorflow)."""
    runner = job.options.view_as(StandardOptions).runner
    local = runner in (None, "DirectRunner")
    _LOG.info("recommending for %d users of %s with %s on %s", job.users.users,
              job.config.data_dir, job.export_dir, "FnApiRunner" if local else runner)
    p = beam.Pipeline(runner=local_runner(job.options) if local else None,
                      options=job.options)
    build(p, job.config, job.export_dir, job.users, verbosity)
    result = p.run()
    result.wait_until_finish()
    return result


def run(argv: list[str]) -> dict:
    """Checks everything, runs the pipeline, returns the output's metadata (read back;
    {} for a dry run). Raises FlagError/InputError before the pipeline starts."""
    cfg, beam_args, verbosity = parse_command_line(argv)
    with pipeline.job_logging(verbosity):
        job = _check(cfg, beam_args)
        start = time.monotonic()
        execute(job, verbosity)
        if job.dry_run:
            _LOG.info("dry run: the job was built, nothing ran")
            return {}
        _LOG.info("pipeline finished in %.1f s", time.monotonic() - start)
        return json.loads(_read(schema.join(cfg.output_dir, schema.METADATA_FILE)))


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or --help); 2 refused before the pipeline started, one line
    on stderr naming the flag or path; 1 the pipeline failed with our own message."""
    try:
        metadata = run(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except _REFUSED as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        message = outputs.job_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    if metadata:  # {}: a dry run, which says so itself
        c = metadata["counts"]
        print(f"{c['rows']} recommendations for {c['users']} users", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Run as beam_jobs.recommend_all, not as __main__: what crosses processes (the handler,
    # BatchRecs) is pickled by its module's name, and a worker process (Dataflow's,
    # --direct_running_mode=multi_processing) cannot import `__main__.BatchRecs`.
    from beam_jobs import recommend_all

    process.exit_now(recommend_all.main())
