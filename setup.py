"""Build the Cython extensions of recs_core (metadata lives in pyproject.toml)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "recs_core.native.spsc_ring",
        ["src/spsc_ring.pyx"],
        include_dirs=["src"],
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=cythonize(
    extensions, language_level=3,
    compiler_directives={"boundscheck": False, "wraparound": False},
))
