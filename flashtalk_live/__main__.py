"""`python -m flashtalk_live` runs the CLI."""

from flashtalk_live.cli import main

raise SystemExit(main())
