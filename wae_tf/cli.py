"""absl flags mirroring Config's fields, experiments by name and flagfiles that include each
other, paths as users type them, and the one-line error handling of the entry points."""

import dataclasses
import logging
import os
import re
import shlex
import sys
import tempfile
import time
import traceback
from typing import List, Optional

from absl import flags
from absl import logging as absl_logging

from wae_tf import config as config_lib
from wae_tf import scripts
from wae_tf.errors import ConfigError, NonFiniteLossError, Preempted, error_summary

FLAGS = flags.FLAGS


class PathParser(flags.ArgumentParser):
    """A path flag's value as the shell would have expanded it: `~` and $VARIABLES."""

    syntactic_help = "a path; ~ and $VARIABLES are expanded"

    def parse(self, argument):
        return expand_path(argument)

    def flag_type(self):
        return "path"


def expand_path(path: Optional[str]) -> Optional[str]:
    """`~`, `~user` and $VARIABLES expanded, as a shell does outside quotes (None and "" kept)."""
    return os.path.expanduser(os.path.expandvars(path)) if path else path


def DEFINE_path(name: str, default, help_text: str, **kwargs):  # noqa: N802 (absl's style)
    """A string flag holding a path, expanded like the shell does (see PathParser). It belongs
    to the calling module, as flags.DEFINE_string's would (so --help lists it there)."""
    caller = sys._getframe(1).f_globals.get("__name__")
    kwargs.setdefault("module_name", sys.argv[0] if caller == "__main__" else caller)
    return flags.DEFINE(PathParser(), name, default, help_text,
                        serializer=flags.ArgumentSerializer(), **kwargs)


def validate_int_list(name: str, flag_values=FLAGS) -> None:
    """Make the parse of list flag `name` fail (one line, exit 2) unless it holds integers."""
    flags.register_validator(
        name, lambda values: all(re.fullmatch(r"\s*-?\d+\s*", v) for v in values),
        message=f"--{name} takes comma-separated integers", flag_values=flag_values)


def define_config_flags(flag_values=FLAGS, names=None) -> None:
    """Define one flag per Config field (or per field of `names`), with the field's default and
    help text, and (for all fields) --experiment: a packaged flagfile by name, read before the
    flags (see parse_flags)."""
    kw = dict(flag_values=flag_values)
    if names is None and "experiment" not in flag_values:
        flags.DEFINE_string("experiment", None, "A packaged experiment by name, e.g. "
                            "fashion_mnist_cpu (a flagfile of flags/; later flags override it); "
                            "'list' lists them.", **kw)
    for field in config_lib.config_fields():
        if names is not None and field.name not in names:
            continue
        help_text = field.metadata.get("help", field.name)
        if field.name in config_lib.PATH_FIELDS:
            DEFINE_path(field.name, field.default, help_text, **kw)
        elif field.name in config_lib.CHOICES:
            choices = config_lib.CHOICES[field.name]
            flags.DEFINE_enum(field.name, field.default, choices, help_text, **kw)
        elif field.type in (bool, "bool"):
            flags.DEFINE_bool(field.name, field.default, help_text, **kw)
        elif field.type in (int, "int"):
            flags.DEFINE_integer(field.name, field.default, help_text, **kw)
        elif field.type in (float, "float"):
            flags.DEFINE_float(field.name, field.default, help_text, **kw)
        else:
            flags.DEFINE_string(field.name, field.default, help_text, **kw)


def flagfiles_dir() -> str:
    """The experiments' flagfiles: the copy an installed package carries (wae_tf/flags, see
    pyproject.toml), else flags/ of the source checkout the package runs from (or is installed
    editable from). They include each other as `flags/<name>.cfg`: read them from its parent."""
    package = os.path.dirname(os.path.abspath(__file__))
    candidates = (os.path.join(package, "flags"), os.path.join(os.path.dirname(package), "flags"))
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    raise ConfigError(f"The experiments' flagfiles are in neither {candidates[0]} nor "
                      f"{candidates[1]}: reinstall wae-tf (its package carries them) or run "
                      "from a checkout of the repository.")


def experiments() -> dict:
    """Packaged experiment name -> the first sentence of its flagfile's leading comment."""
    found = {}
    directory = flagfiles_dir()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".cfg"):
            comment = []
            with open(os.path.join(directory, name)) as f:
                for line in f:
                    if not line.startswith("#"):
                        break
                    comment.append(line.lstrip("#").strip())
            sentence = " ".join(comment).split(". ")[0].rstrip(".")
            found[name[:-4]] = sentence if len(sentence) <= 100 else sentence[:97] + "..."
    return found


def _include_path(path: str, including_dir: str) -> str:
    """Where a --flagfile=PATH read in `including_dir` is: relative to the including file, else
    to the working directory, else (for `flags/x.cfg`) to the flagfiles' parent directory."""
    path = expand_path(path)
    candidates = [os.path.join(including_dir, path), path]
    if not os.path.isabs(path):
        candidates.append(os.path.join(os.path.dirname(flagfiles_dir()), path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"--flagfile={path}: no such file (looked in {including_dir or '.'}, the "
                      "working directory and the packaged flags/).")


def _flagfile_args(path: str, seen: tuple) -> List[str]:
    """The flags of one flagfile (one per line; # and // comments), its includes expanded."""
    if path in seen:
        raise ConfigError(f"--flagfile={path} includes itself (through {' -> '.join(seen)}).")
    with open(path) as f:
        lines = [line.strip() for line in f]
    args = [line for line in lines if line and not line.startswith(("#", "//"))]
    return expand_flagfiles(args, os.path.dirname(path), seen + (path,))


def expand_flagfiles(args: List[str], including_dir: str = "", seen: tuple = ()) -> List[str]:
    """`args` with each --flagfile=PATH and --experiment=NAME replaced by the flags it holds, in
    place (later flags still override earlier ones). Includes resolve relative to the including
    file (see _include_path), so a flagfile works from any directory, installed or in a checkout."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in ("flagfile", "experiment"):
            if not eq:
                if i + 1 == len(args):
                    raise ConfigError(f"--{name} needs a value.")
                i, value = i + 1, args[i + 1]
            if name == "experiment":
                path = os.path.join(flagfiles_dir(), f"{value}.cfg")
                if not os.path.isfile(path):
                    raise ConfigError(f"--experiment={value} is not a packaged experiment; "
                                      f"choose one of {', '.join(experiments())}.")
            else:
                path = _include_path(value, including_dir)
            out += _flagfile_args(path, seen)
        else:
            out.append(arg)
        i += 1
    return out


def parse_flags(argv: List[str], known_only: bool = False) -> List[str]:
    """absl's parser (app.run's flags_parser) after expand_flagfiles; --experiment=list prints
    the packaged experiments and exits. A bad flagfile or flag is one line on stderr (exit 2).
    `known_only`: leave flags this program does not define in the returned list."""
    if any(a in ("--experiment=list", "-experiment=list") for a in argv[1:]) or (
            "--experiment" in argv[1:-1] and argv[argv.index("--experiment") + 1] == "list"):
        for name, about in experiments().items():
            print(f"{name:24s} {about}")
        sys.exit(0)
    try:
        argv = argv[:1] + expand_flagfiles(argv[1:])
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        return FLAGS(argv, known_only=known_only)
    except flags.Error as error:  # one line, exit 2 (as for every bad input), not absl's two
        print(f"error: {' '.join(str(error).split())} (--helpshort lists the flags).",
              file=sys.stderr)
        sys.exit(2)


def config_from_args(args: List[str]) -> config_lib.Config:
    """The validated Config of command-line style `args` (flagfiles and experiments included),
    parsed apart from the process's own flags."""
    values = flags.FlagValues()
    define_config_flags(values)
    values(["wae_tf", *expand_flagfiles(args)])
    return config_from_flags(values)


def config_from_flags(flag_values=FLAGS) -> config_lib.Config:
    """The validated Config of the parsed command line."""
    values = {f.name: flag_values[f.name].value for f in config_lib.config_fields()}
    return config_lib.Config(**values).validate()


def explicit_config_flags() -> dict:
    """The Config fields the user set on the command line or in a flagfile."""
    return {f.name: FLAGS[f.name].value for f in config_lib.config_fields()
            if FLAGS[f.name].present}


# What TensorFlow prints while it loads, before its C++ logging reads TF_CPP_MIN_LOG_LEVEL: INFO
# and WARNING lines (the oneDNN notice, "Could not find cuda drivers", the CPU instructions).
_STARTUP_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog|[IW]\d{4} "
                            r"|To enable the following instructions:")
# The CUDA probe's error on a machine without a GPU (dropped only when no GPU was found).
_NO_GPU_PROBE = re.compile(r"E\d{4} .*(cuInit|cuda_platform|cuda_driver|cudart)")


def import_tensorflow():
    """TensorFlow, imported and its devices probed without its start-up INFO and WARNING lines
    and, where no GPU exists, without the CUDA probe's error. Everything else it printed is
    passed on. A user's own TF_CPP_MIN_LOG_LEVEL or --verbosity >= 1 keeps everything (but
    matplotlib's debug lines, its font search, which would bury wae_tf's own)."""
    logging.getLogger("matplotlib").setLevel("INFO")
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or (FLAGS.is_parsed() and FLAGS.verbosity >= 1):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        return tf
    # C++ INFO and WARNING lines once its logging is up (a failing op's "Local rendezvous is
    # aborting" would precede our one-line error); errors stay.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        gpus = None
        try:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            gpus = tf.config.list_physical_devices("GPU")  # physical only: no runtime yet
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not (_STARTUP_NOISE.match(line) or (gpus == [] and _NO_GPU_PROBE.match(line))):
                    sys.stderr.write(line)
    tf.get_logger().setLevel("WARNING")  # TF's own Python INFO lines (saving, assets, ...)
    absl_logging.get_absl_logger().addFilter(_library_info_filter)  # and those through absl
    return tf


def _library_info_filter(record) -> bool:
    """Keeps a log record unless it is an INFO line of TensorFlow's or Keras's own code."""
    return record.levelno > 20 or not re.search(r"[/\\](tensorflow|keras|tf_keras)[/\\]",
                                                record.pathname or "")


def run_reporting_user_errors(function, *args, command: Optional[str] = None) -> int:
    """Run `function` and return the exit code: user errors (bad flags, data or workdirs, NaN
    losses) become one line on stderr; so does any other exception (TensorFlow's included),
    naming the command, its input paths and a log file holding the traceback (exit 1)."""
    try:
        function(*args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Preempted as error:  # 128 + the signal's number, as if killed: schedulers restart
        print(f"stopped: {error}", file=sys.stderr)
        return 128 + error.signum
    except KeyboardInterrupt:  # SIGINT where no StopSignals was installed (Python's default)
        print("stopped: SIGINT; rerun the same command to resume from the last checkpoint.",
              file=sys.stderr)
        return 130
    except Exception as error:  # pylint: disable=broad-except; a bug or an unforeseen input
        print(unexpected_error_line(error, command or command_name()), file=sys.stderr)
        return 1
    return 0


def unexpected_error_line(error: Exception, command: str) -> str:
    """The one line reporting an unexpected `error` of `command` (being handled): what failed,
    on which inputs, and the log file its traceback was written to (error_log)."""
    inputs = " ".join(f"--{name}={shlex.quote(value)}" for name, value in input_paths().items())
    log = error_log(command, "".join(traceback.format_exception(error)))
    where = f"the traceback is in {log}" if log else "no log file could be written"
    return (f"error: {command}{' ' + inputs if inputs else ''} failed unexpectedly "
            f"({type(error).__name__}: {error_summary(error)}); {where}. Please report it.")



def command_name() -> str:
    """The running command as its user typed it: `wae-<name>`, `python -m wae_tf.<name>` for
    entry points without a console script, else the program's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec else ""
    if module.startswith("wae_tf."):
        name = module[len("wae_tf."):]
        return f"wae-{name}" if name in scripts.COMMANDS else f"python -m {module}"
    return os.path.basename(sys.argv[0]) or "wae_tf"


def input_paths() -> dict:
    """The path flags given on the command line (or in a flagfile): flag name -> path."""
    if not FLAGS.is_parsed():
        return {}
    found = {}
    for name in FLAGS:
        flag = FLAGS[name]
        if name == flag.name and isinstance(flag.parser, PathParser) and flag.present:
            found[name] = flag.value
    return found


def error_log(command: str, text: str) -> Optional[str]:
    """Write `text` (a traceback) to a new file named after the command, the time and the pid,
    under the cache root's logs/ (fileio.cache_root), else the temporary directory; its path,
    or None if neither is writable. Never in the user's workdir."""
    name = "{}-{}-{}.log".format(re.sub(r"[^\w.-]+", "_", command.replace("python -m ", "")),
                                 time.strftime("%Y%m%d-%H%M%S"), os.getpid())
    header = (f"{' '.join([command, *map(shlex.quote, sys.argv[1:])])}\n"
              f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n")
    for directory in (_logs_dir(), tempfile.gettempdir()):
        if not directory:
            continue
        path = os.path.join(directory, name)
        try:
            os.makedirs(directory, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(header + text)
            return path
        except OSError:
            continue
    return None


def _logs_dir() -> Optional[str]:
    """<cache root>/logs; None if wae_tf.fileio (which loads TensorFlow) cannot be imported."""
    try:
        if "tensorflow" not in sys.modules:
            import_tensorflow()  # quietly: the command failed before loading it
        from wae_tf import fileio  # pylint: disable=import-outside-toplevel
    except Exception:  # pylint: disable=broad-except; a broken install: use the fallback
        return None
    return os.path.join(fileio.cache_root(), "logs")


def check_no_arguments(argv: List[str]) -> None:
    """ConfigError for positional arguments (every input is a --flag)."""
    if len(argv) > 1:
        raise ConfigError(f"Unexpected arguments: {' '.join(argv[1:])} (inputs are flags, "
                          "e.g. --workdir=DIR; --helpshort lists them).")


def config_from_dict_with_flags(saved: config_lib.Config) -> config_lib.Config:
    """A run's saved Config with the fields given explicitly on the command line."""
    return dataclasses.replace(saved, **explicit_config_flags()).validate()
