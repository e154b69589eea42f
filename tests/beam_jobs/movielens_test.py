"""Input formats: line validity, bulk == line-by-line parsing, byte ranges, movies, inputs."""
import os

import numpy as np
import pytest

from beam_jobs import movielens
from tests.beam_jobs import util

M = movielens


@pytest.mark.parametrize("line,fmt,expected", [
    (b"1::2::5::978300760", "dat", (1, 2, 5.0, 978300760)),
    (b"1,2,4.5,978300760", "csv", (1, 2, 4.5, 978300760)),
    (b"1::2::5::978300760\r", "dat", (1, 2, 5.0, 978300760)),
    (b"", "dat", M.BLANK),
    (b"   ", "dat", M.BLANK),
    (b"1::2::5", "dat", M.FIELD_COUNT),
    (b"1::2::5::9::9", "dat", M.FIELD_COUNT),
    (b"1,2,5,9", "dat", M.FIELD_COUNT),  # a csv line in a dat file
    (b"a::2::5::9", "dat", M.NON_NUMERIC),
    (b"1::2::five::9", "dat", M.NON_NUMERIC),
    (b"-1::2::5::9", "dat", M.NON_NUMERIC),
    (b"1::2::5::9\xff", "dat", M.UNDECODABLE),
    (b"0::2::5::9", "dat", M.OUT_OF_RANGE),
    (b"1::99999999999::5::9", "dat", M.OUT_OF_RANGE),
    (b"1::2::6::9", "dat", M.RATING_RANGE),
    (b"1::2::0::9", "dat", M.RATING_RANGE),
    (b"1,2,4.25,9", "csv", M.RATING_RANGE),
    (b"0" * 25 + b"1::2::5::9", "dat", (1, 2, 5.0, 9)),  # leading zeros: same value
    (b"1" * 30 + b"::2::5::9", "dat", M.OUT_OF_RANGE),
    (b"1::2::5::" + b"9" * 4050, "dat", M.OUT_OF_RANGE),  # int() would read it; no timestamp
    (b"1::2::5::9" + b"9" * 5000, "dat", M.OVERLONG),  # int() refuses > 4300 digits
    (b"1,2,4.5," + b"0" * 5000 + b"9", "csv", M.OVERLONG),
    (b"1::2::5::9\x00", "dat", M.NUL_BYTE),
    (b"1,2,\x004.5,9", "csv", M.NUL_BYTE),
])
def test_parse_rating_line(line, fmt, expected):
    assert M.parse_rating_line(line, fmt) == expected


def _columns(p):
    return (p.line.tolist(), p.user.tolist(), p.movie.tolist(), p.rating.tolist(),
            p.timestamp.tolist(), p.errors, p.num_lines)


@pytest.mark.parametrize("fmt", ["dat", "csv"])
def test_bulk_parse_equals_line_parse(fmt):
    rng = np.random.default_rng(1)
    sep = "::" if fmt == "dat" else ","
    lines = [sep.join([str(rng.integers(1, 50)), str(rng.integers(1, 3000)),
                       str(rng.integers(1, 11) / 2 if fmt == "csv" else rng.integers(1, 6)),
                       str(rng.integers(9e8, 1e9))]) for _ in range(500)]
    body = ("\n".join(lines) + "\n").encode()
    bulk = M._parse_bulk(body, fmt)
    assert bulk is not None  # clean input takes the fast path
    assert _columns(bulk) == _columns(M._parse_lines(body, fmt, 0))
    # One bad line sends the whole range down the exact path, which keeps every good line.
    bad = body.replace(lines[10].encode(), b"oops", 1)
    assert M._parse_bulk(bad, fmt) is None
    parsed = M.parse_ratings(bad, fmt, file_start=False)
    assert parsed.errors == [(10, M.FIELD_COUNT, b"oops")]
    assert parsed.num_lines == 500 and len(parsed.user) == 499


def test_bulk_parse_refuses_blank_lines_and_bad_ratings():
    assert M._parse_bulk(b"1::2::5::9\n\n1::3::5::9\n", "dat") is None
    assert M._parse_bulk(b"1::2::7::9\n", "dat") is None
    assert M._parse_bulk(b"1::2::5::9::\n", "dat") is None
    assert M._parse_bulk(b"1::2,3::5::9\n", "dat") is None
    # An overlong line pyarrow would read as valid ("::" -> "," shortens it below the
    # limit, too): the exact path must decide, and says overlong_line.
    long = b"1::2::5::" + b"0" * (M.MAX_LINE_BYTES - 9) + b"9"
    assert M._parse_bulk(b"1::3::5::9\n" + long + b"\n", "dat") is None
    assert M.parse_ratings(long + b"\n", "dat", file_start=True).errors == [
        (0, M.OVERLONG, long[:M.MAX_ERROR_TEXT])]
    # Leading zeros within the limit: both paths read the same numbers.
    zeros = b"1::0000000000000000000000002::5::9\n"
    assert _columns(M._parse_bulk(zeros, "dat")) == _columns(M._parse_lines(zeros, "dat", 0))


def test_a_huge_line_is_read_up_to_the_limit_and_numbered_right(tmp_path):
    lines = [b"1::2::3::4", b"x" * (3 << 20), b"5::6::5::7", b"9" * (M.MAX_LINE_BYTES + 1),
             b"8::9::1::2"]
    path = str(tmp_path / "r.dat")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    got, newlines = [], 0
    for start, end in M.plan_ranges(os.path.getsize(path), 1 << 20):
        text = M.read_range(path, start, end)
        assert len(text.body) < (1 << 20) + M.MAX_LINE_BYTES + 2  # never the whole line
        parsed = M.parse_ratings(text.body, "dat", file_start=start == 0)
        got += [(newlines + text.lines_before + i + 1, r) for i, r, _ in parsed.errors]
        newlines += text.newlines
    assert got == [(2, M.OVERLONG), (4, M.OVERLONG)]


def test_csv_header_is_not_a_line():
    p = M.parse_ratings(b"userId,movieId,rating,timestamp\n1,2,3.5,10\n", "csv", file_start=True)
    assert p.num_lines == 1 and p.line.tolist() == [1] and p.rating.tolist() == [3.5]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 13, 64, 10_000])
def test_byte_ranges_cover_every_line_once(tmp_path, chunk):
    lines = [b"1::2::3::4", b"", b"22::33::4::55", b"x" * 40, b"5::6::5::7", b"8::9::1::2"]
    for ending in (b"\n", b""):
        path = str(tmp_path / "r.dat")
        with open(path, "wb") as f:
            f.write(b"\n".join(lines) + ending)
        size = os.path.getsize(path)
        got, newlines = [], 0
        for start, end in M.plan_ranges(size, chunk):
            text = M.read_range(path, start, end)
            body_lines = text.body.split(b"\n")
            if body_lines and body_lines[-1] == b"":
                body_lines.pop()
            for i, line in enumerate(body_lines):
                # newlines before this range + lines before its first line + local index
                got.append((newlines + text.lines_before + i + 1, line))
            newlines += text.newlines
        assert got == list(enumerate(lines, start=1))


def test_parse_movies_dat_and_csv():
    table, errors, n = M.parse_movies(
        "\n".join(util.GOLDEN_MOVIES + ["x::Bad::Drama", "5::No genres::", "1::Dup (2000)::A",
                                        ""]).encode("latin-1") + b"\n", "dat")
    assert table.ids.tolist() == [1, 2, 3, 4, 5]
    assert table.years.tolist() == [1995, 1995, 0, 1995, 0]
    assert table.genres[4] == ""
    assert errors == [(5, M.NON_NUMERIC, b"x::Bad::Drama"), (7, M.DUPLICATE_MOVIE, b"1::Dup (2000)::A"),
                      (8, M.BLANK, b"")]
    assert n == 8
    csv_text = ('movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
                '2,Café (2001),(no genres listed)\n3,"Broken, quote,Drama\n').encode()
    table, errors, n = M.parse_movies(csv_text + b"4,Bad \xff (1999),Drama\n", "csv")
    assert table.titles == ["American President, The (1995)", "Café (2001)"]
    assert table.years.tolist() == [1995, 2001]
    assert [(e[0], e[1]) for e in errors] == [(4, M.FIELD_COUNT), (5, M.UNDECODABLE)]
    assert n == 4
    hostile = [b"1" * 5000 + b"::Huge id (1999)::Drama", b"2::Nul\x00 (1999)::Drama",
               b"3::Long genres (1999)::" + b"|".join([b"Drama"] * 1000), b"4::Fine::A",
               b"0" * 30 + b"5::Zeros::A", b"6" * 30 + b"::Big::A"]
    table, errors, n = M.parse_movies(b"\n".join(hostile) + b"\n", "dat")
    assert table.ids.tolist() == [4, 5]
    assert [(e[0], e[1]) for e in errors] == [(1, M.OVERLONG), (2, M.NUL_BYTE), (3, M.OVERLONG),
                                              (6, M.OUT_OF_RANGE)]


def test_movies_table_rows():
    table = M.MoviesTable([30, 10, 20], ["c", "a", "b"], ["", "", ""], [0, 0, 0])
    assert table.rows(np.array([10, 20, 30, 5, 31])).tolist() == [0, 1, 2, -1, -1]
    assert table.titles == ["a", "b", "c"]


def test_find_inputs_errors_name_the_file(tmp_path, golden_input):
    with pytest.raises(M.InputError, match="no such directory"):
        M.find_inputs(str(tmp_path / "missing"))
    empty_dir = tmp_path / "e"
    empty_dir.mkdir()
    with pytest.raises(M.InputError, match="neither ratings.dat"):
        M.find_inputs(str(empty_dir))
    d = util.write_input(tmp_path / "nomovies", util.GOLDEN_RATINGS, None)
    with pytest.raises(M.InputError, match=r"movies\.dat: movies file not found"):
        M.find_inputs(d)
    d = util.write_input(tmp_path / "empty", b"", util.GOLDEN_MOVIES)
    with pytest.raises(M.InputError, match=r"ratings\.dat: ratings file is empty"):
        M.find_inputs(d)
    d = util.write_input(tmp_path / "header", b"userId,movieId,rating,timestamp\n\n",
                         ["movieId,title,genres", "1,A,B"], fmt="csv")
    with pytest.raises(M.InputError, match=r"ratings\.csv: ratings file has no data lines"):
        M.find_inputs(d)
    found = M.find_inputs(golden_input)
    assert found.format == "dat" and found.ratings.endswith("ratings.dat")


def test_find_inputs_looks_past_blank_lines_for_data(tmp_path):
    # Blank lines over several read blocks: only a file of nothing else is empty input,
    # whatever its size (the csv header does not count as data).
    blanks = [""] * 70000 + [" \t"]
    for fmt, header, row in (("dat", [], "1::1::5::1"),
                             ("csv", ["userId,movieId,rating,timestamp"], "1,1,5,1")):
        movies = ["movieId,title,genres", "1,A,B"] if fmt == "csv" else util.GOLDEN_MOVIES
        d = util.write_input(tmp_path / f"{fmt}-data", header + blanks + [row], movies, fmt=fmt)
        assert M.find_inputs(d).format == fmt
        d = util.write_input(tmp_path / f"{fmt}-blank", header + blanks, movies, fmt=fmt)
        with pytest.raises(M.InputError, match=rf"ratings\.{fmt}: ratings file has no data "
                                               r"lines \(empty input"):
            M.find_inputs(d)
    d = util.write_input(tmp_path / "blank-movies", util.GOLDEN_RATINGS, ["", " "])
    with pytest.raises(M.InputError, match=r"movies\.dat: movies file has no data lines"):
        M.find_inputs(d)


def test_find_inputs_refuses_directories_in_place_of_files(tmp_path):
    d = util.write_input(tmp_path / "in", None, util.GOLDEN_MOVIES)
    os.mkdir(os.path.join(d, "ratings.dat"))
    with pytest.raises(M.InputError, match=r"ratings\.dat: is a directory, not a file"):
        M.find_inputs(d)
    with pytest.raises(M.InputError, match=r"--input_dir .*movies\.dat: is a file"):
        M.find_inputs(os.path.join(d, "movies.dat"))
