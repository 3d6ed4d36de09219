"""Helpers shared by the test suites (importable as ``tests.support``; pytest puts the repo root on
sys.path, see ``pythonpath`` in pyproject.toml)."""
