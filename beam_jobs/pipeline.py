"""MovieLens ratings -> per-user timelines -> tf.train.Example shards (the seqrec Beam job).

    python -m beam_jobs.pipeline --input_dir=DIR --output_dir=URI [job flags] [Beam options]

Graph (one Beam element per byte range or per shard, never per rating: per-element
overhead, not parsing, dominated a per-line pipeline at 39-50 s for 1M ratings):

    ReadMovies:   movies file -> MoviesTable (side input) + set-aside lines
    ReadRatings:  byte ranges -> parse in bulk -> filter -> (shard, columns of that shard)
    BuildShards:  GroupByKey(shard) -> sort by (user, timestamp, movie) -> encode -> write
                  train/, validation/, test/ and users/ shard files (temp name, then
                  rename)
    WriteErrors:  set-aside lines with file, line number and reason -> errors/
    WriteVocab:   movies + train label counts -> vocab.tsv
    Finalize:     counts -> bad-fraction check -> read back every file (sizes, SHA-256)
                  -> metadata.json (with the manifest) -> _SUCCESS (last) -> read back again

Users go to shards by a stable hash and every shard is written by one DoFn call in user
order, so the bytes do not depend on runner, worker count or bundle boundaries. The same
holds for vocab.tsv, errors/ and metadata.json: metadata has no timestamps or hostnames,
and its "flags" leave out output_dir/overwrite/read_chunk_bytes (see JobConfig).

Bad input:
* Unknown, abbreviated or misspelled flags and bad flag values (FlagError), missing or
  empty input files, an input_dir that is missing or a file, input files that are
  directories, an output_dir that is a file, cannot be created or written, or holds a
  finished run without --overwrite: one line on stderr before the pipeline starts (exit
  status 2).
* Malformed rating lines (blank, wrong field count, non-numeric, undecodable, id or rating
  out of range) and rating lines naming a movie absent from the movies file are set aside
  in errors/<input file>.tsv (file, 1-based line, reason, text), counted (Beam counters
  "seqrec/malformed_<reason>", "seqrec/unknown_movie"; metadata.json counts) and, past
  --max_bad_fraction of all rating lines together, fail the job before metadata.json and
  _SUCCESS are written (exit status 1). Malformed movie lines are set aside and counted
  too; they do not count towards the fraction (their ratings then count as unknown_movie).

Logs (the entry point, main): the job's own lines at INFO -- the input files and sizes,
output_dir, the runner, what each stage read or built as it finishes (per byte range, per
shard: at most about ten lines a stage, never per element), and the summary -- plus every
warning, and DataflowRunner's job lines (job id, console URL, state). Beam's other INFO
chatter is dropped unless --verbosity >= 1. Logging never changes the output.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)

from beam_jobs import download, movielens, options, outputs, process, shards
from beam_jobs.options import JobConfig

NS = outputs.COUNTER_NAMESPACE
# A fixed name, not __name__: run as `python -m beam_jobs.pipeline` this module is __main__.
_LOG = logging.getLogger("beam_jobs.pipeline")
# Stages report about this many of their parallel pieces (byte ranges, shards).
_PROGRESS_LINES = 10


def _reported(i: int, n: int) -> bool:
    """Whether piece i of n logs its progress line: every piece when n <= _PROGRESS_LINES,
    else every k-th and the last (a few lines per stage whatever the scale)."""
    step = -(-n // _PROGRESS_LINES)
    return (i + 1) % step == 0 or i == n - 1


def _size_text(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _ParseMoviesFn(beam.DoFn):
    def __init__(self, fmt: str):
        self._fmt = fmt

    def process(self, path):
        data = movielens.read_bytes(path)
        table, errors, num_lines = movielens.parse_movies(data, self._fmt)
        beam.metrics.Metrics.counter(NS, "movie_lines").inc(num_lines)
        beam.metrics.Metrics.counter(NS, "movies").inc(len(table))
        beam.metrics.Metrics.counter(NS, "movies_malformed").inc(len(errors))
        _LOG.info("read %s: %d movies, %d malformed lines", path, len(table), len(errors))
        for line, reason, text in errors:
            yield beam.pvalue.TaggedOutput(
                "errors", outputs.ErrorRecord(
                    path, line, reason,
                    movielens.error_text(text, movielens.MOVIES_ENCODING[self._fmt])))
        yield outputs.MoviesStats(table, num_lines, outputs.reason_counts(errors))


class ReadMovies(beam.PTransform):
    """PBegin -> (PCollection[MoviesStats] with one element, PCollection[ErrorRecord])."""

    def __init__(self, inputs: movielens.InputFiles):
        super().__init__()
        self._inputs = inputs

    def expand(self, pbegin):
        result = (pbegin
                  | "MoviesPath" >> beam.Create([self._inputs.movies])
                  | "ParseMovies" >> beam.ParDo(_ParseMoviesFn(self._inputs.format))
                  .with_outputs("errors", main="movies"))
        return result.movies, result.errors


class _ParseRangeFn(beam.DoFn):
    def __init__(self, fmt: str, cfg: JobConfig, num_ranges: int):
        self._fmt = fmt
        self._cfg = cfg
        self._num_ranges = num_ranges

    def process(self, task, movies):
        index, path, start, end = task
        chunks, pending, stats = shards.parse_range(
            path, start, end, self._fmt, self._cfg, movies.table)
        if self._num_ranges > 1 and _reported(index, self._num_ranges):
            _LOG.info("read %s range %d/%d (bytes %d-%d): %d lines", path, index + 1,
                      self._num_ranges, start, end, stats.lines)
        counter = beam.metrics.Metrics.counter
        counter(NS, "lines").inc(stats.lines)
        counter(NS, "malformed").inc(sum(stats.malformed.values()))
        for reason, n in stats.malformed.items():
            counter(NS, f"malformed_{reason}").inc(n)
        counter(NS, "unknown_movie").inc(stats.unknown_movie)
        counter(NS, "below_min_rating").inc(stats.below_min_rating)
        counter(NS, "kept_ratings").inc(stats.kept_ratings)
        yield beam.pvalue.TaggedOutput("stats", stats)
        for error in pending:
            yield beam.pvalue.TaggedOutput("errors", error)
        yield from chunks


class ReadRatings(beam.PTransform):
    """PBegin -> (chunks keyed by shard, PendingError, RangeStats).

    chunks: (shard index, shards.Columns) of one byte range; PendingError lines are numbered
    by ResolveLines once every range's newline count is known.
    """

    def __init__(self, inputs: movielens.InputFiles, cfg: JobConfig, movies):
        super().__init__()
        self._inputs, self._cfg, self._movies = inputs, cfg, movies

    def expand(self, pbegin):
        path = self._inputs.ratings
        ranges = movielens.plan_ranges(self._inputs.ratings_size, self._cfg.read_chunk_bytes)
        tasks = [(i, path, s, e) for i, (s, e) in enumerate(ranges)]
        result = (pbegin
                  | "ByteRanges" >> beam.Create(tasks, reshuffle=len(tasks) > 1)
                  | "ParseRanges" >> beam.ParDo(
                      _ParseRangeFn(self._inputs.format, self._cfg, len(tasks)),
                      beam.pvalue.AsSingleton(self._movies))
                  .with_outputs("errors", "stats", main="chunks"))
        return result.chunks, result.errors, result.stats


def _newlines_before(stats: list[outputs.RangeStats]) -> dict[tuple[str, int], int]:
    """outputs.newlines_before, logging the ratings totals: the end of reading."""
    if stats:
        malformed = sum(sum(s.malformed.values()) for s in stats)
        _LOG.info("read %s: %d lines: %d ratings kept, %d below --min_rating, %d malformed, "
                  "%d unknown movie", stats[0].file, sum(s.lines for s in stats),
                  sum(s.kept_ratings for s in stats), sum(s.below_min_rating for s in stats),
                  malformed, sum(s.unknown_movie for s in stats))
    return outputs.newlines_before(stats)


class ResolveLines(beam.PTransform):
    """PendingError -> ErrorRecord with 1-based file line numbers (needs all RangeStats)."""

    def __init__(self, stats):
        super().__init__()
        self._stats = stats

    def expand(self, pending):
        before = (self._stats
                  | "AllRangeStats" >> beam.combiners.ToList()
                  | "NewlinesBefore" >> beam.Map(_newlines_before))
        return pending | "NumberLines" >> beam.Map(
            outputs.resolve_line, beam.pvalue.AsSingleton(before))


class _BuildShardFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self._cfg = cfg

    def process(self, element, movies):
        shard, chunks = element
        result = shards.write_shard(shard, [c for c in chunks if c is not None], self._cfg,
                                    movies.table)
        for name in ("users", "short_users", "train_examples", "validation_examples",
                     "test_examples"):
            beam.metrics.Metrics.counter(NS, name).inc(getattr(result, name))
        n = self._cfg.num_shards
        if _reported(shard, n):
            _LOG.info("built shard %d/%d: %d users, %d train + %d validation + %d test "
                      "examples", shard + 1, n, result.users, result.train_examples,
                      result.validation_examples, result.test_examples)
        yield result


class BuildShards(beam.PTransform):
    """(shard, Columns) -> ShardResult, one per shard index (empty shards written too)."""

    def __init__(self, cfg: JobConfig, movies):
        super().__init__()
        self._cfg, self._movies = cfg, movies

    def expand(self, chunks):
        every_shard = (chunks.pipeline
                       | "EveryShard" >> beam.Create([(i, None) for i in range(self._cfg.num_shards)]))
        return ((chunks, every_shard)
                | "WithEmptyShards" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "EncodeAndWrite" >> beam.ParDo(_BuildShardFn(self._cfg),
                                                 beam.pvalue.AsSingleton(self._movies)))


class WriteErrors(beam.PTransform):
    """ErrorRecord -> one errors/<input file>.tsv per input file (sorted by line) ->
    outputs.WrittenFile."""

    def __init__(self, output_dir: str, files: list[str]):
        super().__init__()
        self._output_dir, self._files = output_dir, files

    def expand(self, errors):
        every_file = errors.pipeline | "EveryInput" >> beam.Create([(f, None) for f in self._files])
        return ((errors | "ByFile" >> beam.Map(outputs.by_file), every_file)
                | "WithAllFiles" >> beam.Flatten()
                | "GroupByFile" >> beam.GroupByKey()
                | "WriteErrorFile" >> beam.Map(outputs.write_errors, self._output_dir))


class WriteVocab(beam.PTransform):
    """PBegin -> vocab.tsv from the movies and every shard's train label counts ->
    outputs.WrittenFile."""

    def __init__(self, output_dir: str, movies, shard_results):
        super().__init__()
        self._output_dir, self._movies, self._shards = output_dir, movies, shard_results

    def expand(self, pbegin):
        return (pbegin
                | "VocabTrigger" >> beam.Create([None])
                | "WriteVocabFile" >> beam.Map(
                    outputs.write_vocab, self._output_dir, beam.pvalue.AsSingleton(self._movies),
                    beam.pvalue.AsList(self._shards)))


class Finalize(beam.PTransform):
    """Checks the bad-line fraction and that output_dir holds exactly this run's files,
    writes metadata.json, then _SUCCESS (outputs.finalize). Every output is a side input,
    so this runs after all of them are written."""

    def __init__(self, cfg: JobConfig, inputs, **side):
        super().__init__()
        self._cfg, self._inputs, self._side = cfg, inputs, side

    def expand(self, pbegin):
        s = self._side
        return (pbegin
                | "FinalizeTrigger" >> beam.Create([None])
                | "WriteMetadataAndSuccess" >> beam.Map(
                    outputs.finalize, self._cfg, self._inputs,
                    movies=beam.pvalue.AsSingleton(s["movies"]),
                    range_stats=beam.pvalue.AsList(s["range_stats"]),
                    shard_results=beam.pvalue.AsList(s["shard_results"]),
                    error_files=beam.pvalue.AsList(s["error_files"]),
                    vocab=beam.pvalue.AsSingleton(s["vocab"]),
                    sha256=beam.pvalue.AsDict(s["sha256"])))


def build(pipeline: beam.Pipeline, cfg: JobConfig,
          inputs: movielens.InputFiles | None = None) -> beam.PCollection:
    """Adds the whole job to `pipeline`; returns the Finalize output (the metadata dict)."""
    inputs = inputs or movielens.find_inputs(cfg.input_dir)
    out = cfg.output_dir
    movies, movie_errors = pipeline | "ReadMovies" >> ReadMovies(inputs)
    chunks, pending, range_stats = pipeline | "ReadRatings" >> ReadRatings(inputs, cfg, movies)
    rating_errors = pending | "ResolveLines" >> ResolveLines(range_stats)
    shard_results = chunks | "BuildShards" >> BuildShards(cfg, movies)
    error_files = ((movie_errors, rating_errors)
                   | "AllErrors" >> beam.Flatten()
                   | "WriteErrors" >> WriteErrors(out, [inputs.ratings, inputs.movies]))
    vocab = pipeline | "WriteVocab" >> WriteVocab(out, movies, shard_results)
    sha256 = (pipeline
              | "InputFiles" >> beam.Create([inputs.ratings, inputs.movies])
              | "Sha256" >> beam.Map(outputs.sha256_of))
    return pipeline | "Finalize" >> Finalize(
        cfg, inputs, movies=movies, range_stats=range_stats, shard_results=shard_results,
        error_files=error_files, vocab=vocab, sha256=sha256)


def prepare(argv: list[str]) -> tuple[JobConfig, movielens.InputFiles, PipelineOptions]:
    """Parses flags, downloads if asked, checks inputs and output_dir: every check that can
    fail fast runs here, before a worker starts."""
    return _prepare(options.parse_command_line(argv))


def _prepare(cmd: options.CommandLine):
    cfg = cmd.config
    if cfg.download:
        cfg = dataclasses.replace(
            cfg, input_dir=download.download(cfg.download, cfg.input_dir, cmd.download_base_url))
    pipeline_options = PipelineOptions(cmd.beam_args)
    if pipeline_options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        # Seen with Beam 2.77: lost records and "Invalid PaneInfoEncoding: 3" errors.
        raise options.FlagError(
            "--direct_running_mode=multi_threading loses records on this Beam version; use "
            "in_memory (default) or multi_processing")
    inputs = movielens.find_inputs(cfg.input_dir)
    if not pipeline_options.view_as(TestOptions).dry_run:
        outputs.prepare_output_dir(cfg.output_dir, cfg.overwrite)
    return cfg, inputs, pipeline_options


def _execute(cfg: JobConfig, inputs: movielens.InputFiles, pipeline_options: PipelineOptions):
    _LOG.info("reading %s (%s) and %s (%s)", inputs.ratings, _size_text(inputs.ratings_size),
              inputs.movies, _size_text(inputs.movies_size))
    _LOG.info("writing %s: %d shards per split (%s)", cfg.output_dir, cfg.num_shards,
              cfg.compression)
    runner = pipeline_options.view_as(StandardOptions).runner or "DirectRunner"
    _LOG.info("running on %s", runner)
    start = time.monotonic()
    pipeline = beam.Pipeline(options=pipeline_options)
    build(pipeline, cfg, inputs)
    result = pipeline.run()
    result.wait_until_finish()
    if pipeline_options.view_as(TestOptions).dry_run:
        _LOG.info("dry run: the job was built, nothing ran")
    else:
        _LOG.info("pipeline finished in %.1f s", time.monotonic() - start)
    return result


def run(argv: list[str] | None = None):
    """Runs the job (argv None: sys.argv[1:]); returns the finished PipelineResult
    (metrics readable from it). Logging is left as the caller set it up.

    Raises:
      options.FlagError, movielens.InputError, outputs.OutputError, download.DownloadError:
        before the pipeline starts.
    """
    cfg, inputs, pipeline_options = prepare(sys.argv[1:] if argv is None else list(argv))
    return _execute(cfg, inputs, pipeline_options)


_REFUSED = (options.FlagError, movielens.InputError, outputs.OutputError,
            download.DownloadError)


def main(argv: list[str] | None = None) -> int:
    """The command line: `python -m beam_jobs.pipeline` and the seqrec-prep console script.

    argv None reads sys.argv[1:] (a console-script wrapper calls main()), and usage lines
    then name the command as typed. Sets up logging for the run (see the module doc) and
    restores it afterwards. Returns the exit status: 0 done (or --help); 2 refused before
    the pipeline started, with one line on stderr naming the flag or path; 1 the pipeline
    failed (our own message when the failure is ours, else the traceback propagates).
    """
    prog = options.prog("beam_jobs.pipeline") if argv is None else options.PROG
    try:
        cmd = options.parse_command_line(sys.argv[1:] if argv is None else list(argv), prog)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except options.FlagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with job_logging(cmd.verbosity):
        try:
            cfg, inputs, pipeline_options = _prepare(cmd)
            _execute(cfg, inputs, pipeline_options)
        except _REFUSED as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # a failure inside the pipeline: surface our own message
            message = outputs.job_error_message(e)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 1
    if not pipeline_options.view_as(TestOptions).dry_run:
        try:
            print(outputs.summary(cfg.output_dir) or "", file=sys.stderr)
        except Exception as e:  # the job succeeded; a failed summary must not say otherwise
            print(f"(no summary: {e})", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- logging

# Loggers whose INFO lines are shown at verbosity 0: ours, and DataflowRunner's (the job
# id, the console URL, job state and the service's job messages).
_SHOWN_LOGGERS = ("beam_jobs", "apache_beam.runners.dataflow")
# Where a multi_processing DirectRunner relays its worker processes' log lines.
_WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _JobLines(logging.Filter):
    """Verbosity 0: passes warnings and errors, INFO lines of _SHOWN_LOGGERS, and worker
    lines logged from this package; drops the rest (Beam's per-stage, stager, type-hint
    and runner-selection INFO lines, some logged through the root logger, so loggers'
    levels alone cannot), and the runner's traceback of a failure of ours (BadInputError:
    main prints its message as the one error line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _WORKER_LOGGER and record.msg == "Worker: %s" and record.args:
            if not _worker_line(record):
                return False
        elif record.levelno < logging.WARNING:
            return any(record.name == n or record.name.startswith(n + ".")
                       for n in _SHOWN_LOGGERS)
        return not (record.levelno >= logging.ERROR and record.name.startswith("apache_beam")
                    and outputs.job_error_message(record.getMessage()) is not None)


def _worker_line(record: logging.LogRecord) -> bool:
    """A worker's log entry, which Beam relays as a one-line proto dump: rewritten to its
    message when this package logged it (progress lines) or it is an error; else dropped
    (the workers' start-up and shutdown chatter, at INFO and WARNING)."""
    from apache_beam.portability.api import beam_fn_api_pb2
    from google.protobuf import text_format

    entry = beam_fn_api_pb2.LogEntry()
    try:
        text_format.Parse(str(record.args[0]), entry)
    except text_format.ParseError:
        return record.levelno >= logging.ERROR
    if not entry.log_location.startswith(_PACKAGE_DIR) and record.levelno < logging.ERROR:
        return False
    record.msg = entry.message + (f"\n{entry.trace}" if entry.trace else "")
    record.args = ()
    return True


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record (pytest's capture replaces it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


@contextlib.contextmanager
def job_logging(verbosity: int):
    """The root logger at INFO (DEBUG at verbosity 2) into one stderr handler, filtered
    by _JobLines at verbosity 0; the root's level is restored and the handler removed on
    exit. Installed before Beam's PipelineOptions, whose logging.basicConfig() then adds
    no handler of its own."""
    root = logging.getLogger()
    handler = _StderrHandler()
    fmt = "%(asctime)s %(levelname)s " + ("%(message)s" if verbosity == 0
                                           else "%(name)s: %(message)s")
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    if verbosity == 0:
        handler.addFilter(_JobLines())
    level = root.level
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def cli() -> None:
    """`python -m beam_jobs.pipeline` and the seqrec-prep console script: main(), then
    exit without interpreter teardown (beam_jobs/process.py)."""
    process.exit_now(main())


if __name__ == "__main__":
    cli()
