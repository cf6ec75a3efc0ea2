"""Root conftest: makes the bundle root importable so `pytest` works from a plain checkout."""
