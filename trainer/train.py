r"""Trains the sequential retrieval model on a data_dir; writes model_dir.

    python -m trainer.train --data_dir=out/sample/data --model_dir=out/sample/model \
        --virtual_cpu_devices=2 --epochs=3

model_dir receives: checkpoints/ (every --checkpoint_every_steps and each
epoch end; a rerun with the same model_dir resumes from the latest), train/ and
eval/ TensorBoard events, config.json, metrics.json (test-split retrieval
metrics and the popularity baseline) and export/1/, 2/, ... (one SavedModel per
export) with export/LATEST (docs/serving.md).
--checkpoint_dir, --tensorboard_dir and --export_dir (or Vertex AI's AIP_*
variables) move those three elsewhere.

This is the entry point only: flags (declared in trainer/config.py), then
trainer/loop.py's `run`. `python -m trainer.train --helpshort` lists the flags.

Exit status: 0 done; 2 bad input or flags (one line naming them; nothing trained, or
training stopped at a damaged shard keeping the last checkpoint); 75 (EX_TEMPFAIL)
stopped by SIGTERM/SIGINT after checkpointing the step reached: rerun the same
command to resume.
"""
from __future__ import annotations

import sys

from absl import app, flags

from beam_jobs import process, schema
from trainer import config, console

FLAGS = flags.FLAGS


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a flag error in one line and exit status 2 (absl's own
    prints a FATAL line and a hint, and exits 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]} (flags are --name=value)",
              file=sys.stderr)
        return 2
    try:
        cfg = config.config_from_flags(FLAGS)
    except config.ConfigError as e:  # a value TrainConfig refuses; the message names it
        print(f"error: {e}", file=sys.stderr)
        return 2
    # TensorFlow is imported only from here on: quietly (unless -v 1), and the
    # CPU split into virtual devices before anything initialises its runtime.
    if not console.verbose():
        console.quiet_tensorflow()
    from trainer import checkpoints, data, distribute, loop, preemption, storage

    distribute.configure_virtual_cpus(cfg.trainer.virtual_cpu_devices)
    try:
        loop.run(cfg)
    except (data.DataError, schema.SchemaError, checkpoints.ModelDirError, storage.StorageError,
            config.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except preemption.Preempted as e:  # checkpointed: an orchestrator may restart it
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        return e.code
    return 0


def main() -> None:
    """`python -m trainer.train` and the `seqrec-train` console script."""
    # Key flags of the main program (sys.argv[0]: trainer/train.py or the console
    # script), so --helpshort lists them although trainer.config defines them.
    for name in config.define_flags(FLAGS):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    # Exit without interpreter teardown: run() has closed every output by then, and
    # teardown would destroy TensorFlow's objects, which took up to 25 s here (the
    # iterator's autotune thread; beam_jobs/process.py).
    app.run(lambda argv: process.exit_now(_main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
