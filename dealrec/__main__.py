"""``python -m dealrec ...``: the ``dealrec`` command."""
from dealrec.cli import main

if __name__ == "__main__":
    main(prog_name="dealrec")
