"""Utilities for developers of sklcrt components (check suites for new samplers)."""
