"""One revision per schema version: `rNNNN_*.py`, revision id "NNNN" (`pmcqa.core.db.SCHEMA_VERSION`)."""
