"""Helpers shared by the tests: harnesses, fakes, small utilities and the kinds table."""
