"""What a user of the entry points sees: the project's lines, not TensorFlow's chatter.

By default (absl `--verbosity=0`, or a recommend run without `-v`) the entry points call
`quiet_tensorflow()` before anything imports TensorFlow. It

- drops the lines TensorFlow's native libraries print while they load, before their
  logging is configured (so TF_CPP_MIN_LOG_LEVEL cannot reach them): the absl
  "InitializeLog" banner, oneDNN's notice, and "Could not find cuda drivers" on a
  GPU-less host. Any other line printed during the import is passed on unchanged;
- sets TF_CPP_MIN_LOG_LEVEL=3 (unless the user set it): TensorFlow's C++ log after
  the import is its INFO/WARNING chatter plus "errors" that are not errors for us
  (cuInit failing on every GPU-less host, oneDNN's DT_BOOL fallback); real failures
  reach the user as Python exceptions;
- drops INFO lines that TensorFlow, Keras and TFRS log from Python (collective ops,
  the saver, SavedModel's "Found untraced functions"): much of TensorFlow logs
  through absl's logger, the same as ours, so the filter goes by the source file.

`--verbosity=1` (`-v 1`) leaves all of that alone. `Progress` prints a live Keras bar
to a terminal and one plain log line per update anywhere else (a log file must not
receive carriage returns and backspaces).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

from absl import logging as absl_logging

# Printed by TensorFlow's shared libraries at import, before logging is set up.
_IMPORT_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers")


def quiet_tensorflow() -> None:
    """Imports TensorFlow quietly (see the module doc). Call before TF is imported;
    afterwards it only lowers TF's Python logger."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        _import_filtered()
    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())


_LIBRARY_FILE = re.compile(r"[/\\](tensorflow|tf_keras|keras|tensorflow_recommenders)[/\\]")


class _DropLibraryInfo(logging.Filter):
    """Passes WARNING and above, and every record logged by this project."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _LIBRARY_FILE.search(record.pathname)


def _import_filtered() -> None:
    """`import tensorflow` with file descriptor 2 captured (the native libraries
    write to it directly), then every captured line that is not known noise
    re-printed to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not _IMPORT_NOISE.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def verbose() -> bool:
    """absl's --verbosity above INFO's 0 (`-v 1`): show everything."""
    return absl_logging.get_verbosity() > absl_logging.INFO


class Progress:
    """Training progress within an epoch.

    A terminal gets Keras's live progress bar; a pipe or file gets one log line at
    each quarter of the epoch (the epoch's end has a line of its own), e.g.
    "epoch 2/5: step 12/29, loss 6.2228".
    """

    def __init__(self, epoch: int, epochs: int, steps: int, done: int = 0):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self._every = max(1, -(-steps // 4))  # quarters of the epoch
        self._bar = None
        if sys.stdout.isatty():
            from tensorflow import keras  # tf.keras (Keras 2 under TF_USE_LEGACY_KERAS)

            print(f"Epoch {epoch}/{epochs}", flush=True)
            self._bar = keras.utils.Progbar(steps)
            self._bar.update(done)

    def update(self, done: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(done, values=[("loss", loss)])
        elif done % self._every == 0 and done < self.steps:  # the end is logged by the loop
            absl_logging.info("epoch %d/%d: step %d/%d, loss %.4f", self.epoch, self.epochs,
                              done, self.steps, loss)
