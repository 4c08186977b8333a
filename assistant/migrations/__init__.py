"""Alembic migrations for Madoguchi's database; run them with ``assistant.db.upgrade``."""
