"""absl flags mirroring Config's fields, where the experiments' flagfiles are, and the one-line
error handling of the entry points."""

import dataclasses
import os
import sys

from absl import flags

from wae_tf import config as config_lib
from wae_tf.errors import ConfigError, NonFiniteLossError, Preempted

FLAGS = flags.FLAGS


def define_config_flags(flag_values=FLAGS, names=None) -> None:
    """Define one flag per Config field (or per field of `names`), with the field's default and
    help text."""
    kw = dict(flag_values=flag_values)
    for field in config_lib.config_fields():
        if names is not None and field.name not in names:
            continue
        help_text = field.metadata.get("help", field.name)
        if field.name in config_lib.CHOICES:
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


def config_from_flags(flag_values=FLAGS) -> config_lib.Config:
    """The validated Config of the parsed command line."""
    values = {f.name: flag_values[f.name].value for f in config_lib.config_fields()}
    return config_lib.Config(**values).validate()


def explicit_config_flags() -> dict:
    """The Config fields the user set on the command line or in a flagfile."""
    return {f.name: FLAGS[f.name].value for f in config_lib.config_fields()
            if FLAGS[f.name].present}


def run_reporting_user_errors(function, *args) -> int:
    """Run `function`; user errors (bad flags or data, NaN losses) become one line on stderr."""
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
    return 0


def config_from_dict_with_flags(saved: config_lib.Config) -> config_lib.Config:
    """A run's saved Config with the fields given explicitly on the command line."""
    return dataclasses.replace(saved, **explicit_config_flags()).validate()
