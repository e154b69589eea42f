"""Hostile input through the real job (issue #13): any title round-trips through vocab.tsv
and errors/, and huge fields, overlong lines and NUL bytes are set aside, never fatal."""

import pytest

from beam_jobs import movielens, schema
from tests.beam_jobs import util

# Every character str.splitlines splits on, tabs, quotes, backslashes, NUL, non-ASCII.
SPLITTERS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# Reasons, as metadata.json and errors/ name them.
OVERLONG, NUL_BYTE, OUT_OF_RANGE = "overlong_line", "nul_byte", "id_out_of_range"


def test_escape_field_round_trips_every_character():
    text = "".join(map(chr, range(0x110000)))  # lone surrogates included
    escaped = schema.escape_field(text)
    assert schema.unescape_field(escaped) == text
    assert len(escaped.splitlines()) == 1 and "\t" not in escaped
    escaped.encode("utf-8")  # writable as UTF-8
    for c in SPLITTERS + "\t\x00\\":
        assert schema.escape_field(c) != c
    assert schema.escape_field('Café "Noir", l\'été (1999)') == 'Café "Noir", l\'été (1999)'
    for tricky in ("\\", "\\\\n", "a\\tb", "\\x41", "\\u2028", "C:\\temp\\new"):
        assert schema.unescape_field(schema.escape_field(tricky)) == tricky
    # Files written before escaping: a backslash that starts no escape stays.
    assert schema.unescape_field("AC\\DC") == "AC\\DC"


def _ratings(movie_ids, fmt):
    sep = "::" if fmt == "dat" else ","
    lines = [f"{u}{sep}{m}{sep}4{sep}{t}" for u in (1, 2, 3)
             for t, m in enumerate(movie_ids, start=1)]
    return (["userId,movieId,rating,timestamp"] if fmt == "csv" else []) + lines


DAT_TITLES = {  # movie id -> title, as Latin-1 bytes can hold it
    1: "Tab\tinside (1990)", 2: "Quotes \"'\" (1991)", 3: "Back\\slash \\n \\x85 (1992)",
    4: "Controls \x0b\x0c\x1c\x1d\x1e (1993)", 5: "NEL \x85 byte (1994)",
    6: "CR \r inside (1995)", 7: "Café Noël (1996)", 8: "  padded  ", 9: "\x01\x7f\x9f",
}
CSV_TITLES = {
    1: "Line\u2028and\u2029paragraph (2001)", 2: "Comma, \"quoted\" (2002)",
    3: "NEL \x85 and VT \x0b (2003)", 4: "Tab\tand\\backslash (2004)", 5: "Amélie (2001)",
}


@pytest.mark.parametrize("fmt", ["dat", "csv"])
def test_any_title_round_trips_through_the_job(tmp_path, fmt):
    titles = DAT_TITLES if fmt == "dat" else CSV_TITLES
    if fmt == "dat":
        movies = b"".join(f"{i}::{t}::Drama|Tab\tgenre\n".encode("latin-1")
                          for i, t in titles.items())
        set_aside = [b"20::NUL \x00 title (1999)::Drama"]
    else:
        rows = [f'{i},"{t.replace(chr(34), chr(34) * 2)}",Drama|Tab\tgenre'
                for i, t in titles.items()]
        movies = ("movieId,title,genres\n" + "".join(r + "\n" for r in rows)).encode()
        set_aside = [b"20,NUL \x00 title (1999),Drama", b"21,Bad \xff\xfe bytes,Drama"]
    d = util.write_input(tmp_path / "in", _ratings(list(titles), fmt),
                         movies + b"".join(x + b"\n" for x in set_aside), fmt=fmt,
                         encoding="utf-8")
    out = tmp_path / "out"
    util.run_job(d, out, "--num_shards=2")
    text = (out / schema.VOCAB_FILE).read_bytes().decode("utf-8")
    # One line per movie plus the header, however lines are split.
    assert len(text.splitlines()) == len(text.split("\n")) - 1 == len(titles) + 1
    rows = schema.parse_vocab(text, "vocab.tsv")
    # Titles and genres are stripped of surrounding blanks when read (movielens).
    assert {r["movie_id"]: r["title"] for r in rows} == {i: t.strip() for i, t in titles.items()}
    assert {r["genres"] for r in rows} == {"Drama|Tab\tgenre"}
    assert util.data_dir_problems(util.output_files(out)) == []
    # errors/: the set-aside lines, exactly, one per line.
    errors = (out / schema.ERRORS_DIR / f"movies.{fmt}.tsv").read_text("utf-8")
    assert len(errors.splitlines()) == 1 + len(set_aside)
    fields = [line.split("\t") for line in errors.splitlines()[1:]]
    encoding = movielens.MOVIES_ENCODING[fmt]
    assert [schema.unescape_field(f[3]).encode(encoding, "surrogateescape")
            for f in fields] == set_aside
    assert [f[2] for f in fields] == [NUL_BYTE] + (
        ["undecodable"] if fmt == "csv" else [])


@pytest.mark.parametrize("fmt", ["dat", "csv"])
def test_huge_fields_overlong_lines_and_nul_bytes_are_set_aside(tmp_path, fmt):
    """Before: a field of more than 4,300 digits stopped the whole job with a ValueError
    (Python's int-string limit), from the ratings file or the movies file."""
    sep = "::" if fmt == "dat" else ","
    good = _ratings([1, 2, 3], fmt)
    huge = "9" * 5000
    bad_ratings = [  # (line, reason); each becomes one line of the ratings file
        (f"{huge}{sep}1{sep}4{sep}5", OVERLONG),
        (f"1{sep}2{sep}4{sep}{'0' * 4200}7", OVERLONG),
        (f"1{sep}2{sep}4{sep}{'9' * 4000}", OUT_OF_RANGE),
        (f"1{sep}3{sep}4{sep}7\x00", NUL_BYTE),
        ("x" * 300_000, OVERLONG),  # spans many read ranges
    ]
    header = ["movieId,title,genres"] if fmt == "csv" else []
    movies = header + [f"{i}{sep}Movie {i} (1999){sep}Drama" for i in (1, 2, 3)]
    bad_movies = [
        (f"{huge}{sep}Huge id{sep}Drama", OVERLONG),
        (f"4{sep}Long genres{sep}{'|'.join(['Drama'] * 1000)}", OVERLONG),
        (f"5{sep}Nul\x00{sep}Drama", NUL_BYTE),
    ]
    ratings = good[:2] + [line for line, _ in bad_ratings] + good[2:]
    d = util.write_input(tmp_path / "in", ratings, movies + [m for m, _ in bad_movies],
                         fmt=fmt, encoding="utf-8")
    out = tmp_path / "out"
    util.run_job(d, out, "--num_shards=2", "--max_bad_fraction=0.5", "--read_chunk_bytes=65536")
    meta = util.read_metadata(out)
    c = meta["counts"]
    assert c["malformed_by_reason"] == {OVERLONG: 3, OUT_OF_RANGE: 1,
                                        NUL_BYTE: 1}
    assert c["movies_malformed_by_reason"] == {OVERLONG: 2, NUL_BYTE: 1}
    assert c["kept_ratings"] == len(good) - (fmt == "csv") and c["movies"] == 3
    # The bad lines follow good[:2] in the ratings file, every good line in the movies file.
    for name, bad, offset in ((f"ratings.{fmt}", bad_ratings, 3),
                              (f"movies.{fmt}", bad_movies, len(movies) + 1)):
        lines = (out / schema.ERRORS_DIR / f"{name}.tsv").read_text("utf-8").splitlines()[1:]
        assert [(int(f[1]), f[2]) for f in (line.split("\t") for line in lines)] == [
            (offset + i, reason) for i, (_, reason) in enumerate(bad)], name
    assert util.data_dir_problems(util.output_files(out)) == []
