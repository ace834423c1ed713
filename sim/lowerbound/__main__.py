"""`python -m sim.lowerbound [--d 256] [--tau 0.25] [--norm l2] [--scale 1] [--json out.json]`: the C5 table
(the same as `python -m sim lowerbound ...`)."""
import sys

from sim.cli import main

if __name__ == "__main__":
    sys.exit(main(["lowerbound", *sys.argv[1:]]))
