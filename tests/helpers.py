"""Small checks every kernel test uses: poisoned outputs and norm-relative error."""

import numpy as np


def poisoned(shape, dtype=np.float32):
    """An output buffer full of NaN (or a sentinel for integers) so an unwritten element fails."""
    if np.issubdtype(np.dtype(dtype), np.integer):
        return np.full(shape, -12345, dtype=dtype)
    return np.full(shape, np.nan, dtype=dtype)


def rel_err(got, ref):
    """||got - ref|| / ||ref|| in float64 (absolute when the reference is all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(got - ref)
    return diff / denom if denom > 0 else diff


def assert_close(got, ref, tol=1e-5, what="result"):
    got = np.asarray(got)
    assert got.shape == np.shape(ref), f"{what}: shape {got.shape} != {np.shape(ref)}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values (unwritten or overflowed)"
    err = rel_err(got, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"
