"""Helpers shared by test modules in and outside tests/server/ (imported, not conftest)."""
