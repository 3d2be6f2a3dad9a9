"""`python -m resect ...` and `torchrun ... -m resect ...` run the command-line tool."""

from resect.cli import main

if __name__ == "__main__":
    main()
