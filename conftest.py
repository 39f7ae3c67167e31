"""Makes the repository root importable in tests (pytest inserts this directory in sys.path)."""
