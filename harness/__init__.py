"""seebench: the instrument (suites, runner, metrics, records, reports, CLI)."""
