"""The benchmark harness: venvs, supervisors under test, scenarios, report (standard library)."""
