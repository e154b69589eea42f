"""MovieLens ratings -> per-user timelines -> tf.train.Example shards (the seqrec Beam job).

    python -m beam_jobs.pipeline --input_dir=DIR --output_dir=URI [job flags] [Beam options]

Graph (one Beam element per byte range or per shard, never per rating: per-element
overhead, not parsing, dominated a per-line pipeline at 39-50 s for 1M ratings):

    ReadMovies:   movies file -> MoviesTable (side input) + set-aside lines
    ReadRatings:  byte ranges -> parse in bulk -> filter -> (shard, columns of that shard)
    BuildShards:  GroupByKey(shard) -> sort by (user, timestamp, movie) -> encode -> write
                  train/ and test/ shard files (temp name, then rename)
    WriteErrors:  set-aside lines with file, line number and reason -> errors/
    WriteVocab:   movies + train label counts -> vocab.tsv
    Finalize:     counts -> bad-fraction check -> metadata.json -> _SUCCESS (last)

Users go to shards by a stable hash and every shard is written by one DoFn call in user
order, so the bytes do not depend on runner, worker count or bundle boundaries. The same
holds for vocab.tsv, errors/ and metadata.json: metadata has no timestamps or hostnames,
and its "flags" leave out output_dir/overwrite/read_chunk_bytes (see JobConfig).

Bad input:
* Missing/empty input files, a nonexistent input_dir, a finished output_dir without
  --overwrite: InputError/OutputError before the pipeline starts (exit status 2).
* Malformed rating lines (blank, wrong field count, non-numeric, undecodable, id or rating
  out of range) and rating lines naming a movie absent from the movies file are set aside
  in errors/<input file>.tsv (file, 1-based line, reason, text), counted (Beam counters
  "seqrec/malformed_<reason>", "seqrec/unknown_movie"; metadata.json counts) and, past
  --max_bad_fraction of all rating lines together, fail the job before metadata.json and
  _SUCCESS are written (exit status 1). Malformed movie lines are set aside and counted
  too; they do not count towards the fraction (their ratings then count as unknown_movie).
"""
from __future__ import annotations

import dataclasses
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, TestOptions

from beam_jobs import download, movielens, options, outputs, shards
from beam_jobs.options import JobConfig

NS = outputs.COUNTER_NAMESPACE


class _ParseMoviesFn(beam.DoFn):
    def __init__(self, fmt: str):
        self._fmt = fmt

    def process(self, path):
        data = movielens.read_bytes(path)
        table, errors, num_lines = movielens.parse_movies(data, self._fmt)
        beam.metrics.Metrics.counter(NS, "movie_lines").inc(num_lines)
        beam.metrics.Metrics.counter(NS, "movies").inc(len(table))
        beam.metrics.Metrics.counter(NS, "movies_malformed").inc(len(errors))
        for line, reason, text in errors:
            yield beam.pvalue.TaggedOutput(
                "errors", outputs.ErrorRecord(path, line, reason, movielens.error_text(text)))
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
    def __init__(self, fmt: str, cfg: JobConfig):
        self._fmt = fmt
        self._cfg = cfg

    def process(self, task, movies):
        path, start, end = task
        chunks, pending, stats = shards.parse_range(
            path, start, end, self._fmt, self._cfg, movies.table)
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
        tasks = [(path, s, e) for s, e in
                 movielens.plan_ranges(self._inputs.ratings_size, self._cfg.read_chunk_bytes)]
        result = (pbegin
                  | "ByteRanges" >> beam.Create(tasks, reshuffle=len(tasks) > 1)
                  | "ParseRanges" >> beam.ParDo(
                      _ParseRangeFn(self._inputs.format, self._cfg),
                      beam.pvalue.AsSingleton(self._movies))
                  .with_outputs("errors", "stats", main="chunks"))
        return result.chunks, result.errors, result.stats


class ResolveLines(beam.PTransform):
    """PendingError -> ErrorRecord with 1-based file line numbers (needs all RangeStats)."""

    def __init__(self, stats):
        super().__init__()
        self._stats = stats

    def expand(self, pending):
        before = (self._stats
                  | "AllRangeStats" >> beam.combiners.ToList()
                  | "NewlinesBefore" >> beam.Map(outputs.newlines_before))
        return pending | "NumberLines" >> beam.Map(
            outputs.resolve_line, beam.pvalue.AsSingleton(before))


class _BuildShardFn(beam.DoFn):
    def __init__(self, cfg: JobConfig):
        self._cfg = cfg

    def process(self, element, movies):
        shard, chunks = element
        result = shards.write_shard(shard, [c for c in chunks if c is not None], self._cfg,
                                    movies.table)
        for name in ("users", "short_users", "train_examples", "test_examples"):
            beam.metrics.Metrics.counter(NS, name).inc(getattr(result, name))
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
    """ErrorRecord -> one errors/<input file>.tsv per input file (sorted by line) -> names."""

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
    """PBegin -> vocab.tsv from the movies and every shard's train label counts -> size."""

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
    """Checks the bad-line fraction, writes metadata.json, then _SUCCESS. Every output is a
    side input, so this runs after all of them are written."""

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
                    vocab_size=beam.pvalue.AsSingleton(s["vocab_size"]),
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
    vocab_size = pipeline | "WriteVocab" >> WriteVocab(out, movies, shard_results)
    sha256 = (pipeline
              | "InputFiles" >> beam.Create([inputs.ratings, inputs.movies])
              | "Sha256" >> beam.Map(outputs.sha256_of))
    return pipeline | "Finalize" >> Finalize(
        cfg, inputs, movies=movies, range_stats=range_stats, shard_results=shard_results,
        error_files=error_files, vocab_size=vocab_size, sha256=sha256)


def prepare(argv: list[str] | None) -> tuple[JobConfig, movielens.InputFiles, PipelineOptions]:
    """Parses flags, downloads if asked, checks inputs and output_dir: every check that can
    fail fast runs here, before a worker starts."""
    cfg, beam_args, base_url = options.parse_args(argv)
    if cfg.download:
        cfg = dataclasses.replace(
            cfg, input_dir=download.download(cfg.download, cfg.input_dir, base_url))
    pipeline_options = PipelineOptions(beam_args)
    if pipeline_options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        # Seen here: lost records and "Invalid PaneInfoEncoding: 3" (shared/DESIGN.md).
        raise options.FlagError(
            "--direct_running_mode=multi_threading loses records on this Beam version; use "
            "in_memory (default) or multi_processing")
    inputs = movielens.find_inputs(cfg.input_dir)
    if not pipeline_options.view_as(TestOptions).dry_run:
        outputs.prepare_output_dir(cfg.output_dir, cfg.overwrite)
    return cfg, inputs, pipeline_options


def run(argv: list[str] | None = None):
    """Runs the job; returns the finished PipelineResult (metrics readable from it)."""
    cfg, inputs, pipeline_options = prepare(argv)
    pipeline = beam.Pipeline(options=pipeline_options)
    build(pipeline, cfg, inputs)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (movielens.InputError, outputs.OutputError, download.DownloadError,
            options.FlagError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failure inside the pipeline: surface our own message
        message = outputs.job_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    cfg, beam_args, _ = options.parse_args(argv)
    if not PipelineOptions(beam_args).view_as(TestOptions).dry_run:
        try:
            print(outputs.summary(cfg.output_dir) or "", file=sys.stderr)
        except Exception as e:  # the job succeeded; a failed summary must not say otherwise
            print(f"(no summary: {e})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
