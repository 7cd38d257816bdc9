"""Helpers shared by the test folders (importable as `support`: pytest puts tests/ on sys.path)."""
