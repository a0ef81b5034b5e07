"""``python -m cachesvc`` runs the command line."""

from cachesvc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
