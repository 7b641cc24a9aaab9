import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from helpers import data


def score_in_chunks(parquet_path, model, out_path, chunk_rows=16_384, progress=False):
    """Score parquet_path chunk by chunk into out_path; return the number of rows scored."""
    if chunk_rows <= 0:
        raise ValueError("chunk_rows must be positive")
    reader = pq.ParquetFile(parquet_path)
    writer = pq.ParquetWriter(out_path, OUTPUT_SCHEMA)  # noqa: F821
    total = 0
    try:
        for batch in tqdm(reader.iter_batches(batch_size=chunk_rows), disable=not progress):
            frame = batch.to_pandas()
            probs = model.predict_proba(data.feature_matrix(frame))
            writer.write_table(pa.Table.from_pandas(
                frame[KEY_COLUMNS].assign(defect_probability=probs),  # noqa: F821
                schema=OUTPUT_SCHEMA, preserve_index=False))  # noqa: F821
            total += len(frame)
    finally:
        writer.close()
    return total
