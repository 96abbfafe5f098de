"""``python -m rlox_dp`` is the ``rlox-dp`` command line."""

from rlox_dp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
