"""The wheel's tag (pyproject.toml holds everything else).

A wheel made by `make wheel` carries libmel.so in the package: it is then
tied to the platform, though not to the Python version or ABI (the library
is loaded through ctypes): py3-none-<platform>, installed into platlib.
Without the library (pip install ./python) the wheel is pure Python."""
import os

from setuptools import setup
from setuptools.dist import Distribution

kw = {}
if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmel", "libmel.so")):
    from wheel.bdist_wheel import bdist_wheel

    class BinaryDistribution(Distribution):
        def has_ext_modules(self):
            return True

    class BinaryWheel(bdist_wheel):
        def get_tag(self):
            return ("py3", "none") + tuple(super().get_tag()[2:])

    kw = {"distclass": BinaryDistribution, "cmdclass": {"bdist_wheel": BinaryWheel}}

setup(**kw)
