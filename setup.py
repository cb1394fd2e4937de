"""Which packages the wheel holds, found automatically so no subpackage can be left out.

kernels/ sits at the top of the repository (device code only, never importing rawgpu) but installs
as ``rawgpu.kernels``: every package under it is renamed into that namespace. Everything else
about the project is in pyproject.toml.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["rawgpu", "rawgpu.*"])
packages += ["rawgpu." + name for name in find_packages(include=["kernels", "kernels.*"])]

setup(packages=packages, package_dir={"rawgpu": "rawgpu", "rawgpu.kernels": "kernels"})
