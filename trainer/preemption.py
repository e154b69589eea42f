"""Preemption: on SIGTERM or SIGINT, finish the step in flight, checkpoint it, exit 75.

Google Cloud preempts a Spot VM, and Kubernetes drains a node, by sending SIGTERM
and, about 30 s later, SIGKILL. `StopSignals` turns SIGTERM and SIGINT into a
request the training loop reads at each step boundary; the loop then saves a
checkpoint of the step it reached and raises `Preempted`, which ends the process
with EXIT_PREEMPTED. A rerun of the same command resumes from that step, losing
nothing (the checkpoint also holds the position in the data).

Exit status 75 is sysexits.h's EX_TEMPFAIL ("temporary failure; retry"): distinct
from 0 (finished: do not rerun), 1 (a crash), 2 (bad input: a rerun cannot help)
and 143 or -15 (killed by SIGTERM with nothing saved: what a process without this
module reports). A job orchestrator can restart on it without a crash count
(Kubernetes podFailurePolicy `onExitCodes: {operator: In, values: [75]}` with
`action: Ignore`).

Several workers (MultiWorkerMirroredStrategy): a node drain signals only the
workers on that node, yet every worker must take part in every step and in the
save (both are collectives). So the loop all-reduces each worker's request after
every step (`distribute.any_worker`: one scalar, 1.5 ms a call measured between
two CPU workers on loopback, against steps of 10 ms to 1 s); every worker gets
the same answer at the same step, they save that step together and all exit 75.

What is not covered: a step, or the save, that takes longer than the grace
period (SIGKILL ends it; the rerun resumes from the last complete checkpoint); a
worker waiting in a collective for a peer that is gone (it never reaches a step
boundary; the orchestrator's SIGKILL ends it). A signal during an evaluation or
the export lets it finish (the checkpoint before it is already saved): after an
epoch's evaluation the loop stops at the next step; after the final export the
run ends normally, status 0.

Why our own handler: creating a MultiWorkerMirroredStrategy installs a native
SIGTERM handler (TensorFlow's preemption notifier, which
tf.distribute.experimental.PreemptionCheckpointHandler reads; seen with
sigaction), after which SIGTERM no longer ends the process. That API drives a
checkpoint manager and restore of its own; ours keeps the one checkpoint series
and resume logic of trainer/checkpoints.py. `StopSignals` is entered after the
strategy exists, so its handler replaces TensorFlow's.
"""
from __future__ import annotations

import signal
import threading

from absl import logging

# sysexits.h EX_TEMPFAIL: see the module docstring.
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """Training stopped on a signal after saving the checkpoint of `step`.

    A SystemExit whose code is EXIT_PREEMPTED: uncaught, it ends the process
    with status 75 and no traceback; an in-process caller catches it to go on.

    Attributes:
      signal_name: "SIGTERM" or "SIGINT" ("a peer" when another worker got it).
      step: the step trained and saved.
      checkpoint: the checkpoint path the chief wrote (a rerun resumes from it).
    """

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        super().__init__(EXIT_PREEMPTED)
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint

    def __str__(self) -> str:
        return (f"stopped by {self.signal_name} after step {self.step}: checkpoint "
                f"{self.checkpoint} saved; rerun the same command to resume from it "
                f"(exit status {EXIT_PREEMPTED})")


class StopSignals:
    """While entered, SIGTERM and SIGINT request a stop instead of ending the process.

    The first signal sets `requested` (its name in `signal_name`) and is logged;
    nothing is interrupted. A second SIGINT (Ctrl-C twice) raises
    KeyboardInterrupt at once, as without this class. On exit the handlers Python
    knew of come back (a native one installed meanwhile, like TensorFlow's under
    MultiWorkerMirroredStrategy, is not: SIGTERM then ends the process again).

    Signals can only be caught in the main thread: entered from another thread,
    this does nothing and `requested` stays False.
    """

    def __init__(self, signals: tuple[int, ...] = SIGNALS):
        self._signals = signals
        self._previous: dict[int, object] = {}
        self.requested = False
        self.signal_name = ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.signal_name = True, name
            # Python runs this in the main thread between bytecodes, so logging
            # (re-entrant locks) is safe here.
            logging.warning("Received %s: stopping after the step in flight, with a "
                            "checkpoint (exit status %d)", name, EXIT_PREEMPTED)
