"""`python -m sharpcli` and the `sharp` console script.

The signal handlers go in before anything else is imported: the CLI's own imports, and
torch's when a command starts, take seconds, and a SIGTERM during them must still end in
exit 130 and one line (sharpcli.interrupt), not the default death by signal or an exception
thrown into a half-imported module. This module imports nothing heavy itself.
"""

from sharpcli import interrupt


def run() -> None:
    interrupt.install()
    from sharpcli.cli import main  # a signal now waits for the import (interrupt.install)

    main()


if __name__ == "__main__":
    run()
