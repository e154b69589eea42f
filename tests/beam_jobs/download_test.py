"""--download: a MovieLens-layout zip served from 127.0.0.1, SHA-256 checked and unpacked."""
import functools
import hashlib
import http.server
import io
import os
import threading
import zipfile

import pytest

from beam_jobs import download, pipeline, schema
from tests.beam_jobs import util


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www over HTTP on a free port; yields (base_url, www dir)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/movielens", www
    httpd.shutdown()
    httpd.server_close()


def _zip(www, name):
    """A zip laid out like GroupLens' (one top-level folder), holding the golden input."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{name}/ratings.dat", "".join(x + "\n" for x in util.GOLDEN_RATINGS))
        z.writestr(f"{name}/movies.dat", "".join(x + "\n" for x in util.GOLDEN_MOVIES))
        z.writestr(f"{name}/README", "test")
    (www / "movielens").mkdir(exist_ok=True)
    (www / "movielens" / f"{name}.zip").write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_recorded_checksums_are_sha256():
    assert set(download.RELEASES) == {"ml-1m", "ml-20m", "ml-25m", "ml-latest-small"}
    for size, sha in download.RELEASES.values():
        assert size > 0 and len(sha) == 64 and int(sha, 16) >= 0


def test_download_checks_sha256_and_unpacks(server, tmp_path):
    base, www = server
    sha = _zip(www, "ml-1m")
    cache = str(tmp_path / "cache")
    # The real ml-1m checksum does not match our test zip: refused, nothing unpacked.
    with pytest.raises(download.DownloadError, match="SHA-256 .* expected a6898adb"):
        download.download("ml-1m", cache, base)
    assert not os.path.exists(os.path.join(cache, "ml-1m"))
    got = download.download("ml-1m", cache, base, expected_sha256=sha)
    assert got == os.path.join(cache, "ml-1m")
    assert sorted(os.listdir(got)) == [".seqrec-sha256", "README", "movies.dat", "ratings.dat"]
    # Cached: a second call does not fetch (the server no longer has the file).
    os.remove(www / "movielens" / "ml-1m.zip")
    assert download.download("ml-1m", cache, base, expected_sha256=sha) == got
    with pytest.raises(download.DownloadError, match="fetching .*ml-1m.zip failed"):
        download.download("ml-1m", str(tmp_path / "other"), base, expected_sha256=sha)


def test_pipeline_download_flag(server, tmp_path, monkeypatch, capsys):
    base, www = server
    sha = _zip(www, "ml-latest-small")
    monkeypatch.setitem(download.RELEASES, "ml-latest-small", (1, sha))
    monkeypatch.setenv(download.BASE_URL_ENV, base)
    out = str(tmp_path / "out")
    pipeline.run(["--download=ml-latest-small", f"--input_dir={tmp_path / 'cache'}",
                  f"--output_dir={out}", "--max_context_length=2",
                  "--max_context_movie_genre_length=4"])
    meta = util.read_metadata(out)
    assert meta["flags"]["download"] == "ml-latest-small"
    assert meta["input"]["files"][0] == str(tmp_path / "cache" / "ml-latest-small" / "ratings.dat")
    # The golden input: user 7's 2 examples are its validation and test examples.
    assert meta["counts"]["validation_examples"] == 1 and os.path.exists(
        os.path.join(out, schema.SUCCESS_FILE))
    # A checksum mismatch stops the CLI before any pipeline with a message.
    monkeypatch.setitem(download.RELEASES, "ml-latest-small", (1, "0" * 64))
    rc = pipeline.main(["--download=ml-latest-small", f"--input_dir={tmp_path / 'c2'}",
                        f"--output_dir={tmp_path / 'out2'}"])
    assert rc == 2 and "refusing to use it" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out2")
