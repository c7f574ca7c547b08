"""Ray job entrypoints: ``python -m jobs.grid|jobs.run|jobs.report`` (see each module)."""
