#!/usr/bin/env python3
"""Reads a v2x-collector dataset the way users do, with other tools, and prints what they see.

    pip install pyarrow duckdb [polars]
    tools/interop.py --data DIR [--kind K]... [--export FILE]...

For each kind directory under DIR holding Parquet files (or each --kind), it reads the tree with
  - pyarrow:  pyarrow.dataset.dataset('<data>/<kind>', partitioning='hive')
  - DuckDB:   read_parquet('<data>/<kind>/**/*.parquet', hive_partitioning=true)
  - Polars:   polars.scan_parquet('<data>/<kind>/**/*.parquet', hive_partitioning=True)
              (only when polars imports; otherwise its error is reported)
and reports, per reader: the row count, rows per source_id and per partition, sum/min/max/count
of every numeric column, min/max of every timestamp column as epoch microseconds, the columns
and types as the reader sees them, what type and values the `date` and `hour` partition columns
get, how many rows sit in a partition that disagrees with their event_ts (UTC), and the values
the partition columns get when the reader is told they are text.
It also checks the layout itself: partition directories named `date=YYYY-MM-DD/hour=HH`
(zero-padded) and no data file that also stores `date` or `hour` inside it.

Each --export FILE (.parquet, .csv, .ndjson/.jsonl) is read with pyarrow and DuckDB: row count,
columns, rows per source, numeric aggregates, event_ts range, and whether the rows are sorted by
(source_id, event_ts).

Prints one JSON object on standard output. Exits 0 when every reader ran; a reader that fails
is reported as {"error": "..."} and makes the exit status 1.
"""

import argparse
import json
import math
import os
import re
import sys
import traceback

HOUR_US = 3_600_000_000
PART_RE = re.compile(r"^date=\d{4}-\d{2}-\d{2}/hour=\d{2}$")


def clean(v):
    """A JSON-safe value: ints stay exact, non-finite floats become strings."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    try:  # Decimal, numpy scalars, HUGEINT as int
        if hasattr(v, "as_integer_ratio") and float(v).is_integer() and abs(float(v)) < 2**53:
            return int(v)
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def part_key(date, hour):
    """`date=YYYY-MM-DD/hour=HH` from whatever types the reader gave the partition columns."""
    d = date.isoformat() if hasattr(date, "isoformat") else str(date)
    return f"date={d}/hour={int(hour):02d}"


# ---------------------------------------------------------------------------------------------
# pyarrow


def pa_kind(path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dset = ds.dataset(path, partitioning="hive")
    table = dset.to_table()
    out = {
        "rows": table.num_rows,
        "files": len(dset.files),
        "columns": {f.name: str(f.type) for f in table.schema},
    }
    out.update(pa_values(table))
    out["partition_columns"] = {}
    for name in ("date", "hour"):
        if name in table.column_names:
            col = table.column(name)
            vals = sorted(clean(v) for v in pc.unique(col).to_pylist())
            out["partition_columns"][name] = {"type": str(col.type), "values": vals}
    if "date" in table.column_names and "hour" in table.column_names:
        groups = table.group_by(["date", "hour"]).aggregate([([], "count_all")])
        out["by_partition"] = {
            part_key(d, h): n
            for d, h, n in zip(
                groups.column("date").to_pylist(),
                groups.column("hour").to_pylist(),
                groups.column("count_all").to_pylist(),
            )
        }
        if "event_ts" in table.column_names:
            days = pc.cast(pc.cast(table.column("date"), pa.date32()), pa.int32())
            part_hour = pc.add(
                pc.multiply(pc.cast(days, pa.int64()), 24),
                pc.cast(table.column("hour"), pa.int64()),
            )
            ts = table.column("event_ts")
            us = pc.cast(pc.cast(ts, pa.timestamp("us", tz=ts.type.tz)), pa.int64())
            event_hour = pc.divide(us, HOUR_US)
            bad = pc.sum(pc.cast(pc.not_equal(part_hour, event_hour), pa.int64())).as_py()
            out["partition_mismatches"] = bad or 0
    # The same tree with the partition columns declared as text: what `hour=09` holds.
    text = ds.dataset(
        path,
        partitioning=ds.partitioning(
            pa.schema([("date", pa.string()), ("hour", pa.string())]), flavor="hive"
        ),
    ).to_table(columns=["date", "hour"])
    out["partition_as_text"] = {
        name: sorted(pc.unique(text.column(name)).to_pylist()) for name in ("date", "hour")
    }
    return out


def pa_values(table):
    """Rows per source, numeric aggregates and timestamp ranges of an Arrow table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    if "source_id" in table.column_names:
        groups = table.group_by("source_id").aggregate([([], "count_all")])
        out["by_source"] = dict(
            zip(groups.column("source_id").to_pylist(), groups.column("count_all").to_pylist())
        )
    aggs, times = {}, {}
    for field in table.schema:
        if field.name in ("date", "hour"):
            continue
        col = table.column(field.name)
        t = field.type
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            mm = pc.min_max(col)
            aggs[field.name] = {
                "count": pc.count(col).as_py(),
                "sum": clean(pc.sum(col).as_py()),
                "min": clean(mm["min"].as_py()),
                "max": clean(mm["max"].as_py()),
            }
        elif pa.types.is_timestamp(t):
            us = pc.cast(pc.cast(col, pa.timestamp("us", tz=t.tz)), pa.int64())
            mm = pc.min_max(us)
            times[field.name] = {
                "min_us": mm["min"].as_py(),
                "max_us": mm["max"].as_py(),
                "type": str(t),
            }
    out["aggregates"] = aggs
    out["timestamps"] = times
    return out


def pa_sorted(table):
    import pyarrow as pa
    import pyarrow.compute as pc

    if "source_id" not in table.column_names or "event_ts" not in table.column_names:
        return None
    src = table.column("source_id").to_pylist()
    ts = table.column("event_ts")
    if pa.types.is_timestamp(ts.type):
        us = pc.cast(pc.cast(ts, pa.timestamp("us", tz=ts.type.tz)), pa.int64()).to_pylist()
    else:  # e.g. text the reader did not take for a time: compared as it is
        us = ts.to_pylist()
    keys = list(zip(src, us))
    return all(keys[i - 1] <= keys[i] for i in range(1, len(keys)))


def pa_export(path):
    import pyarrow.parquet as pq

    ext = path.rsplit(".", 1)[-1].lower()
    if ext == "parquet":
        table = pq.read_table(path)
        footer = pq.ParquetFile(path).metadata.metadata or {}
        extra = {
            # The Parquet footer's key-value metadata, and what pyarrow puts on the table's
            # schema (it drops ARROW:schema and keeps what the embedded Arrow schema carries).
            "footer_metadata_keys": sorted(k.decode() for k in footer),
            "arrow_schema_metadata_keys": sorted(k.decode() for k in (table.schema.metadata or {})),
        }
    elif ext == "csv":
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
        extra = {}
    elif ext in ("ndjson", "jsonl", "json"):
        import pyarrow.json as pjson

        table = pjson.read_json(path)
        extra = {}
    else:
        raise ValueError(f"unknown export extension .{ext}")
    out = {
        "rows": table.num_rows,
        "columns": {f.name: str(f.type) for f in table.schema},
    }
    out.update(pa_values(table))
    out["sorted_by_source_event_ts"] = pa_sorted(table)
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# DuckDB


def duck_connect():
    import duckdb

    return duckdb.connect()


def q(s):
    return '"' + s.replace('"', '""') + '"'


def lit(s):
    return "'" + s.replace("'", "''") + "'"


def duck_numeric(t):
    return t in (
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE",
    ) or t.startswith("DECIMAL")


def duck_epoch_us(col, t):
    # epoch_us() of a TIMESTAMPTZ is the instant, whatever the session's TimeZone; casting one
    # to TIMESTAMP would shift it by that zone, so only the other units are cast.
    if t in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP"):
        return f"epoch_us({col})"
    return f"epoch_us(CAST({col} AS TIMESTAMP))"


def first_column(con, sql):
    return [r[0] for r in con.execute(sql).fetchall()]


def duck_values(con, rel, cols):
    out = {}
    names = [c for c, _ in cols]
    if "source_id" in names:
        out["by_source"] = {
            s: n
            for s, n in con.execute(f"select source_id, count(*) from {rel} group by 1").fetchall()
        }
    aggs, times = {}, {}
    exprs, plan = [], []
    for c, t in cols:
        if c in ("date", "hour"):
            continue
        if duck_numeric(t):
            exprs += [f"count({q(c)})", f"sum({q(c)})", f"min({q(c)})", f"max({q(c)})"]
            plan.append(("num", c, t))
        elif t.startswith("TIMESTAMP"):
            e = duck_epoch_us(q(c), t)
            exprs += [f"min({e})", f"max({e})"]
            plan.append(("ts", c, t))
    if exprs:
        row = list(con.execute(f"select {', '.join(exprs)} from {rel}").fetchone())
        for kind, c, t in plan:
            if kind == "num":
                n, s, lo, hi = row[:4]
                row = row[4:]
                aggs[c] = {"count": n, "sum": clean(s), "min": clean(lo), "max": clean(hi)}
            else:
                lo, hi = row[:2]
                row = row[2:]
                times[c] = {"min_us": lo, "max_us": hi, "type": t}
    out["aggregates"] = aggs
    out["timestamps"] = times
    return out


def duck_kind(path):
    con = duck_connect()
    glob = os.path.join(path, "**", "*.parquet")
    rel = f"read_parquet({lit(glob)}, hive_partitioning=true)"
    cols = [(r[0], r[1]) for r in con.execute(f"describe select * from {rel}").fetchall()]
    out = {
        "rows": con.execute(f"select count(*) from {rel}").fetchone()[0],
        "files": con.execute(f"select count(*) from glob({lit(glob)})").fetchone()[0],
        "columns": dict(cols),
        "timezone_setting": con.execute("select current_setting('TimeZone')").fetchone()[0],
    }
    out.update(duck_values(con, rel, cols))
    names = [c for c, _ in cols]
    out["partition_columns"] = {}
    for name in ("date", "hour"):
        if name in names:
            vals = first_column(con, f"select distinct {name} from {rel} order by 1")
            vals = [v.isoformat() if hasattr(v, "isoformat") else clean(v) for v in vals]
            out["partition_columns"][name] = {"type": dict(cols)[name], "values": vals}
    if "date" in names and "hour" in names:
        out["by_partition"] = {
            part_key(d, h): n
            for d, h, n in con.execute(
                f"select date, hour, count(*) from {rel} group by 1, 2"
            ).fetchall()
        }
        if "event_ts" in names:
            t = dict(cols)["event_ts"]
            out["partition_mismatches"] = con.execute(
                f"select count(*) from {rel} where "
                f"(CAST(date AS DATE) - DATE '1970-01-01') * 24 + CAST(hour AS BIGINT) "
                f"<> {duck_epoch_us('event_ts', t)} // {HOUR_US}"
            ).fetchone()[0]
    text_rel = f"read_parquet({lit(glob)}, hive_partitioning=true, hive_types_autocast=false)"
    out["partition_as_text"] = {
        name: first_column(con, f"select distinct {name} from {text_rel} order by 1")
        for name in ("date", "hour")
    }
    return out


def duck_export(path):
    con = duck_connect()
    ext = path.rsplit(".", 1)[-1].lower()
    if ext == "parquet":
        rel = f"read_parquet({lit(path)}, file_row_number=true)"
    elif ext == "csv":
        rel = f"(select *, row_number() over () - 1 as file_row_number from read_csv({lit(path)}))"
    elif ext in ("ndjson", "jsonl", "json"):
        rel = (
            f"(select *, row_number() over () - 1 as file_row_number "
            f"from read_json({lit(path)}, format='newline_delimited'))"
        )
    else:
        raise ValueError(f"unknown export extension .{ext}")
    cols = [
        (r[0], r[1])
        for r in con.execute(f"describe select * from {rel}").fetchall()
        if r[0] != "file_row_number"
    ]
    out = {
        "rows": con.execute(f"select count(*) from {rel}").fetchone()[0],
        "columns": dict(cols),
    }
    out.update(duck_values(con, rel, cols))
    names = [c for c, _ in cols]
    if "source_id" in names and "event_ts" in names:
        t = dict(cols)["event_ts"]
        key = duck_epoch_us("event_ts", t) if t.startswith("TIMESTAMP") else "event_ts"
        unsorted = con.execute(
            f"select count(*) from (select source_id as s, {key} as e, "
            f"lag(source_id) over (order by file_row_number) as ps, "
            f"lag({key}) over (order by file_row_number) as pe from {rel}) "
            f"where ps is not null and (ps > s or (ps = s and pe > e))"
        ).fetchone()[0]
        out["sorted_by_source_event_ts"] = unsorted == 0
    else:
        out["sorted_by_source_event_ts"] = None
    return out


# ---------------------------------------------------------------------------------------------
# Polars (optional)


def polars_kind(path):
    import polars as pl

    glob = os.path.join(path, "**", "*.parquet")
    lf = pl.scan_parquet(glob, hive_partitioning=True)
    schema = lf.collect_schema()
    df = lf.collect()
    out = {"rows": df.height, "columns": {n: str(t) for n, t in schema.items()}}
    if "source_id" in df.columns:
        g = df.group_by("source_id").len()
        out["by_source"] = dict(zip(g["source_id"].to_list(), g["len"].to_list()))
    aggs, times = {}, {}
    for name, t in schema.items():
        if name in ("date", "hour"):
            continue
        s = df[name]
        if t.is_numeric():
            n = s.len() - s.null_count()
            aggs[name] = {
                "count": n,
                # Polars sums an all-null column to 0; SQL (and the other readers) say null.
                "sum": clean(s.sum()) if n else None,
                "min": clean(s.min()),
                "max": clean(s.max()),
            }
        elif isinstance(t, pl.Datetime):
            us = s.dt.epoch("us")
            times[name] = {"min_us": us.min(), "max_us": us.max(), "type": str(t)}
    out["aggregates"] = aggs
    out["timestamps"] = times
    out["partition_columns"] = {}
    for name in ("date", "hour"):
        if name in df.columns:
            vals = sorted(df[name].unique().to_list())
            vals = [v.isoformat() if hasattr(v, "isoformat") else clean(v) for v in vals]
            out["partition_columns"][name] = {"type": str(schema[name]), "values": vals}
    if "date" in df.columns and "hour" in df.columns:
        g = df.group_by(["date", "hour"]).len()
        out["by_partition"] = {
            part_key(d, h): n
            for d, h, n in zip(g["date"].to_list(), g["hour"].to_list(), g["len"].to_list())
        }
        if "event_ts" in df.columns:
            days = pl.col("date").cast(pl.Date).cast(pl.Int64)
            part_hour = days * 24 + pl.col("hour").cast(pl.Int64)
            event_hour = pl.col("event_ts").dt.epoch("us") // HOUR_US
            out["partition_mismatches"] = df.filter(part_hour != event_hour).height
    text = pl.scan_parquet(
        glob, hive_partitioning=True, hive_schema={"date": pl.String, "hour": pl.String}
    ).select("date", "hour").collect()
    out["partition_as_text"] = {n: sorted(text[n].unique().to_list()) for n in ("date", "hour")}
    return out


# ---------------------------------------------------------------------------------------------
# The layout itself


def layout(path):
    import pyarrow.parquet as pq

    files, dirs, bad_dirs, inner, keys = [], set(), set(), [], set()
    for root, _dirs, names in os.walk(path):
        for n in names:
            if not n.endswith(".parquet") or n.startswith((".", "_")):
                continue
            f = os.path.join(root, n)
            files.append(f)
            rel = os.path.relpath(root, path).replace(os.sep, "/")
            dirs.add(rel)
            if not PART_RE.match(rel):
                bad_dirs.add(rel)
            meta = pq.ParquetFile(f).metadata
            keys.update(k.decode() for k in (meta.metadata or {}))
            names_in_file = meta.schema.to_arrow_schema().names
            if "date" in names_in_file or "hour" in names_in_file:
                inner.append(os.path.relpath(f, path))
    return {
        "files": len(files),
        "partition_dirs": sorted(dirs),
        "bad_partition_dirs": sorted(bad_dirs),
        "files_with_partition_columns_inside": sorted(inner),
        "footer_metadata_keys": sorted(keys),
    }


def kinds_in(data):
    out = []
    for name in sorted(os.listdir(data)):
        d = os.path.join(data, name)
        # `_quarantine` is a table; other `_`/`.` names are the collector's work areas.
        if not os.path.isdir(d) or (name.startswith((".", "_")) and name != "_quarantine"):
            continue
        names = (n for _, _, ns in os.walk(d) for n in ns)
        if any(n.endswith(".parquet") and not n.startswith(".") for n in names):
            out.append(name)
    return out


def run(fn, *args):
    try:
        return fn(*args), True
    except Exception as e:  # reported, not raised: the caller sees every reader's outcome
        return {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}, False


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="the dataset directory")
    p.add_argument(
        "--kind", action="append", default=[], help="a kind to read (default: every kind with files)"
    )
    p.add_argument("--export", action="append", default=[], help="an exported file to read")
    p.add_argument("--no-polars", action="store_true", help="skip Polars even when it imports")
    args = p.parse_args()

    ok = True
    versions = {"python": sys.version.split()[0]}
    import duckdb
    import pyarrow

    versions["pyarrow"] = pyarrow.__version__
    versions["duckdb"] = duckdb.__version__
    polars_error = None
    if args.no_polars:
        polars_error = "skipped (--no-polars)"
    else:
        try:
            import polars

            versions["polars"] = polars.__version__
        except Exception as e:
            polars_error = f"{type(e).__name__}: {e}"

    result = {"versions": versions, "polars": polars_error or "ok", "kinds": {}, "exports": {}}
    for kind in args.kind or kinds_in(args.data):
        path = os.path.join(args.data, kind)
        entry, good = run(layout, path)
        ok &= good
        entry["readers"] = {}
        readers = [("pyarrow", pa_kind), ("duckdb", duck_kind)]
        if polars_error is None:
            readers.append(("polars", polars_kind))
        for name, fn in readers:
            entry["readers"][name], good = run(fn, path)
            ok &= good
        result["kinds"][kind] = entry
    for f in args.export:
        entry = {}
        for name, fn in (("pyarrow", pa_export), ("duckdb", duck_export)):
            entry[name], good = run(fn, f)
            ok &= good
        result["exports"][f] = entry
    json.dump(result, sys.stdout, indent=1, sort_keys=True, allow_nan=False, default=str)
    sys.stdout.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
