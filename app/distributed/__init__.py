"""Scale-out on Dask: the same chunk fold, run by Dask workers over windows of a file source."""
