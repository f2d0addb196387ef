"""``python3 -m orchestrator``: the same command line as ``orchestrator``."""

from orchestrator.cli.main import main

raise SystemExit(main())
