"""The job builds a valid Dataflow job offline (--dry_run=True): no submission, no GCS."""
import pytest

from beam_jobs import pipeline
from tests.beam_jobs import util


@pytest.mark.timeout(180)
def test_dataflow_dry_run_builds_the_job(monkeypatch):
    # Staging runs `python setup.py sdist` in the repo; the job graph is built offline.
    monkeypatch.chdir(util.ROOT)
    argv = [
        f"--input_dir={util.SAMPLE}", "--output_dir=gs://seqrec-test-bucket/data",
        "--runner=DataflowRunner", "--project=seqrec-test", "--region=us-central1",
        "--temp_location=gs://seqrec-test-bucket/tmp", "--setup_file=./setup.py",
        "--dry_run=True"]
    # The CLI too: no output_dir check or summary touches gs:// in a dry run.
    assert pipeline.main(argv) == 0
    result = pipeline.run(argv)
    job = result.job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for step in ("ReadMovies/ParseMovies", "ReadRatings/ParseRanges",
                 "ResolveLines/NumberLines", "BuildShards/GroupByShard",
                 "BuildShards/EncodeAndWrite", "WriteErrors/WriteErrorFile",
                 "WriteVocab/WriteVocabFile", "Finalize/WriteMetadataAndSuccess"):
        assert step in names, step
    staged = [d.role_payload for env in job.proto_pipeline.components.environments.values()
              for d in env.dependencies]
    # setup.py's sdist travels as workflow.tar.gz: workers pip-install beam_jobs from it.
    assert any(b"workflow.tar.gz" in p for p in staged)
    assert job.proto.name.startswith("beamapp-")
