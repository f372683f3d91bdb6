"""`python -m bench ...`, as launchers run it: `torchrun --nproc-per-node 2 -m bench train sft ...`."""
import sys

from bench.cli import main

sys.exit(main())
