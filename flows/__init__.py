"""Batch style transfer as a Prefect flow over Dask: manifests, plan, tasks, report and the ``nst`` command."""
