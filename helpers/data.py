"""Deterministic synthetic data of the running story: wafer process records.

Each record is one wafer leaving an etch chamber: when, which lot and slot, which
tool, eight process readings, and whether inline inspection later found a defect.

The defect rule (``defect_logit``) is written down so lessons can compare a model
with the truth. A wafer is more likely to be defective when:

- the chamber temperature strays from its 350 °C set-point, in either direction
  (a quadratic penalty: a few degrees are harmless, ten are not);
- the pressure leaves its ±0.15 Torr process window around 2.0 Torr;
- airborne particles rise (logarithmic: the first extra particles matter most);
- humidity climbs above 43 % (resist adhesion degrades);
- the chamber has run many hours since its last clean (deposits flake);
- vibration exceeds 1.5 mm/s (a pump bearing going bad).

Tool ``ETCH-05`` runs about 6 °C hot, so one tool carries a visible share of the
defects, as a drifting tool does in a real fab. Inspection labels are the
Bernoulli outcome of that probability, and 1 % of them are flipped (inspectors
and classifiers make mistakes too), so no model can be perfect.

Rows are generated in fixed blocks seeded by ``(seed, block)``, so the first
``n`` rows of a large data set equal a small one with the same seed: a quick
profile sees the head of exactly the data the full profile sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FEATURES",
    "LABEL",
    "BLOCK_ROWS",
    "make_wafer_records",
    "iter_wafer_blocks",
    "write_wafer_parquet",
    "feature_matrix",
    "defect_logit",
    "defect_probability",
    "make_engineer_notes",
]

# Process features in the order models expect them.
FEATURES = [
    "temperature_c",
    "pressure_torr",
    "gas_flow_sccm",
    "particle_count",
    "humidity_pct",
    "rf_power_w",
    "chamber_hours",
    "vibration_mm_s",
]
LABEL = "defect"
N_TOOLS = 8
HOT_TOOL = "ETCH-05"
WAFERS_PER_LOT = 25
# 64 Ki rows a block: big enough to vectorise well, small enough to stream.
BLOCK_ROWS = 65_536
_START = np.datetime64("2026-01-05T06:00:00", "ms")
_MEAN_GAP_MS = 2_500  # the fab finishes a wafer every ~2.5 s across all tools
_LABEL_FLIP = 0.01


def _check_rows(n_rows: int) -> int:
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)):
        raise TypeError(f"n_rows must be an integer, got {n_rows!r}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    return int(n_rows)


def defect_logit(df: pd.DataFrame) -> np.ndarray:
    """The log-odds of a defect for each record, from the rule in the module docstring."""
    temp_dev = (df["temperature_c"].to_numpy() - 350.0) / 4.0
    pressure_out = np.maximum(0.0, np.abs(df["pressure_torr"].to_numpy() - 2.0) / 0.15 - 1.0)
    return (
        -5.4
        + 0.45 * temp_dev**2
        + 0.9 * pressure_out
        + 1.1 * np.log1p(df["particle_count"].to_numpy() / 40.0)
        + 0.18 * np.maximum(0.0, df["humidity_pct"].to_numpy() - 43.0)
        + 0.004 * df["chamber_hours"].to_numpy()
        + 0.8 * np.maximum(0.0, df["vibration_mm_s"].to_numpy() - 1.5)
    )


def defect_probability(df: pd.DataFrame) -> np.ndarray:
    """The true probability of a defect (before label noise) for each record."""
    return 1.0 / (1.0 + np.exp(-defect_logit(df)))


def _block(seed: int, block: int) -> pd.DataFrame:
    """Rows ``[block * BLOCK_ROWS, (block + 1) * BLOCK_ROWS)`` of the data set ``seed``."""
    rng = np.random.default_rng([seed, block])
    n = BLOCK_ROWS
    first = block * BLOCK_ROWS
    row = np.arange(first, first + n, dtype=np.int64)

    tool_idx = rng.integers(0, N_TOOLS, size=n)
    tools = np.array([f"ETCH-{i + 1:02d}" for i in range(N_TOOLS)])
    hot = (tools[tool_idx] == HOT_TOOL).astype(np.float64)

    gaps = rng.exponential(_MEAN_GAP_MS, size=n)
    # Timestamps continue across blocks: block b starts at b * BLOCK_ROWS mean gaps.
    offset_ms = first * _MEAN_GAP_MS + np.cumsum(gaps)
    df = pd.DataFrame(
        {
            "timestamp": _START + offset_ms.astype("timedelta64[ms]"),
            "lot_id": [f"LOT-{i // WAFERS_PER_LOT:07d}" for i in row],
            "wafer_slot": (row % WAFERS_PER_LOT + 1).astype(np.int16),
            "tool_id": tools[tool_idx],
            "temperature_c": 350.0 + 6.0 * hot + rng.normal(0.0, 4.0, n),
            "pressure_torr": rng.normal(2.0, 0.15, n),
            "gas_flow_sccm": rng.normal(120.0, 6.0, n),
            "particle_count": rng.poisson(rng.lognormal(np.log(35.0), 0.6, n)).astype(np.float64),
            "humidity_pct": rng.normal(40.0, 3.0, n),
            "rf_power_w": rng.normal(1500.0, 40.0, n),
            "chamber_hours": rng.uniform(0.0, 500.0, n),
            "vibration_mm_s": rng.gamma(2.0, 0.5, n),
        }
    )
    p = 1.0 / (1.0 + np.exp(-defect_logit(df)))
    label = rng.random(n) < p
    flip = rng.random(n) < _LABEL_FLIP
    df[LABEL] = (label ^ flip).astype(np.int8)
    df[FEATURES] = df[FEATURES].astype(np.float32)
    return df


def iter_wafer_blocks(n_rows: int, seed: int = 0) -> Iterator[pd.DataFrame]:
    """Yield the data set ``seed`` block by block, ``n_rows`` rows in all."""
    remaining = _check_rows(n_rows)
    block = 0
    while remaining > 0:
        df = _block(seed, block)
        if remaining < len(df):
            df = df.iloc[:remaining]
        remaining -= len(df)
        block += 1
        yield df


def make_wafer_records(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """The first ``n_rows`` wafer records of data set ``seed`` as one DataFrame."""
    blocks = list(iter_wafer_blocks(n_rows, seed))
    if not blocks:
        return _block(seed, 0).iloc[:0].reset_index(drop=True)
    return pd.concat(blocks, ignore_index=True)


def write_wafer_parquet(
    path: str | Path, n_rows: int, seed: int = 0, progress: bool = True
) -> Path:
    """Write ``n_rows`` records to Parquet one block (row group) at a time.

    Memory stays at about one block however large the file, which is how a real
    feature export of millions of rows is written. Returns the path.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_rows = _check_rows(n_rows)
    tmp = path.with_suffix(path.suffix + ".partial")
    writer = None
    try:
        with tqdm(total=n_rows, unit="row", unit_scale=True, disable=not progress,
                  desc=f"writing {path.name}") as bar:
            for df in iter_wafer_blocks(n_rows, seed):
                table = pa.Table.from_pandas(df, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table, row_group_size=BLOCK_ROWS)
                bar.update(len(df))
        if writer is None:  # zero rows: still a valid file with the right schema
            empty = pa.Table.from_pandas(make_wafer_records(0, seed), preserve_index=False)
            pq.write_table(empty, tmp)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def feature_matrix(df: pd.DataFrame) -> np.ndarray:
    """The model input: a C-contiguous ``(N, len(FEATURES))`` float32 array."""
    missing = [name for name in FEATURES if name not in df.columns]
    if missing:
        raise KeyError(f"records lack the feature column(s) {missing}")
    return np.ascontiguousarray(df[FEATURES].to_numpy(dtype=np.float32))


# -- engineer notes: free text of very different lengths --------------------------------
_NOTE_OPENERS = [
    "ok", "no issues", "PM done", "chamber seasoned", "lot held for review",
    "alarm cleared", "particle excursion", "pressure drift observed", "recipe updated",
]
_NOTE_DETAILS = [
    "pump {tool} showed rising vibration after {hours} hours since the last clean",
    "wafer slot {slot} had edge chipping, inspection flagged an edge-ring pattern",
    "operator reset the RF generator on {tool} and re-ran the seasoning wafers",
    "particle counts doubled during the gas line purge, filters replaced",
    "temperature controller oscillated by {delta} degrees before settling",
    "humidity in bay 4 exceeded {rh} percent during the afternoon shift",
    "endpoint detection triggered late, etch depth measured {depth} nm over target",
    "spare part on order, tool {tool} running at reduced throughput until delivery",
]


def make_engineer_notes(n: int, seed: int = 0) -> list[str]:
    """``n`` shift notes, deterministic, from two words to a long incident report.

    Real notes have a long-tailed length distribution: most are short, a few run
    to paragraphs. That is what makes padding to the longest note in a batch
    wasteful, and bucketing by length worth it.
    """
    n = _check_rows(n)
    rng = np.random.default_rng([seed, 7])
    notes = []
    for _ in range(n):
        details = min(int(rng.geometric(0.35)) - 1, 12)  # 0 details most often, up to 12
        parts = [str(rng.choice(_NOTE_OPENERS))]
        for _ in range(details):
            parts.append(str(rng.choice(_NOTE_DETAILS)).format(
                tool=f"ETCH-{rng.integers(1, N_TOOLS + 1):02d}", hours=int(rng.integers(20, 500)),
                slot=int(rng.integers(1, 26)), delta=round(float(rng.uniform(0.5, 4)), 1),
                rh=int(rng.integers(44, 60)), depth=int(rng.integers(3, 40))))
        notes.append(". ".join(parts))
    return notes
