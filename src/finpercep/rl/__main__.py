"""``python -m finpercep.rl [options]``: ``finpercep rl train`` (also under accelerate / torchrun)."""

import sys

from .train import main

sys.exit(main())
