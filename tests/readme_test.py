"""README.md's "Using it" walkthrough, run exactly as printed in a plain shell.

Every command of the section's `sh using` block runs in order under `env -i` with only
PATH (the virtualenv's bin first) and HOME, from the repository root; only the output
location /tmp/seqrec is moved into the test's temporary directory. Each must exit as the
README says, print what it promises (`# =>` lines) and write the files it promises.
GroupLens cannot be reached from CI: the download command runs against a local HTTP
server through $SEQREC_MOVIELENS_BASE_URL (a variable the README's flag help documents).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import os
import subprocess
import threading
import zipfile

import pytest

from beam_jobs import download, schema
from tests import docs_util
from tests.beam_jobs import util

README = os.path.join(docs_util.ROOT, "README.md")
WALKTHROUGH = docs_util.commands(README, tag="using", section="Using it")

# What each command promises to leave behind, under the output location.
FILES = {
    "beam_jobs.synthetic": ["raw/ratings.dat", "raw/movies.dat"],
    "--input_dir=/tmp/seqrec/raw": ["data/_SUCCESS", "data/metadata.json", "data/vocab.tsv"],
    "--download=ml-1m": ["ml1m-data/_SUCCESS", "ml1m-data/metadata.json"],
    "--model_dir=/tmp/seqrec/model ": ["model/metrics.json", "model/config.json",
                                       "model/export/1/saved_model.pb", "model/export/LATEST"],
    "--preset=tutorial": ["tutorial/metrics.json", "tutorial/export/1/saved_model.pb"],
    "beam_jobs.recommend_all": ["recs/_SUCCESS", "recs/metadata.json",
                                "recs/part-00000-of-00008.parquet"],
}


@pytest.fixture
def grouplens(tmp_path):
    """A local stand-in for files.grouplens.org serving an ml-1m.zip of the golden input."""
    www = tmp_path / "www" / "movielens"
    www.mkdir(parents=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-1m/ratings.dat", "".join(x + "\n" for x in util.GOLDEN_RATINGS))
        z.writestr("ml-1m/movies.dat", "".join(x + "\n" for x in util.GOLDEN_MOVIES))
    (www / "ml-1m.zip").write_bytes(buf.getvalue())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/movielens", buf.getvalue()
    httpd.shutdown()
    httpd.server_close()


def _run(cmd: docs_util.DocCommand, **env: str) -> subprocess.CompletedProcess:
    environment = [f"{k}={v}" for k, v in docs_util.plain_env(**env).items()]
    return subprocess.run(["env", "-i", *environment, "bash", "-c", cmd.script()],
                          cwd=docs_util.ROOT, capture_output=True, text=True, timeout=600)


def test_the_walkthrough_covers_every_entry_point():
    text = "\n".join(c.command for c in WALKTHROUGH)
    for entry in ("beam_jobs.synthetic", "beam_jobs.pipeline", "--download=ml-1m",
                  "trainer.train", "--preset=tutorial", "trainer.recommend",
                  "beam_jobs.recommend_all"):
        assert entry in text, entry
    assert all(any(key in c.command for key in FILES) or c.expect for c in WALKTHROUGH)


@pytest.mark.slow
def test_using_it_runs_as_printed_in_a_plain_shell(tmp_path, grouplens):
    base_url, zip_bytes = grouplens
    out, cache = tmp_path / "seqrec", tmp_path / "cache"
    for doc_cmd in WALKTHROUGH:
        cmd = dataclasses.replace(doc_cmd, command=doc_cmd.command.replace("/tmp/seqrec",
                                                                           str(out)))
        env = {}
        if "--download=" in cmd.command:
            env = {download.BASE_URL_ENV: base_url, download.CACHE_ENV: str(cache)}
            # The served zip is not GroupLens' own: the SHA-256 check must refuse it, in one
            # line, writing nothing ...
            refused = _run(cmd, **env)
            assert refused.returncode == 2, refused.stderr[-2000:]
            assert "SHA-256" in refused.stderr.strip().splitlines()[-1]
            assert not os.path.exists(out / "ml1m-data" / schema.SUCCESS_FILE)
            # ... and a copy checked earlier (what a successful download leaves in the
            # cache) is what the printed command then uses.
            _seed_cache(cache, zip_bytes)
        result = _run(cmd, **env)
        assert docs_util.problems(cmd, result) == [], f"{cmd.source}: {cmd.command}"
        for key, files in FILES.items():
            if key in doc_cmd.command + " ":
                missing = [f for f in files if not os.path.exists(out / f)]
                assert not missing, f"{cmd.source}: {cmd.command} did not write {missing}"
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["test"]["top_10"] > metrics["popularity"]["top_10"]


def _seed_cache(cache, zip_bytes: bytes) -> None:
    """Unpacks the zip into the cache with the marker a checked download writes."""
    target = cache / "ml-1m"
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        z.extractall(cache)
    (target / download._MARKER).write_text(download.RELEASES["ml-1m"][1] + "\n")
    assert hashlib.sha256(zip_bytes).hexdigest() != download.RELEASES["ml-1m"][1]
