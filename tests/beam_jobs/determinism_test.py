"""Same input + flags => byte-identical output, in-process and with 2 worker processes."""
import os
import shutil

import pytest

from tests.beam_jobs import util


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("extra", [[], ["--context_before_label_second", "--nolow_ratings_in_context"]])
def test_in_process_and_multi_processing_write_identical_bytes(tmp_path, monkeypatch, extra):
    # Workers are fresh processes: they must import beam_jobs from the repo (no
    # save_main_session), wherever pytest was started.
    monkeypatch.setenv("PYTHONPATH", util.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    src = tmp_path / "in"
    shutil.copytree(util.SAMPLE, src)
    with open(src / "ratings.dat", "ab") as f:  # a few lines to set aside, too
        f.write(b"1::2::x::3\n\n300::99999::4::5\n")
    flags = ["--split=random", "--num_shards=3", "--max_bad_fraction=0.01", *extra]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    util.run_job(src, a, *flags)
    # Different read ranges and two worker processes must not change a byte.
    util.run_job(src, b, *flags, "--read_chunk_bytes=100000", "--direct_num_workers=2",
                 "--direct_running_mode=multi_processing")
    files_a, files_b = util.output_files(a), util.output_files(b)
    assert sorted(files_a) == sorted(files_b)
    assert len([n for n in files_a if n.startswith("train/")]) == 3
    assert len([n for n in files_a if n.startswith("users/")]) == 3  # users/ too
    for name in files_a:
        assert files_a[name] == files_b[name], name
    meta = util.read_metadata(a)
    assert meta["counts"]["malformed"] == 2 and meta["counts"]["unknown_movie"] == 1
