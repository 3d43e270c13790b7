"""Data sources: tensor fields read from `.npy` or Parquet files, local or through fsspec, chunk by chunk."""
