"""Fixtures shared by the beam_jobs tests (helpers live in tests/beam_jobs/util.py)."""
import pytest

from tests.beam_jobs import util


@pytest.fixture
def golden_input(tmp_path) -> str:
    """A directory holding the golden ratings.dat and movies.dat (util.GOLDEN_*)."""
    return util.write_input(tmp_path / "golden", util.GOLDEN_RATINGS, util.GOLDEN_MOVIES)
