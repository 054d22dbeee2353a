"""The `sharp` command line: parsing and printing only; the work lives in the library.

Each command is a module here with a `register(app)` function. Errors the user caused
arrive as SharpError and leave as one line on stderr with its exit code (docs/reference/formats.md#exit-codes).
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from sharpcli import interrupt
from sharpcli.errors import SharpError
from sharpcli.cli.names import cli_message
from sharpcli.launch import env_rank, launched_by_torchrun

app = typer.Typer(
    name="sharp",
    help="Study the sharpness of training: train with GD/SGD/SAM/Eigen-SAM, measure Hessian "
    "spectra of checkpoints, check the edge of stability. Writes CSV.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# One line per command module; each adds its command(s) to `app`.
_COMMAND_MODULES: list[str] = [
    "sharpcli.cli.eos",
    "sharpcli.cli.flow",
    "sharpcli.cli.plot",
    "sharpcli.cli.spectrum",
    "sharpcli.cli.summarize",
    "sharpcli.cli.sweep",
    "sharpcli.cli.train",
]


def _register_all() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def _click_errors() -> tuple[type, tuple[type, ...]]:
    try:  # recent Typer ships its own copy of click
        from typer._click import exceptions as ex
    except ImportError:  # pragma: no cover - older Typer on the real click
        from click import exceptions as ex
    help_error = getattr(ex, "NoArgsIsHelpError", None)
    return ex.ClickException, (help_error,) if help_error else ()


def _error(message: str) -> None:
    """The one line of an error: printed by rank 0 only, so a launch says it once."""
    if env_rank() == 0:
        print(f"error: {message}", file=sys.stderr)


def _lost_peers(err: Exception) -> bool:
    """Whether `err`, under torchrun, came out of a collective (gloo and NCCL report a peer
    that died, or a timeout, as a plain RuntimeError raised inside torch.distributed)."""
    if not launched_by_torchrun():
        return False
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(err, getattr(dist, "DistError", ())):
        return True
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"torch{os.sep}distributed{os.sep}" in frames[-1].filename


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sharp` console script and `python -m sharpcli` (sharpcli.__main__,
    which installs the signal handlers before importing this module).

    Every way out is an exit code of docs/reference/formats.md#exit-codes with at most one line on stderr: usage errors
    (bad choice, bad number, unknown option) and SharpError exit 2 (DivergedError and
    StrictCheckFailed 1, Interrupted 130). SIGINT or SIGTERM at any moment, from start-up
    to teardown, exits 130 (sharpcli.interrupt). Under torchrun every process exits with
    the same code and rank 0 alone prints the line; a process whose peers failed first exits
    1 (the failed one says why). Anything else is a bug and keeps its traceback."""
    with interrupt.exit_on_signals():
        try:
            code, message = _run(argv)
        except BaseException:
            if interrupt.received() is None:
                raise
            code, message = 130, None  # a signal broke what it interrupted: not a bug
        name = interrupt.received()
        if name and code == 0:  # it came as the command ended: a preemption all the same
            code, message = 130, f"stopped by {name} as the command ended; its output is complete"
        elif (name and code != 130) or (code == 130 and message is None):
            code, message = 130, f"stopped by {name or 'SIGINT'}"
        if message is not None:
            _error(message)
    sys.exit(code)


def _run(argv: list[str] | None) -> tuple[int, str | None]:
    """Run the command: its exit code and the one line to print (None: nothing, or what
    click printed itself). A bug propagates."""
    click_error, help_errors = _click_errors()
    try:
        # standalone_mode=False: click's errors reach us instead of a multi-line Rich box.
        code = interrupt.interruptible(app, args=argv, prog_name="sharp", standalone_mode=False)
    except SharpError as err:
        return err.exit_code, cli_message(err)
    except help_errors as err:  # `sharp` alone: the help text
        if env_rank() == 0:
            err.show()
        return err.exit_code, None
    except click_error as err:
        message = " ".join(err.format_message().replace(": Value error, ", ": ").split())
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return err.exit_code, f"{message}{hint}"
    except (interrupt.Stopped, KeyboardInterrupt, typer.Abort):
        return 130, None
    except Exception as err:
        if not _lost_peers(err):
            raise
        return 1, ("the processes of this launch lost contact: another process failed or was "
                   "stopped (see its message), or a collective waited past --dist-timeout")
    # typer.Exit(code) and --help return an int; a command returns None
    return (code, None) if isinstance(code, int) and not isinstance(code, bool) else (0, None)
