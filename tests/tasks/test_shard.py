import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from nightcast.tasks.serving.shard import plan_shards, shard_of


def test_shards_are_stable_known_values_and_cover_every_id_once():
    ids = pl.Series([f"s{i}" for i in range(1000)])
    shards = shard_of(ids, 4)
    assert shards.dtype == pl.UInt32 and shards.min() >= 0 and shards.max() <= 3
    # fixed values: a change of hash breaks every staged or partially-run shard plan
    assert shard_of(pl.Series(["s0", "s1", "s2", "a/b"]), 7).to_list() == [0, 5, 3, 2]
    parts = plan_shards(pl.DataFrame({"series_id": pl.concat([ids, ids])}), 4)  # repeats count once
    assert sorted(sum(parts, [])) == sorted(ids.to_list())
    assert min(len(p) for p in parts) > 200  # roughly balanced
    assert plan_shards(pl.DataFrame({"series_id": ids}), 1) == [sorted(ids.to_list())]


def test_same_shards_in_another_process():
    code = ("import polars as pl; from nightcast.tasks.serving.shard import shard_of; "
            "print(shard_of(pl.Series([f's{i}' for i in range(50)]), 5).to_list())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=".")
    assert eval(out.stdout) == shard_of(pl.Series([f"s{i}" for i in range(50)]), 5).to_list()


def test_numeric_ids_hash_as_their_text_and_bad_counts_fail():
    assert shard_of(pl.Series([12, 13]), 3).to_list() == shard_of(pl.Series(["12", "13"]), 3).to_list()
    with pytest.raises(ValueError):
        shard_of(pl.Series(["a"]), 0)




def test_staging_of_killed_runs_is_swept_once_old_and_only_then(tmp_path):
    import datetime as dt

    from nightcast.tasks.serving.sharded import LEGACY_STAGING, STAGING, staging_run, sweep_staging
    from nightcast.tasks.ops.storage import open_store

    st = open_store(str(tmp_path))
    now = dt.datetime(2026, 11, 23, 12, tzinfo=dt.timezone.utc)
    old = staging_run("run-a", now - dt.timedelta(hours=13))
    young = staging_run("run-b", now - dt.timedelta(hours=1))
    for run in (old, young, "not-ours"):
        st.write_bytes(f"{STAGING}{run}/input/00000.parquet", b"x")
        st.write_bytes(f"{STAGING}{run}/parts/2026-11-22/00000.parquet", b"x")
    st.write_bytes("forecasts/model=lstm/as_of=2026-11-22/forecasts.parquet", b"keep")
    older = staging_run("run-live", now - dt.timedelta(days=3))  # a long backfill, still going
    for part in ("input/00000.parquet", "parts/2026-11-22/00000.parquet"):
        st.write_bytes(f"{STAGING}{older}/{part}", b"x")
    legacy = staging_run("run-0", now - dt.timedelta(days=9))  # left under forecasts/ by an earlier version
    st.write_bytes(f"{LEGACY_STAGING}{legacy}/input/00000.parquet", b"x")
    assert not STAGING.startswith("forecasts/")  # a reader of forecasts/** never meets staging
    asked: list[str] = []
    assert sweep_staging(st, now=now, alive=lambda run: asked.append(run) or run.endswith("run-live")) == [legacy, old]
    assert st.list(LEGACY_STAGING) == []
    assert sorted(asked) == sorted([legacy, old, older])  # young folders are never asked about
    assert sum(k.startswith(f"{STAGING}{older}/") for k in st.list(STAGING)) == 2
    left = st.list(STAGING)
    assert not any(k.startswith(f"{STAGING}{old}/") for k in left)
    assert sum(k.startswith(f"{STAGING}{young}/") for k in left) == 2
    assert sum(k.startswith(f"{STAGING}not-ours/") for k in left) == 2
    assert st.exists("forecasts/model=lstm/as_of=2026-11-22/forecasts.parquet")


def test_shard_layout_opens_only_the_shards_own_files(tmp_path):
    """After ``write_shard_layout``, a shard's read never reads another shard's rows: with shards 1 and 3
    replaced by garbage, shard 2 still reads, and a whole read fails. (The first file's footer gives
    polars the schema, so shard 0 stays intact.)"""
    from nightcast.tasks.data.ingest import IngestError, load_observations
    from nightcast.tasks.data.sample import make_sample
    from nightcast.tasks.serving.shard import write_shard_layout

    raw = make_sample(n_series=12, days=5, seed=1)
    raw.write_csv(tmp_path / "obs.csv")
    out = write_shard_layout(str(tmp_path / "obs.csv"), str(tmp_path / "lay"), 4)
    assert (out["rows"], out["series"]) == (raw.height, 12)
    whole = load_observations(str(tmp_path / "lay"))
    as_csv = load_observations(str(tmp_path / "obs.csv"))
    assert whole.sort(whole.columns).equals(as_csv.sort(as_csv.columns))  # same columns, text kept as written
    mine = load_observations(str(tmp_path / "lay"), shard=(2, 4))
    expected = set(plan_shards(pl.DataFrame({"series_id": raw["series_id"]}), 4)[2])
    assert set(mine["series_id"].unique().to_list()) == expected and expected
    for f in (tmp_path / "lay").rglob("*.parquet"):
        if "shard=1" in str(f) or "shard=3" in str(f):
            f.write_bytes(b"not parquet")
    assert load_observations(str(tmp_path / "lay"), shard=(2, 4)).equals(mine)
    with pytest.raises(IngestError):
        load_observations(str(tmp_path / "lay"))
    with pytest.raises(IngestError, match="already holds files"):
        write_shard_layout(str(tmp_path / "obs.csv"), str(tmp_path / "lay"), 4)


def test_a_layout_partitioned_again_for_another_count_keeps_every_row_in_input_order(tmp_path):
    """The streaming rewrite keeps each shard's rows in input order, and re-partitioning a layout replaces
    its shard columns (the old ones would name the wrong folder)."""
    from nightcast.tasks.data.ingest import load_observations
    from nightcast.tasks.serving.shard import write_shard_layout

    rng = np.random.default_rng(3)
    raw = pl.DataFrame({"series_id": [f"s{i % 37:02d}" for i in range(2_000)],
                        "timestamp": [f"2024-01-{1 + i // 37 % 28:02d} {i % 24:02d}:00" for i in range(2_000)],
                        "target": rng.normal(size=2_000).round(3).astype(str)})
    raw.write_csv(tmp_path / "obs.csv")
    write_shard_layout(str(tmp_path / "obs.csv"), str(tmp_path / "five"), 5)
    out = write_shard_layout(str(tmp_path / "five"), str(tmp_path / "three"), 3)
    assert (out["rows"], out["series"]) == (2_000, 37)
    ids = pl.DataFrame({"series_id": raw["series_id"].unique()})

    def written(layout: str, n: int, k: int) -> pl.DataFrame:
        files = sorted((tmp_path / layout / f"nshards={n}" / f"shard={k}").glob("*.parquet"))
        return pl.concat([pl.read_parquet(f) for f in files])

    for k, series in enumerate(plan_shards(ids, 5)):  # from the CSV: each shard's rows in input order
        assert written("five", 5, k).equals(raw.filter(pl.col("series_id").is_in(series)))
    for k, series in enumerate(plan_shards(ids, 3)):  # from the layout: the old shard columns replaced
        got = written("three", 3, k)
        assert set(got.columns) == set(raw.columns)
        assert sorted(load_observations(str(tmp_path / "three"), shard=(k, 3))["series_id"].unique()) == series
        mine = raw.filter(pl.col("series_id").is_in(series))
        assert got.select(mine.columns).sort(mine.columns).equals(mine.sort(mine.columns))


def test_a_layout_for_another_count_or_another_hash_is_refused_not_read_short(tmp_path):
    from nightcast.tasks.data.ingest import IngestError, load_series_ids
    from nightcast.tasks.data.sample import make_sample
    from nightcast.tasks.serving.shard import ShardLayoutError, plan_shards, write_shard_layout

    raw = make_sample(n_series=12, days=5, seed=1)
    raw.write_csv(tmp_path / "obs.csv")
    write_shard_layout(str(tmp_path / "obs.csv"), str(tmp_path / "lay"), 4)
    ids = load_series_ids(str(tmp_path / "lay"))
    assert plan_shards(ids, 4) == plan_shards(pl.DataFrame({"series_id": raw["series_id"]}), 4)
    with pytest.raises(ShardLayoutError, match=r"for \[4\] shard\(s\), and this run asks for 3"):
        plan_shards(ids, 3, "lay")
    # another writer's hash: shard 1's file moved into shard 2's folder
    moved = next((tmp_path / "lay" / "nshards=4" / "shard=1").glob("*.parquet"))
    moved.rename(tmp_path / "lay" / "nshards=4" / "shard=2" / "other.parquet")
    with pytest.raises(ShardLayoutError, match="sit in another shard's folder.*belongs in shard=1"):
        plan_shards(load_series_ids(str(tmp_path / "lay")), 4, "lay")
    # a user's own column named `shard` is data, not a layout key
    pl.DataFrame({"series_id": ["a", "b"], "timestamp": ["2026-01-01", "2026-01-01"], "target": [1.0, 2.0],
                  "shard": [7, 8]}).write_parquet(tmp_path / "own.parquet")
    assert load_series_ids(str(tmp_path / "own.parquet")).columns == ["series_id"]
    # rows with no id fit no shard: partition refuses them, naming the rows
    raw.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(" ")).otherwise(pl.col("series_id"))
                     .alias("series_id")).write_csv(tmp_path / "blank.csv")
    with pytest.raises(IngestError, match=r"1 row\(s\) .* have no 'series_id' .*\[3\]"):
        write_shard_layout(str(tmp_path / "blank.csv"), str(tmp_path / "lay2"), 4)


def test_a_sample_is_whole_shards_of_the_layout_and_the_same_hash_elsewhere(tmp_path, monkeypatch):
    """``sample``: the series whose stable hash bucket is below share x n: on the layout whole shards, whose
    files alone are opened for the rows (the others replaced by garbage still read); on CSV the same rule
    over 1,000 buckets; every row of a sampled series, nothing of the rest, the same on every call."""
    from nightcast.tasks.data import ingest
    from nightcast.tasks.data.sample import make_sample
    from nightcast.tasks.serving.shard import sample_bucket_of, write_shard_layout

    from nightcast.tasks.serving.shard import LAYOUT_MANIFEST

    raw = make_sample(n_series=40, days=5, seed=2)
    raw.write_csv(tmp_path / "obs.csv")
    write_shard_layout(str(tmp_path / "obs.csv"), str(tmp_path / "lay"), 10)
    shards = plan_shards(pl.DataFrame({"series_id": raw["series_id"]}), 10)
    ids = sorted({*shards[0], *shards[1], *shards[2]})
    # the layout's manifest counts the series: no id is read, the sampled folders are read whole
    assert ingest.sample_of(str(tmp_path / "lay"), ingest.ColumnMap(), 0.3) == (None, 3, 10)
    from_manifest = ingest.load_observations(str(tmp_path / "lay"), sample=0.3)
    (tmp_path / "lay" / LAYOUT_MANIFEST).unlink()  # another writer's layout: the ids are read
    assert ingest.sample_of(str(tmp_path / "lay"), ingest.ColumnMap(), 0.3) == (ids, 3, 10)
    got = ingest.load_observations(str(tmp_path / "lay"), sample=0.3)
    assert got.equals(from_manifest)
    expected = raw.filter(pl.col("series_id").is_in(ids))
    assert got.height == expected.height and sorted(got["series_id"].unique().to_list()) == ids
    k, n = 3, 10
    monkeypatch.setattr(ingest, "sample_of", lambda *a: (ids, k, n))  # the id scan reads every shard's ids
    for f in (tmp_path / "lay").rglob("*.parquet"):
        if not any(f"shard={s}/" in str(f) for s in range(3)):
            f.write_bytes(b"not parquet")
    assert ingest.load_observations(str(tmp_path / "lay"), sample=0.3).equals(got)
    monkeypatch.undo()
    csv = ingest.load_observations(str(tmp_path / "obs.csv"), sample=0.5)
    unique = raw["series_id"].unique()
    want = sorted(unique.filter(sample_bucket_of(unique) < 500).to_list())
    assert sorted(csv["series_id"].unique().to_list()) == want and 0 < len(want) < 40
    assert csv.height == raw.filter(pl.col("series_id").is_in(want)).height
    assert ingest.load_observations(str(tmp_path / "obs.csv"), sample=0.5).equals(csv)  # the same every call


def test_a_sample_that_picks_no_series_is_refused_naming_the_share():
    from nightcast.tasks.data.ingest import IngestError, load_observations

    with pytest.raises(IngestError, match=r"a sample of 0.15 of the series of sample:// picks none of its 5 series"):
        load_observations("sample://", sample=0.15)  # 5 series, none in the first 150 of 1,000 buckets
    assert load_observations("sample://", sample=0.5)["series_id"].n_unique() == 3


def test_a_sample_that_picks_only_empty_shards_of_a_manifest_layout_is_refused(tmp_path):
    """On a layout with a manifest the counts come from it (no id read): a share whose shards are all empty
    is refused as on any input, naming the share, the total and the shards."""
    from nightcast.tasks.data.ingest import IngestError, load_observations
    from nightcast.tasks.data.sample import make_sample
    from nightcast.tasks.serving.shard import write_shard_layout

    raw = make_sample(n_series=3, days=5, seed=1)  # its series hash to shards 1, 3 and 9 of 10
    raw.write_parquet(tmp_path / "obs.parquet")
    write_shard_layout(str(tmp_path / "obs.parquet"), str(tmp_path / "lay"), 10)
    with pytest.raises(IngestError, match=r"picks none of its 3 series \(1 of 10 hash buckets, whole shards\)"):
        load_observations(str(tmp_path / "lay"), sample=0.1)
    assert load_observations(str(tmp_path / "lay"), sample=0.2)["series_id"].n_unique() == 1


def test_task_groups_take_consecutive_shards_one_task_per_slot_when_small():
    from nightcast.tasks.serving.shard import task_groups

    assert task_groups([1190] * 8, 1, 20_000) == [list(range(8))]
    assert task_groups([1190] * 8, 2, 20_000) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert task_groups([5, 0, 3], 2, 20_000) == [[0], [1, 2]]  # an empty shard rides along, never alone
    assert task_groups([], 4, 20_000) == []


def test_task_groups_never_pass_the_series_cap_or_the_shard_count():
    from nightcast.tasks.serving.shard import task_groups

    groups = task_groups([10_000] * 100, 2, 20_000)  # a million series on two workers: memory bounds the task
    assert len(groups) == 50 and all(len(g) == 2 for g in groups)
    assert sum(groups, []) == list(range(100))
    assert task_groups([1, 1, 1], 8, 20_000) == [[0], [1], [2]]  # more slots than shards: one shard a task
    assert task_groups([30_000, 10, 10], 1, 20_000) == [[0], [1, 2]]  # a shard is never split
    assert task_groups([3, 3, 3], 2, 0) == [[0], [1], [2]]  # 0: one task per shard
    # shards that do not pair under the cap: the even share alone would put two in a task
    assert task_groups([15_000] * 4, 1, 20_000) == [[0], [1], [2], [3]]
    assert all(len(g) == 1 for g in task_groups([15_625] * 64, 2, 20_000))


def test_task_groups_give_every_slot_a_task_while_there_are_shards():
    from nightcast.tasks.serving.shard import task_groups

    assert task_groups([30_000, 10_000, 10_000, 10_000], 4, 20_000) == [[0], [1], [2], [3]]
    assert task_groups([100_000, 1, 1, 1], 4, 20_000) == [[0], [1], [2], [3]]
    assert len(task_groups([100_000, 1, 1, 1], 3, 20_000)) == 3


def test_task_groups_hold_every_rule_on_random_catalogues():
    import random

    from nightcast.tasks.serving.shard import task_groups

    rng = random.Random(0)
    for _ in range(2000):
        n, slots, cap = rng.randint(1, 40), rng.randint(1, 10), rng.choice([1, 100, 20_000, 60_000])
        sizes = [rng.choice([0, rng.randint(1, 50_000)]) for _ in range(n)]
        groups = task_groups(sizes, slots, cap)
        assert sum(groups, []) == list(range(n)) and all(groups)  # consecutive runs covering every shard once
        assert len(groups) >= min(n, slots) or sum(sizes) == 0
        for g in groups:  # under the cap, or one shard (with empty ones) that is over it alone
            assert sum(sizes[i] for i in g) <= cap or sum(sizes[i] > 0 for i in g) == 1, (sizes, slots, cap, g)


def test_task_groups_hold_about_the_same_series():
    from nightcast.tasks.serving.shard import task_groups

    sizes = [900, 100, 500, 500, 800, 200, 1000, 0]
    groups = task_groups(sizes, 2, 20_000)
    assert [sum(sizes[i] for i in g) for g in groups] == [2000, 2000]
    sizes = [450, 560, 500, 490]  # the first run to pass half would be 3 shards: the even cut is 2 and 2
    assert task_groups(sizes, 2, 20_000) == [[0, 1], [2, 3]]


def test_a_task_checks_the_ids_it_read_against_its_folder_and_leaves_null_ids_to_validation():
    from nightcast.tasks.serving.shard import ShardLayoutError, check_shard, shard_of

    ids = pl.Series(["a", "b", "c", "d", None])
    shards = shard_of(ids.drop_nulls(), 4).to_list()
    mine = [i for i, k in zip("abcd", shards) if k == shards[0]]
    check_shard(pl.Series([*mine, None, *mine]), (shards[0], 4), "lay")  # repeats and a null: fine
    other = next(i for i, k in zip("abcd", shards) if k != shards[0])
    with pytest.raises(ShardLayoutError, match=rf"1 series of lay .*'{other}' in shard={shards[0]}, belongs in"):
        check_shard(pl.Series([*mine, other]), (shards[0], 4), "lay")
