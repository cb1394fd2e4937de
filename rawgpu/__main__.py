"""``python -m rawgpu`` is the ``rawgpu`` command."""

import sys

from rawgpu.cli import main

sys.exit(main())
