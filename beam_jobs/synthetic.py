"""Deterministic MovieLens-format data at any scale, with real sequential structure.

    python -m beam_jobs.synthetic --output_dir=DIR [--num_users=6040 --num_movies=3883
        --ratings_per_user=165.6 --seed=0 --format=dat|csv --block_size=1000]

Writes `ratings.dat` + `movies.dat` (ML-1M: `::`-separated, Latin-1, no header) or
`ratings.csv` + `movies.csv` (ML-20M/25M: headers, RFC 4180 quoting, UTF-8, half-star
ratings). The defaults give the shape of MovieLens 1M: 6,040 users, 3,883 movies with ids in
1..3952 (with gaps), 1,000,209 ratings.

Generative model (every random draw comes from a numpy SeedSequence keyed by the seed and a
fixed purpose, so the output does not depend on --block_size):

* Movies (key (0,)): ids are a sorted random subset of 1..round(num_movies*3952/3883). Each has
  a year (mostly the 1990s, 1919..2000), 1-4 of the 18 ML-1M genres drawn with ML-1M's genre
  frequencies (the first drawn is its *primary* genre), a title made of words (some titles end
  in ", The" and need CSV quoting; some words are Latin-1 non-ASCII like "Café"), a Zipf-like
  popularity (weight 1/(rank+30)^0.9 over a random ranking; 4.6% of movies get weight 0
  and are only rated by chance, so ~3,700 of 3,883 are rated, like ML-1M) and a quality.
* Transition graph: each movie has K=4 successors, with weights 0.45/0.25/0.18/0.12. A
  successor has the same primary genre with probability 0.7; successors are drawn with weight
  popularity^0.5, so they are NOT simply the popular movies: a model of "what comes next"
  learns something a popularity ranking cannot.
* Ratings per user (key (1,)): 20 + lognormal (median 96, mean ~165 like ML-1M, heavy tail),
  capped at 60% of the movies, then scaled (under the cap) so the total is exactly
  round(num_users * ratings_per_user) (when the caps allow).
* Each user (key (2, user_id)) has two favourite genres and a start time (mostly mid/late
  2000, some later). The user walks a sequence of distinct movies in sessions: a new session
  starts with probability 0.12 per step. Inside a session, with probability 0.65 the next
  movie is a successor of the previous one (if not seen yet); otherwise, and at session
  starts, it is drawn by popularity within a favourite genre (probability 0.5) or overall,
  rejecting movies already rated (a few retries, then uniformly among the movies the user
  has not rated, never-rated movies excluded).
* Timestamps increase along the walk: inside a session the gap is 0 s with probability 0.2
  (rating several movies "at once": about a third of ratings share their timestamp with
  another of the same user, like ML-1M) or else ~1 + Exp(40) s; between sessions it is
  log-uniform in 5 min..115 days. Timelines that would pass 2003-02-28 are compressed into
  the ML-1M range (2000-04-25..2003-02-28) keeping their order.
* Rating: from ML-1M's mix (1: 5.6%, 2: 10.8%, 3: 26.1%, 4: 34.9%, 5: 22.6%) through a
  uniform that, with probability 0.4, follows the movie's quality (so movies have consistent
  ratings) and otherwise is the user's own draw; both are uniform, so the mix is kept. In CSV
  format a quarter of ratings lose half a star (0.5..5.0 like ML-20M).
* ratings.dat is grouped by user (ascending ids) but, like ML-1M, NOT time-ordered within a
  user: rows are shuffled within each user, so consumers must sort.

Memory: movies and per-user counts are held (O(num_users + num_movies)); ratings are made and
written one block of users at a time (O(block_size * (num_movies + ratings per block))).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from beam_jobs import options

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
# Number of ML-1M movies listing each genre (movies.dat), used as draw weights.
GENRE_COUNTS = (503, 283, 105, 251, 1200, 211, 127, 1603, 68, 44, 343, 114, 106, 471, 276, 492,
                143, 68)  # fmt: skip
RATING_MIX = (0.056, 0.108, 0.261, 0.349, 0.226)  # ML-1M share of ratings 1..5.
T_MIN = 956703932  # 2000-04-25, first ML-1M timestamp.
T_MAX = 1046454590  # 2003-02-28, last ML-1M timestamp.
ML1M_USERS, ML1M_MOVIES, ML1M_MAX_ID, ML1M_RATINGS = 6040, 3883, 3952, 1000209
MIN_RATINGS = 20
MAX_RATED_FRACTION = 0.6

# Walk parameters (see the module docstring).
SUCCESSOR_WEIGHTS = np.array([0.45, 0.25, 0.18, 0.12])
P_SUCCESSOR_SAME_GENRE = 0.7
P_NEW_SESSION = 0.12
P_FOLLOW = 0.65
P_TASTE = 0.5
P_ZERO_GAP = 0.2
P_RATING_FROM_QUALITY = 0.4
P_HALF_STAR = 0.25
RETRIES = 4
P_UNRATED = 1 - 3706 / 3883
# Columns of the per-user uniform matrix, one row per rating.
(C_BREAK, C_FOLLOW, C_SUCC, C_TASTE, C_FAV, C_POP) = range(6)
C_FALLBACK = C_POP + RETRIES
(C_RATING, C_RMODE, C_ZERO, C_GAP, C_HALF, C_SHUFFLE) = range(C_FALLBACK + 1, C_FALLBACK + 7)
NUM_COLUMNS = C_SHUFFLE + 1

KEY_MOVIES, KEY_COUNTS, KEY_USER = 0, 1, 2

WORDS = (
    "Love", "Night", "Man", "Story", "Dead", "City", "Time", "Girl", "King", "Dream", "River",
    "Summer", "Blood", "Star", "Heart", "Shadow", "House", "Road", "Game", "Secret", "World",
    "Fire", "Island", "Ghost", "Angel", "Money", "Wild", "Last", "Dark", "Little", "Big",
    "Lost", "Golden", "Silent", "Broken", "American", "French", "Midnight", "Winter", "Blue",
    "Café", "Amélie", "Señor", "Noël", "Müller", "Déjà Vu", "Ça", "Garçon", "Führer", "Zoë",
)  # fmt: skip
NOUNS = ("Kiss", "War", "Bride", "Hunter", "Return", "Journey", "Party", "Promise", "Truth",
         "Escape", "Legend", "Affair", "Machine", "Family", "Detective", "Heist")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
    """Flags of one generator run (all outputs are a pure function of these), each declared
    once (options.option): the command line derives from these fields, and a value the
    generator cannot use raises options.FlagError ("--flag: problem") when a Config is made."""

    num_users: int = options.option(ML1M_USERS, check=options.at_least(1))
    num_movies: int = options.option(
        ML1M_MOVIES, check=options.at_least(
            math.ceil(MIN_RATINGS / MAX_RATED_FRACTION),
            f"every user rates >= {MIN_RATINGS} distinct movies"))
    ratings_per_user: float = options.option(
        ML1M_RATINGS / ML1M_USERS, "mean ratings per user (default: ML-1M's 1,000,209 / 6,040)",
        check=options.at_least(MIN_RATINGS))
    seed: int = options.option(0)
    format: str = options.option("dat", choices=("dat", "csv"))
    block_size: int = options.option(
        1000, "users generated at once (memory only: output does not depend on it)",
        check=options.at_least(1))

    __post_init__ = options.validate


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@dataclasses.dataclass
class Movies:
    """Movie table; index i (0-based) is internal, `ids[i]` the MovieLens id."""

    ids: np.ndarray  # [M] int64, ascending
    titles: list  # [M] str, with " (YYYY)"
    genres: list  # [M] str, "|"-joined, alphabetical
    primary: np.ndarray  # [M] int, index into GENRES
    quality: np.ndarray  # [M] float in [0, 1)
    successors: np.ndarray  # [M, K] int, internal indices
    pop_cdf: np.ndarray  # [M] cumulative popularity, last = 1
    # Popularity within each primary genre, concatenated: section g holds values in (g, g+1].
    genre_cdf: np.ndarray  # [M]
    genre_members: np.ndarray  # [M] internal index of each genre_cdf entry
    genre_weights: np.ndarray  # [18] share of movies by primary genre
    ratable: np.ndarray  # [M] bool, popularity > 0


def _genre_sections(primary: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre cumulative weights, genre g shifted into (g, g+1], and their movie indices."""
    members = np.argsort(primary, kind="stable")
    cdf = np.empty(len(members))
    start = 0
    for g in range(len(GENRES)):
        end = start + int((primary == g).sum())
        if end > start:
            c = np.cumsum(weight[members[start:end]])
            if c[-1] <= 0:  # every movie of the genre is unrated: draw them evenly
                c = np.arange(1.0, end - start + 1)
            cdf[start:end] = g + c / c[-1]
            cdf[end - 1] = g + 1.0  # Exactly: a draw g+u, u<1, always lands in section g.
        start = end
    return cdf, members


def _draw_in_genre(cdf, members, genre, u):
    """Movies drawn by weight within `genre` (arrays of the same shape as u)."""
    return members[np.minimum(np.searchsorted(cdf, genre + u, side="right"), len(members) - 1)]


def make_movies(cfg: Config) -> Movies:
    rng = _rng(cfg.seed, KEY_MOVIES)
    m = cfg.num_movies
    max_id = max(m, round(m * ML1M_MAX_ID / ML1M_MOVIES))
    ids = np.sort(rng.choice(max_id, size=m, replace=False) + 1).astype(np.int64)
    years = np.clip(2000 - np.floor(rng.exponential(9.0, m)), 1919, 2000).astype(int)
    gw = np.array(GENRE_COUNTS, float) / sum(GENRE_COUNTS)
    n_genres = np.minimum(rng.geometric(0.55, m), 4)
    primary = np.empty(m, int)
    genres, titles = [], []
    for i in range(m):
        gs = rng.choice(len(GENRES), size=n_genres[i], replace=False, p=gw)
        primary[i] = gs[0]
        genres.append("|".join(sorted(GENRES[g] for g in gs)))
        a, b = WORDS[rng.integers(len(WORDS))], NOUNS[rng.integers(len(NOUNS))]
        style = rng.integers(6)
        name = (f"{a} {b}", f"{b} of the {a}", f"{a} {b}, The", f"{a}, {b}", f"{a}",
                f"{b}, A")[style]  # fmt: skip
        titles.append(f"{name} ({years[i]})")
    rank = rng.permutation(m)
    pop = 1.0 / (rank + 30.0) ** 0.9
    quality = rng.random(m)
    # Like ML-1M (3,706 of 3,883 movies rated), a few movies are (almost) never rated.
    pop[rng.random(m) < P_UNRATED] = 0.0
    pop_cdf = np.cumsum(pop) / pop.sum()
    pop_cdf[-1] = 1.0
    genre_cdf, genre_members = _genre_sections(primary, pop)
    # Successors: drawn with popularity^0.5 so "next" differs from "most popular".
    s_cdf, s_members = _genre_sections(primary, np.sqrt(pop))
    s_all = np.cumsum(np.sqrt(pop))
    s_all /= s_all[-1]
    k = len(SUCCESSOR_WEIGHTS)
    same = rng.random((m, k)) < P_SUCCESSOR_SAME_GENRE
    u = rng.random((m, k))
    in_genre = _draw_in_genre(s_cdf, s_members, primary[:, None], u)
    anywhere = np.minimum(np.searchsorted(s_all, u, side="right"), m - 1)
    successors = np.where(same, in_genre, anywhere)
    self_loop = successors == np.arange(m)[:, None]
    successors[self_loop] = (successors[self_loop] + 1) % m  # may hit an unrated movie: rare
    genre_weights = np.bincount(primary, weights=pop > 0, minlength=len(GENRES))
    genre_weights /= max(genre_weights.sum(), 1.0)
    return Movies(ids, titles, genres, primary, quality, successors, pop_cdf, genre_cdf,
                  genre_members, genre_weights, pop > 0)


def ratings_counts(cfg: Config) -> np.ndarray:
    """[num_users] ratings per user: >= 20, heavy-tailed, summing to the target if possible."""
    rng = _rng(cfg.seed, KEY_COUNTS)
    cap = int(MAX_RATED_FRACTION * cfg.num_movies)
    excess = rng.lognormal(math.log(76.0), 1.14, cfg.num_users)
    target = round(cfg.num_users * cfg.ratings_per_user) - MIN_RATINGS * cfg.num_users
    # Scale the excess so that, after capping, it sums to the target (bisection on the scale).
    lo, hi = 0.0, max(target, 1) / excess.min()
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(excess * mid, cap - MIN_RATINGS).sum() < target else (lo, mid)
    scaled = np.minimum(excess * hi, cap - MIN_RATINGS)
    counts = np.floor(scaled).astype(np.int64)
    # Hand out the rounding remainder by largest fractional part (stable, deterministic).
    short = target - int(counts.sum())
    room = counts < cap - MIN_RATINGS
    order = np.argsort(-(scaled - counts), kind="stable")
    order = order[room[order]][: max(short, 0)]
    counts[order] += 1
    return counts + MIN_RATINGS


def _user_draws(cfg: Config, user_id: int, n: int):
    rng = _rng(cfg.seed, KEY_USER, user_id)
    u = rng.random((n, NUM_COLUMNS))
    fav = rng.random(2)
    start = rng.random(2)
    return u, fav, start


def _walk(movies: Movies, u: np.ndarray, offsets: np.ndarray, counts: np.ndarray,
          favs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walks all users of a block at once, one step per loop iteration.

    Args:
      u: [R, C] uniforms, user b's rows at offsets[b]..offsets[b]+counts[b].
      offsets, counts: [B]; users must be sorted by count, descending.
      favs: [B, 2] favourite genres.
    Returns:
      ([R] internal movie index, [R] bool "starts a session").
    """
    b, m = len(counts), len(movies.ids)
    seen = np.zeros((b, m), bool)
    picked = np.empty(len(u), np.int64)
    starts = np.zeros(len(u), bool)
    prev = np.zeros(b, np.int64)
    succ_cdf = np.cumsum(SUCCESSOR_WEIGHTS)
    succ_cdf[-1] = 1.0
    for t in range(int(counts.max()) if b else 0):
        active = int(np.searchsorted(-counts, -t, side="left"))  # users with counts > t
        rows = offsets[:active] + t
        ut = u[rows]
        ar = np.arange(active)
        start = (ut[:, C_BREAK] < P_NEW_SESSION) | (t == 0)
        k = np.searchsorted(succ_cdf, ut[:, C_SUCC], side="right")
        cand = movies.successors[prev[:active], np.minimum(k, len(succ_cdf) - 1)]
        ok = ~start & (ut[:, C_FOLLOW] < P_FOLLOW) & ~seen[ar, cand]
        choice = np.where(ok, cand, -1)
        taste = ut[:, C_TASTE] < P_TASTE
        genre = np.where(ut[:, C_FAV] < 0.5, favs[:active, 0], favs[:active, 1])
        for r in range(RETRIES):
            need = np.flatnonzero(choice < 0)
            if not len(need):
                break
            ur = ut[need, C_POP + r]
            by_genre = _draw_in_genre(movies.genre_cdf, movies.genre_members, genre[need], ur)
            overall = np.minimum(np.searchsorted(movies.pop_cdf, ur, side="right"), m - 1)
            cand = np.where(taste[need], by_genre, overall)
            fresh = ~seen[need, cand]
            choice[need[fresh]] = cand[fresh]
        for j in np.flatnonzero(choice < 0):  # Rare: heavy users who saw the likely ones.
            unseen = np.flatnonzero(~seen[j] & movies.ratable)
            if not len(unseen):
                unseen = np.flatnonzero(~seen[j])
            choice[j] = unseen[int(ut[j, C_FALLBACK] * len(unseen))]
        seen[ar, choice] = True
        picked[rows] = choice
        starts[rows] = start
        prev[:active] = choice
    return picked, starts


def make_block(cfg: Config, movies: Movies, first_user: int, counts: np.ndarray):
    """Ratings of users first_user..first_user+len(counts)-1.

    Returns (user_ids, movie_ids, stars, timestamps, half): [R] arrays grouped by user in
    ascending id order, shuffled within each user; `half` marks half-star drops (csv).
    """
    users = np.arange(first_user, first_user + len(counts))
    draws = [_user_draws(cfg, int(user), int(n)) for user, n in zip(users, counts, strict=True)]
    fav_p = np.cumsum(movies.genre_weights)
    fav_p /= fav_p[-1]
    favs = np.array([np.searchsorted(fav_p, d[1], side="right") for d in draws]).reshape(-1, 2)
    favs = np.minimum(favs, len(GENRES) - 1)
    order = np.argsort(-counts, kind="stable")  # Longest first: active users are a prefix.
    sorted_counts = counts[order]
    u = np.concatenate([draws[i][0] for i in order]) if len(order) else np.zeros((0, NUM_COLUMNS))
    offsets = np.concatenate([[0], np.cumsum(sorted_counts)[:-1]]).astype(np.int64)
    picked, starts = _walk(movies, u, offsets, sorted_counts, favs[order])
    owner = np.repeat(np.arange(len(order)), sorted_counts)  # Position in `order`.

    # Timestamps: per-rating gaps, cumulated per user.
    within = np.where(u[:, C_ZERO] < P_ZERO_GAP, 0.0, 1.0 + np.floor(-np.log1p(-u[:, C_GAP]) * 40))
    between = np.floor(10 ** (2.5 + 4.5 * u[:, C_GAP]))
    gap = np.where(starts, between, within)
    gap[offsets] = 0.0
    elapsed = np.cumsum(gap)
    elapsed -= np.repeat(elapsed[offsets], sorted_counts)
    s = np.array([draws[i][2] for i in order]).reshape(-1, 2)
    # Most users start in 2000 (like ML-1M); 15% start any time until 2002-06.
    span = np.where(s[:, 0] < 0.85, 975e6 - T_MIN, 1023e6 - T_MIN)
    t0 = T_MIN + np.floor(s[:, 1] * span)
    total = elapsed[offsets + sorted_counts - 1]
    squeeze = np.minimum(1.0, (T_MAX - t0) / np.maximum(total, 1.0))
    ts = (t0[owner] + np.floor(elapsed * squeeze[owner])).astype(np.int64)

    # Ratings: ML-1M mix through a uniform that sometimes follows the movie's quality.
    uq = (movies.quality[picked] + 0.2 * (u[:, C_RATING] - 0.5)) % 1.0
    ur = np.where(u[:, C_RMODE] < P_RATING_FROM_QUALITY, uq, u[:, C_RATING])
    mix = np.cumsum(RATING_MIX)
    mix[-1] = 1.0
    stars = np.minimum(np.searchsorted(mix, ur, side="right"), 4) + 1
    half = u[:, C_HALF] < P_HALF_STAR

    # Back to ascending user order, shuffled within each user.
    user_of_row = order[owner]
    rows = np.lexsort((u[:, C_SHUFFLE], user_of_row))
    return (users[user_of_row[rows]], movies.ids[picked[rows]], stars[rows], ts[rows],
            half[rows])


def _write_movies(cfg: Config, movies: Movies, path: str) -> None:
    if cfg.format == "dat":
        with open(path, "w", encoding="latin-1", newline="\n") as f:
            for i, t, g in zip(movies.ids.tolist(), movies.titles, movies.genres, strict=True):
                f.write(f"{i}::{t}::{g}\n")
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["movieId", "title", "genres"])
            w.writerows(zip(movies.ids.tolist(), movies.titles, movies.genres, strict=True))


def _format_ratings(cfg: Config, users, ids, stars, ts, half) -> str:
    if cfg.format == "dat":
        rows = zip(users.tolist(), ids.tolist(), stars.tolist(), ts.tolist(), strict=True)
        return "".join([f"{a}::{b}::{c}::{d}\n" for a, b, c, d in rows])
    value = stars - 0.5 * half
    rows = zip(users.tolist(), ids.tolist(), value.tolist(), ts.tolist(), strict=True)
    return "".join([f"{a},{b},{c:.1f},{d}\n" for a, b, c, d in rows])


def generate(cfg: Config, output_dir: str) -> dict:
    """Writes the ratings and movies files into output_dir; returns counts."""
    os.makedirs(output_dir, exist_ok=True)
    movies = make_movies(cfg)
    counts = ratings_counts(cfg)
    ext = cfg.format
    _write_movies(cfg, movies, os.path.join(output_dir, f"movies.{ext}"))
    encoding = "latin-1" if ext == "dat" else "utf-8"
    rated = np.zeros(len(movies.ids), bool)
    ratings_path = os.path.join(output_dir, f"ratings.{ext}")
    # Write to a temp name and rename: a crash never leaves a plausible-looking half file.
    with open(ratings_path + ".tmp", "w", encoding=encoding, newline="\n") as f:
        if ext == "csv":
            f.write("userId,movieId,rating,timestamp\n")
        for start in range(0, cfg.num_users, cfg.block_size):
            block = make_block(cfg, movies, start + 1, counts[start : start + cfg.block_size])
            rated[np.searchsorted(movies.ids, block[1])] = True
            f.write(_format_ratings(cfg, *block))
    os.replace(ratings_path + ".tmp", ratings_path)
    return {"users": cfg.num_users, "movies": len(movies.ids), "rated_movies": int(rated.sum()),
            "ratings": int(counts.sum()), "files": [f"ratings.{ext}", f"movies.{ext}"]}


PROG = "python -m beam_jobs.synthetic"


def parse_args(argv: list[str], prog: str = PROG) -> tuple[str, Config]:
    """(output_dir, Config) of a command line. Strict: no abbreviations; an unknown flag
    or a bad value raises options.FlagError naming it (and the closest flag); --help
    prints the help and raises SystemExit(0)."""
    p = options.StrictParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", required=True)
    options.add_options(p, Config)
    args, unknown = p.parse_known_args(argv)
    options.refuse_unknown(unknown, options.flag_names(p), prog)
    out = args.output_dir
    del args.output_dir
    return out, Config(**vars(args))


def main(argv: list[str] | None = None) -> int:
    """The command line: `python -m beam_jobs.synthetic` and the seqrec-synthetic console
    script (argv None: sys.argv[1:]). Prints the counts as one JSON line on stdout.
    Returns the exit status: 0 done (or --help), 2 a refused flag, value or output_dir
    (one line on stderr naming it)."""
    prog = options.prog("beam_jobs.synthetic") if argv is None else PROG
    try:
        out, cfg = parse_args(sys.argv[1:] if argv is None else list(argv), prog)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except ValueError as e:  # options.FlagError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if os.path.exists(out) and not os.path.isdir(out):
            raise NotADirectoryError(0, "is a file, not a directory")
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        print(f"error: --output_dir {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    t = time.perf_counter()
    stats = generate(cfg, out)
    stats["seconds"] = round(time.perf_counter() - t, 2)
    print(json.dumps({"output_dir": out, **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
