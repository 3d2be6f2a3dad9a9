"""The `resect` command line. Each command lives in its own module as a thin wrapper: parse,
call one library function, render. Heavy imports happen inside the commands so that
`resect --help` stays fast."""

from __future__ import annotations

import logging
import os
import sys

import typer

app = typer.Typer(
    name="resect",
    help="Cut knowledge out of Monet language models by ablating experts exactly, and prove nothing else broke.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)

# The panels `resect --help` groups its commands into, in a user's words.
EDITS = "Cut knowledge out of a model"
BLOCKS = "Step by step: profile, select, apply"
EVALUATION = "Measure and gate an edit"
DATA = "Checkpoints, recipes and offline mirrors"
WORLD = "The built-in demo world"


def _help_takes_no_value() -> None:
    """`--help` is a flag: it shows no value placeholder (typer shows `<bool>` for its own help option)."""
    try:
        from typer._click.core import Command
    except ImportError:  # another typer layout: its help looks as typer makes it
        return
    original = Command.get_help_option
    if getattr(original, "resect_flag", False):
        return

    def get_help_option(self, ctx):
        option = original(self, ctx)
        if option is not None:
            option.metavar = ""
        return option

    get_help_option.resect_flag = True
    Command.get_help_option = get_help_option


_help_takes_no_value()

QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Command modules register themselves on `app` when imported; their order is the panels' order in `resect --help`.
from . import edit, run, profile, select, experts, apply, eval, verify, probe, info, mirror, world  # noqa: E402,F401,I001  (the order --help lists them in)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Log progress details to stderr."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # the libraries' own progress bars and notices, set before they are imported
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        _silence_tqdm()


def _silence_tqdm() -> None:
    """Turn off every tqdm bar in this process (lm-eval passes disable=False explicitly, which
    overrides TQDM_DISABLE, and tqdm may already be imported). resect's own progress uses rich."""
    import tqdm.std

    init = tqdm.std.tqdm.__init__
    if getattr(init, "resect_quiet", False):
        return

    def quiet_init(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    quiet_init.resect_quiet = True
    tqdm.std.tqdm.__init__ = quiet_init


def main() -> None:
    """Console entry point: one line on stderr, never a traceback (unless --verbose): a ResectError
    with its exit code; an unreadable path, a non-UTF-8 file or an unexpected error with exit 2,
    never 1, which means a breached gate."""
    from resect.errors import ResectError

    _one_line_usage_errors()
    _verbose_first()
    try:
        app(prog_name="resect")
    except ResectError as exc:
        _say(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("error: interrupted")
        sys.exit(130)
    except OSError as exc:  # a path that cannot be read or written: the system says why
        import errno

        _traceback_if_verbose()
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        named = (exc.filename2 or exc.filename) if full else exc.filename  # a copy's error names its source first
        where = f": '{named}'" if named else ""
        todo = "Free some space or write elsewhere." if full else "Check the path and its permissions."
        _say(f"error: {exc.strerror or exc}{where}. {todo}")
        sys.exit(2)
    except MemoryError:
        _traceback_if_verbose()
        _say("error: out of memory. Use a smaller input, --batch-size or --limit, or a machine with more memory.")
        sys.exit(2)
    except RecursionError:
        _traceback_if_verbose()
        _say("error: an input is nested too deeply to read (a damaged or hostile file). Check the files passed.")
        sys.exit(2)
    except UnicodeDecodeError as exc:
        _traceback_if_verbose()
        _say(f"error: an input file is not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as UTF-8.")
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - never a traceback (unless --verbose), never the exit code of a breached gate
        _traceback_if_verbose()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
        _say(
            f"error: unexpected {type(exc).__name__} ({detail}). Nothing was verified; check the inputs, "
            "rerun with --verbose for the traceback, and report it if they are valid."
        )
        sys.exit(2)


def _say(line: str) -> None:
    """An error line on stderr; a path that is not valid text (a file name's undecodable bytes) is
    written with backslash escapes rather than failing the message itself."""
    typer.echo(line.encode("utf-8", "backslashreplace").decode("utf-8"), err=True)


def _one_line_usage_errors() -> None:
    """Command-line parse errors (a missing option, a value of the wrong type) as one `error:` line,
    like every other refusal, instead of typer's boxed panel; the exit code stays click's 2."""
    from typer import rich_utils

    def one_line(exc) -> None:
        ctx = getattr(exc, "ctx", None)
        hint = f" See '{ctx.command_path} --help'." if ctx is not None else ""
        _say(f"error: {exc.format_message().rstrip('.')}.{hint}")

    rich_utils.rich_format_error = one_line


VERBOSE = ("--verbose", "-v")


def _verbose_first() -> None:
    """`-v` anywhere on the line (`resect info MODEL -v`) means what it means first: the flag
    belongs to the root command, so it is moved there."""
    args = sys.argv[1:]
    if "--" in args:
        args, rest = args[: args.index("--")], args[args.index("--") :]
    else:
        rest = []
    flags = [a for a in args if a in VERBOSE]
    if flags:
        sys.argv[1:] = ["--verbose", *[a for a in args if a not in VERBOSE], *rest]


def _verbose() -> bool:
    return sys.argv[1:2] == ["--verbose"] or any(arg in VERBOSE for arg in sys.argv[1:2])


def _traceback_if_verbose() -> None:
    """With --verbose, the traceback of an unexpected error on stderr; the exit code stays 2."""
    if _verbose():
        import traceback

        traceback.print_exc()
