"""Shared test fixtures."""

from pathlib import Path

import pytest

#: The real screens live next to the repository and are never committed.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def real_screen():
    """``real_screen(name)`` reads ``../shared/data/<name>.h5ad``, or skips the test without it."""
    import anndata as ad

    def read(name: str):
        path = DATA_DIR / f"{name}.h5ad"
        if not path.is_file():
            pytest.skip(f"real screen {path} not found (../shared/data is absent)")
        return ad.read_h5ad(path)

    return read
