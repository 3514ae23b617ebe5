"""`python -m taskkernel.jupyter -f <connection file>`: the kernel process a kernelspec launches."""

import sys

from taskkernel.jupyter.kernel import main

if __name__ == "__main__":
    sys.exit(main())
