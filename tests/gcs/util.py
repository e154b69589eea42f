"""Helpers for the end-to-end gs:// tests: bucket contents, uploads, trainer runs."""
from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import unquote

from tests.gcs.emulator import ROOT

# A tiny model and data set: 40 users x 10 train examples / batch 10 = 40 steps an
# epoch, a checkpoint every 10 steps. Each trainer process costs ~5 s of imports.
STEPS_PER_EPOCH = 40
CHECKPOINT_EVERY = 10


def names(emulator, bucket: str, prefix: str = "") -> list[str]:
    return sorted(b.name for b in emulator.client().list_blobs(bucket, prefix=prefix))


def upload_dir(emulator, local_dir: str, bucket: str, prefix: str) -> str:
    """Copies every file under local_dir to gs://bucket/prefix/...; returns that URI."""
    b = emulator.client().bucket(bucket)
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            b.blob(f"{prefix}/{os.path.relpath(path, local_dir)}").upload_from_filename(path)
    return f"gs://{bucket}/{prefix}"


def read(emulator, bucket: str, name: str) -> bytes:
    return emulator.client().bucket(bucket).blob(name).download_as_bytes()


def object_name(request) -> str:
    """The decoded object path(s) a proxied request names (query `name=` or /o/...)."""
    return unquote(request.path)


def train_flags(data_dir: str, model_dir: str, *extra: str) -> list[str]:
    return [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=1",
            "--global_batch_size=10", "--embedding_dim=8",
            f"--checkpoint_every_steps={CHECKPOINT_EVERY}", "--virtual_cpu_devices=2",
            "--noeval_every_epoch", "--optimizer=adam", "--learning_rate=0.01", *extra]


def trainer_command(flags) -> list[str]:
    # `timeout -k`: a process that started a strategy may ignore SIGTERM.
    return ["timeout", "-k", "5", "240", sys.executable, "-m", "trainer.train", *flags]


def run_trainer(emulator, flags, timeout: float = 270) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_command(flags), cwd=ROOT, capture_output=True, text=True,
                          env=emulator.subprocess_env({"PYTHONUNBUFFERED": "1"}),
                          timeout=timeout)


def run_module(emulator, module: str, *args: str, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, env=emulator.subprocess_env(), timeout=timeout)
