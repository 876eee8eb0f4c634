"""`python -m harness ...` is `qlharness ...`."""

from harness.cli import main

raise SystemExit(main())
