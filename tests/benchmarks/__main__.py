"""`python -m tests.benchmarks`: the entry point `make benchmark` runs."""

from .bench import main

raise SystemExit(main())
