"""`python -m policyd` runs the same CLI as the `policyd` console script."""

from __future__ import annotations

from policyd.cli import main

if __name__ == "__main__":
    main()
