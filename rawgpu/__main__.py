"""``python -m rawgpu`` is the ``rawgpu`` command."""

from rawgpu.cli import run

run()
