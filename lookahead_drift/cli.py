"""How every binary ends: exit codes, user errors in one or two lines, tracebacks on --verbose.

Exit codes (all binaries): 0 done; 1 an unexpected error (with its traceback); 2 bad input
(a config value or config file that does not run, a flag, file or workdir the user can fix;
one line); 3 preempted (SIGTERM/SIGINT: state saved, relaunch the same command to continue);
4 stopped on a non-finite loss or gradient, or on non-finite samples (nothing non-finite
saved); 5 an I/O fault: a checkpoint could not be written (disk full, permissions, a lost
mount; the run stops at once, the previous checkpoints intact); 130 interrupted by Ctrl-C where there was nothing to save (or by a second Ctrl-C
while saving).
"""

import logging
import os
import sys
import traceback
from typing import Callable, Sequence

EXIT_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3
EXIT_NONFINITE = 4
EXIT_IO_ERROR = 5
EXIT_INTERRUPTED = 130  # Ctrl-C where nothing needs saving (or a second Ctrl-C)
VERBOSE_FLAG = "--verbose"


class UserError(ValueError):
  """Bad input the user can fix; a binary reports its message in one line and exits 2."""


class Preempted(Exception):
  """Training stopped by SIGTERM/SIGINT after saving; a binary exits 3."""


class NonFiniteError(Exception):
  """Training stopped on a non-finite loss or gradient, or a generator gave non-finite
  samples; a binary exits 4."""


class IOFault(Exception):
  """Writing a checkpoint failed (disk full, permissions, a lost mount); a binary exits 5."""


def exit_code(error: BaseException) -> int | None:
  """The exit code for an error a binary reports in a line, or None for a real crash."""
  if isinstance(error, IOFault):
    return EXIT_IO_ERROR
  if isinstance(error, Preempted):
    return EXIT_PREEMPTED
  if isinstance(error, NonFiniteError):
    return EXIT_NONFINITE
  if isinstance(error, (ValueError, OSError)) or type(error).__name__ == "UsageError":
    return EXIT_USER_ERROR
  return None


def _message(error: BaseException) -> str:
  """The error's text, with the path for OS errors that carry one."""
  if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
    return f"{error.strerror or error}: {error.filename}"
  if isinstance(error, KeyError) and error.args:
    return str(error.args[0])
  return str(error) or type(error).__name__


def report(error: BaseException, code: int, prog: str, verbose: bool) -> None:
  """Prints a known error to stderr: its message and a hint, or its traceback if verbose."""
  if verbose:
    traceback.print_exception(error)
  print(f"{prog}: {_message(error)}", file=sys.stderr)
  if code == EXIT_USER_ERROR and not verbose:
    print(f"({VERBOSE_FLAG} shows the traceback)", file=sys.stderr)


def split_verbose(argv: Sequence[str]) -> tuple[list[str], bool]:
  """argv without --verbose, and whether it was there."""
  rest = [a for a in argv if a != VERBOSE_FLAG]
  return rest, len(rest) != len(argv)


def _quiet_unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
  """Drops the "Event loop is closed" orbax's threads raise after a failed restore."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and "Event loop is closed" in str(error)):
    sys.__unraisablehook__(unraisable)


def run(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
  """Runs `main(argv)` (argv without --verbose) and exits with the documented codes."""
  argv, verbose = split_verbose(sys.argv if argv is None else argv)
  sys.unraisablehook = _quiet_unraisable
  prog = os.path.basename(argv[0]) if argv else "lookahead_drift"
  if prog in ("__main__.py", "-m", "-c"):
    prog = "lookahead_drift"
  try:
    main(argv)
  except SystemExit:
    raise
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
  except BaseException as e:  # pylint: disable=broad-exception-caught
    code = exit_code(e)
    if code is None:
      raise
    report(e, code, prog, verbose)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skips interpreter teardown, where orbax's threads may still be failing after a failed
    # restore; files and the workdir lock were closed by the code that raised.
    os._exit(code)  # pylint: disable=protected-access


def _config_file_error(error: BaseException) -> tuple[str, BaseException] | None:
  """("--config=FILE[:ARG]", the original error) if `error` came from running a config file
  (ml_collections runs FILE's get_config(ARG) while the flags are parsed, and wraps a
  ValueError or TypeError in two more errors, the first with the traceback as text)."""
  chain = [error]
  while chain[-1].__context__ is not None and chain[-1].__context__ not in chain:
    chain.append(chain[-1].__context__)
  for e in chain:
    tb = e.__traceback__
    while tb is not None:
      local = tb.tb_frame.f_locals
      if (tb.tb_frame.f_code.co_name == "parse"
          and type(local.get("self")).__name__ == "ConfigFileFlagParser"):
        return f"--{local['self'].name}={local.get('path')}", chain[-1]
      tb = tb.tb_next
  return None


def _flag_error_message(error: BaseException, argv: list[str]) -> str:
  """One line for an error raised while parsing flags (and the config files they name)."""
  from_file = _config_file_error(error)
  if from_file:
    flag, cause = from_file
    # The line that raised, in the config's own code (after ml_collections' frames); a
    # SyntaxError names its line itself.
    frames = traceback.extract_tb(cause.__traceback__)
    start = max((i + 1 for i, f in enumerate(frames) if "ml_collections" in f.filename),
                default=0)
    frames = [f for f in frames[start:] if not f.filename.startswith("<")]
    where = ("" if isinstance(cause, SyntaxError) or not frames else
             f" ({frames[-1].filename}, line {frames[-1].lineno})")
    text = " ".join(str(cause).split("\n"))
    return f"{flag}: the config file failed: {type(cause).__name__}: {text}{where}"
  while (isinstance(error, AttributeError) and error.args
         and isinstance(error.args[0], BaseException)):
    error = error.args[0]  # ml_collections' AttributeError(KeyError) for an unknown field
  if isinstance(error, KeyError) and error.args:
    key, *hint = str(error.args[0]).split("\n")
    flag = next((f"{a.split('=')[0]}: " for a in argv[1:]
                 if a.startswith("--") and key.strip("'\"") in a.split("=")[0].split(".")), "")
    return " ".join([f"{flag}the config has no field {key}.", *hint])
  return _message(error)


def parse_absl_flags(argv: list[str], verbose: bool = False) -> list[str]:
  """absl flag parsing that reports a bad flag, --config override or config file (one that
  does not run) in one line (exit 2); `verbose` adds the traceback."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-exception-caught
    # flag values and the config files they run: all input the user can fix
    if verbose:
      traceback.print_exception(e)
    print(f"FATAL flags parsing error: {_flag_error_message(e, argv)}\nPass --helpfull to see "
          "flags.", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  for name in list(flags.FLAGS):
    value = flags.FLAGS[name].value
    if type(value).__name__ == "_ErrorConfig":  # ml_collections defers a config file's IOError
      error = object.__getattribute__(value, "_error")
      detail = str(error).strip().splitlines()[-1].strip()  # "[Errno 2] No such file ..."
      print(f"FATAL flags parsing error: --{name}: cannot load the config file: {detail}",
            file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
  return rest


class QuietLibraries(logging.Filter):
  """Drops INFO chatter of orbax (one block per save) and of JAX's backend probing, and,
  unless `verbose`, orbax's error tracebacks (a failed save logs one per thread, ~300 lines;
  the error itself reaches the binary, which reports it in one line)."""

  def __init__(self, verbose: bool = False):
    super().__init__()
    self.verbose = verbose

  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" in record.pathname and record.levelno >= logging.ERROR:
      return self.verbose
    return record.levelno >= logging.WARNING or not any(
        name in record.pathname for name in ("orbax", "xla_bridge"))


def run_absl(main: Callable[[list[str]], object]) -> None:
  """`absl.app.run(main)` with one-line flag errors and the exit codes above."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  verbose = VERBOSE_FLAG in sys.argv
  absl_logging.get_absl_handler().addFilter(QuietLibraries(verbose))
  run(lambda argv: app.run(main, argv=argv,
                           flags_parser=lambda a: parse_absl_flags(a, verbose)))
