"""Alembic migrations of the results tables (`storage.schema`); see `storage.schema_version`."""
