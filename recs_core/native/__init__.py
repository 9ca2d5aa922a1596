"""Native (Cython) building blocks of recs_core."""

try:
    from recs_core.native.spsc_ring import RingClosedError, SpscRing
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "recs_core.native.spsc_ring is not built: run the setup command in README "
        "(pip install -e .), or for an in-place build: "
        "python setup.py build_ext --inplace"
    ) from exc

__all__ = ["RingClosedError", "SpscRing"]
