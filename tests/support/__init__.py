"""Every helper the tests share, imported one way: `from support.<module> import ...`.

pyproject.toml's pytest `pythonpath` puts the repo root and tests/ on sys.path; a benchmark script adds the same two
paths in its one `sys.path` line; a script a test runs as a child process gets them in its PYTHONPATH
(support.paths.child_env). A helper used by one test file stays in that file."""
