"""``python -m cifar`` runs the command line (see cifar.cli)."""

from cifar.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
