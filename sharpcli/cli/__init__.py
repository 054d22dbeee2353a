"""The `sharp` command line: parsing and printing only; the work lives in the library.

Each command is a module here with a `register(app)` function. Errors the user caused
arrive as SharpError and leave as one line on stderr with the exit code SPEC §1 gives.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import typer

from sharpcli.launch import env_rank, launched_by_torchrun
from sharpcli.errors import SharpError

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


def _sigterm_as_ctrl_c():
    """SIGTERM outside a loop that handles it itself (training, spectrum) ends the command as
    Ctrl-C does: exit 130, no traceback. Returns the handler it replaced (None off the main
    thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


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
    """Entry point of the `sharp` console script and `python -m sharpcli`.

    Every way out is an exit code of SPEC §1 with at most one line on stderr: usage errors
    (bad choice, bad number, unknown option) and SharpError exit 2 (DivergedError and
    StrictCheckFailed 1, Interrupted 130); Ctrl-C outside a training loop exits 130 quietly.
    Under torchrun every process exits with the same code and rank 0 alone prints the
    line; a process whose peers failed first exits 1 (the failed one says why).
    Anything else is a bug and keeps its traceback."""
    click_error, help_errors = _click_errors()
    previous_sigterm = _sigterm_as_ctrl_c()
    try:
        # standalone_mode=False: click's errors reach us instead of a multi-line Rich box.
        code = app(args=argv, prog_name="sharp", standalone_mode=False)
    except SharpError as err:
        _error(str(err))
        sys.exit(err.exit_code)
    except help_errors as err:  # `sharp` alone: the help text
        if env_rank() == 0:
            err.show()
        sys.exit(err.exit_code)
    except click_error as err:
        message = " ".join(err.format_message().replace(": Value error, ", ": ").split())
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _error(f"{message}{hint}")
        sys.exit(err.exit_code)
    except Exception as err:
        if not _lost_peers(err):
            raise
        _error("the processes of this launch lost contact: another process failed or was "
               f"stopped (see its message), or a collective waited past --dist-timeout")
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    if isinstance(code, int) and not isinstance(code, bool):  # typer.Exit(code), --help
        sys.exit(code)
