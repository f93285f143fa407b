"""`python -m precompute ...`: the same arguments as `desa precompute ...`."""
import sys

from desa_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["precompute", *sys.argv[1:]]))
