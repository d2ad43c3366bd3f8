"""Numba kernels of the statistics; their compiled code is cached on disk (`compile_cache`)."""
from kernels.compile_cache import install

install()
