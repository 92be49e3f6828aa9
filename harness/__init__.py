"""seebench: the instrument (suites, runner, metrics, records, reports, CLI)."""

# Run from a checkout, ``harness/`` here shadows the installed package, which alone holds
# ``harness.models`` and ``harness.baselines`` (pyproject.toml maps ``models/`` and ``baselines/``
# there).  Extending the package path to every ``harness/`` on ``sys.path`` finds them.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
