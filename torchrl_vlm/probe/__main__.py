"""``python -m torchrl_vlm.probe``: see :mod:`torchrl_vlm.probe.cli`."""
import sys

from torchrl_vlm.probe.cli import main

sys.exit(main())
