"""A command's options as data: config files, the options a run used, and the one type check.

- ``--config FILE`` (``score``, ``select``, ``prune``, ``compare``): a TOML file of options by their flag
  names, ``surrogate-epochs = 3`` or ``surrogate_epochs = 3``. A command reads the file's top-level keys
  and its own table (``[prune]``: it wins over the top level) and skips the tables of the other
  commands; options on the command line win over the file. An unknown key, an argument (DATA, RUN),
  a value of the wrong type or out of range is refused with one line naming the file and the key.
- Every such command records the options it ran with, by flag name, in its run folder's manifest
  (``options.COMMAND``; the run folder is ``--out``, else RUN); ``dealrec config-from-run RUN`` prints
  them as a config file, so ``--config`` replays the run.
- ``check_value`` is the type check of a config file's values and of the Python API's arguments
  (``dealrec.api``): the Python type the option takes, then click's own conversion (choices, ranges).

All of it is generic over click commands: nothing here names an option of a command.
"""
from __future__ import annotations

import contextlib
import functools
import json
import keyword
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import click

from dealrec.manifest import MANIFEST_FILE, RunManifest, update_manifest
from dealrec.strata import AUTO_ALLOCATION, AUTO_FALLBACK
from dealrec_core import storage
from dealrec_core.errors import DealrecError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:   # Python 3.10: the same parser, from PyPI (pyproject.toml pulls it in there only)
    import tomli as tomllib

CONFIG_COMMANDS = ("score", "select", "prune", "compare")   # the commands that take --config
# options added after runs were first recorded, with the value those runs had (their default then): a run
# replayed from an older record gets that value, not today's default
LEGACY_VALUES = {"score": {"influence-v": "measured"}, "prune": {"influence-v": "measured", "allocation": "equal"},
                 "select": {"allocation": "equal"}, "compare": {"allocation": "equal"}}
# prune's selection options default to "not set" (None) and take the selection's defaults, which change (lambda:
# 0.3 until 2026-11-27, 0 since; the hard prune of dealrec and influence 0.1 until session 16, 0 since), and so does
# select's --hard-prune (the method's share) and --allocation (the method's: equal until session 19, auto for dealrec
# and influence since): a run's config gives the value its selection used, from the manifest
RESOLVED_BY_SELECTION = {"prune": {"lambda": "lambda", "k": "k", "hard-prune": "hard_prune",
                                   "allocation": "allocation"},
                         "select": {"hard-prune": "hard_prune", "allocation": "allocation"}}
OPTIONS_KEY = "options"        # the manifest's section: {command: {flag: value}}
NOT_RECORDED = ("out",)        # where the run went is not an option of the run


# ----------------------------------------------------------------------------- options by flag name

def flag_name(param: click.Parameter) -> str:
    """An option's flag without its dashes (``--surrogate-epochs`` -> ``surrogate-epochs``)."""
    long = [o for o in param.opts if o.startswith("--")]
    return (long or param.opts)[0].lstrip("-")


def python_name(flag: str) -> str:
    """The Python API's keyword for a flag: ``surrogate-epochs`` -> ``surrogate_epochs``, ``lambda`` -> ``lambda_``."""
    name = flag.replace("-", "_")
    return f"{name}_" if keyword.iskeyword(name) else name


def option_flags(command: click.Command) -> dict[str, click.Option]:
    """``{flag: option}`` of every option a config file or a record may set (not --help, not --config)."""
    return {flag_name(p): p for p in command.params
            if isinstance(p, click.Option) and p.expose_value and p.name not in ("help", "config")}


def _describe(value) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
    return f"{kind} ({value!r})" if not isinstance(value, (list, dict)) else kind


def _check_type(t: click.ParamType, value) -> None:
    """``ValueError`` unless ``value`` has the Python type an option of type ``t`` takes (an integer option
    refuses ``3.5`` and ``"3"``; a number option takes an integer)."""
    if isinstance(t, click.types.BoolParamType):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(t, click.types.IntParamType):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(t, click.types.FloatParamType):
        ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(t, click.Path):
        ok, wanted = isinstance(value, (str, os.PathLike)), "a path (a string)"
    elif isinstance(t, (click.types.StringParamType, click.Choice)):
        ok, wanted = isinstance(value, str), "a string"
    else:   # a type of the project's own (a seed): a scalar, which the type's convert judges
        ok, wanted = isinstance(value, (str, int, float)) and not isinstance(value, bool), "a value"
    if not ok:
        raise ValueError(f"expected {wanted}, got {_describe(value)}")


def check_value(param: click.Parameter, value, ctx: click.Context | None = None):
    """``value`` as the option takes it, converted as click converts a command line; ``ValueError``
    with what is wrong: the Python type must be the option's, then the type's own check (a choice, a
    range) runs. An option given several times takes an array."""
    if param.multiple or param.nargs != 1:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected an array, got {_describe(value)}")
        for v in value:
            _check_type(param.type, v)
    else:
        _check_type(param.type, value)
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as e:
        raise ValueError(e.message) from None


def check_options(command: click.Command, options: Mapping[str, Any]) -> dict[str, Any]:
    """``{flag: value}`` checked and converted against ``command``'s options (the Python API's arguments).
    None means "left out" for an option that may be left out; an unknown flag is a bug of the caller."""
    flags = option_flags(command)
    ctx = click.Context(command)
    out = {}
    for flag, value in options.items():
        param = flags[flag]
        if value is None and not param.required:
            out[flag] = None
            continue
        try:
            out[flag] = check_value(param, value, ctx)
        except ValueError as e:
            raise DealrecError(f"--{flag}: {e}") from None
    return out


# ----------------------------------------------------------------------------- config files

def read_config(path: str | Path, command: click.Command) -> dict[str, Any]:
    """``{parameter name: value}`` that the config file ``path`` sets for ``command``."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(path, f"not valid TOML: {e}") from None
    flags = option_flags(command)
    levels: dict[str, dict[str, tuple[str, Any]]] = {"": {}, command.name: {}}   # level -> {flag: (key, value)}
    entries = []
    for key, value in doc.items():
        if isinstance(value, dict) and key in CONFIG_COMMANDS:
            if key == command.name:
                entries += [(key, k, v) for k, v in value.items()]
            continue   # another command's table
        entries.append(("", key, value))
    ctx = click.Context(command)
    values = {}
    for table, key, value in entries:
        where = f"{table}.{key}" if table else key
        flag = key.replace("_", "-")
        param = flags.get(flag)
        if param is None:
            raise InputError(path, _unknown(command, key, value, flags), field=where)
        if flag in levels[table]:
            raise InputError(path, f"given twice (also as '{levels[table][flag][0]}')", field=where)
        levels[table][flag] = (key, value)
        try:
            converted = check_value(param, value, ctx)
        except ValueError as e:
            raise InputError(path, str(e), field=where) from None
        if table or param.name not in values:   # the command's own table wins over the top level
            values[param.name] = converted
    return values


def _unknown(command: click.Command, key: str, value, flags) -> str:
    import difflib   # local, as json below: `dealrec select --help` loads this module and not them

    if isinstance(value, dict):
        return f"unknown table (a config file's tables are named after a command: {', '.join(CONFIG_COMMANDS)})"
    arguments = [p.name for p in command.params if isinstance(p, click.Argument)]
    if key.replace("-", "_") in arguments:
        return f"{key.upper()} is an argument of 'dealrec {command.name}': give it on the command line"
    close = difflib.get_close_matches(key.replace("_", "-"), list(flags), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"'dealrec {command.name}' has no option --{key.replace('_', '-')}{hint}"


def _load_config(ctx: click.Context, param: click.Parameter, value) -> None:
    """``--config``'s callback (eager: it runs before the other options are read): the file's options become
    the command's defaults, so a flag on the command line still wins."""
    if value is None:
        return
    ctx.default_map = {**(ctx.default_map or {}), **read_config(value, ctx.command)}


def run_folder(params: Mapping[str, Any]) -> Path | str | None:
    """Where a command records its options: ``--out``, else its RUN argument (a URI stays text)."""
    folder = params.get("out") or params.get("run")
    if folder is None:
        return None
    return str(folder) if storage.is_uri(folder) else Path(folder)


def recorded_value(value):
    """A value as the manifest records it (JSON): paths as text, tuples as arrays."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [recorded_value(v) for v in value]
    return value


@contextlib.contextmanager
def recording(folder: str | Path | None, command: str, options: Mapping[str, Any]):
    """Run the body, then set ``options.COMMAND`` of ``folder``'s manifest to ``{flag: value}`` (every option
    but NOT_RECORDED). A manifest that cannot take the record is refused before the body runs; a body that
    fails records nothing."""
    if folder is None:
        yield
        return
    with storage.open_location(folder, writes=True, only=MANIFEST_FILE) as local:   # a URI: its manifest only
        RunManifest.read(local)
    yield
    recorded = {flag: recorded_value(v) for flag, v in options.items() if flag not in NOT_RECORDED}
    with storage.open_location(folder, writes=True, only=MANIFEST_FILE) as local:
        update_manifest(local, {OPTIONS_KEY: {command: recorded}}, merge=(OPTIONS_KEY,))


def with_config(command: click.Command) -> click.Command:
    """Give ``command`` a ``--config FILE`` option, and make it record its options in its run's manifest."""
    assert command.name in CONFIG_COMMANDS, command.name
    command.params.append(click.Option(
        ["--config"], type=click.Path(exists=True, dir_okay=False), is_eager=True, expose_value=False,
        callback=_load_config,
        help="TOML file of options by flag name (e.g. surrogate-epochs = 3); the command line wins. "
             "'dealrec config-from-run RUN' writes one from a run."))
    callback = command.callback

    @functools.wraps(callback)
    def run_and_record(**kwargs):
        ctx = click.get_current_context()
        with recording(run_folder(ctx.params), command.name,
                       {flag: ctx.params[p.name] for flag, p in option_flags(command).items()}):
            return callback(**kwargs)

    command.callback = run_and_record
    return command


# ----------------------------------------------------------------------------- a run's options as a config

def toml_value(value) -> str:
    """A TOML literal for a recorded value (a string, a boolean, a number or an array of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)   # Python's repr of a float is a TOML float, inf and nan included
    if isinstance(value, str):
        # JSON's escapes are TOML's (\" \\ \n \t \uXXXX ...); DEL is a control character to TOML, not to JSON
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise DealrecError(f"{value!r}: a recorded option that a config file cannot hold")


def config_from_run(run: str | Path, command: str | None = None) -> str:
    """The options recorded in ``run``'s manifest as a config file: a table for each command (or ``command``'s)."""
    manifest = RunManifest.read(run)
    if not manifest.path.exists():
        raise DealrecError(f"{manifest.path}: no such file (is {run} a run folder?)")
    recorded = manifest.section(OPTIONS_KEY)
    if command is not None:
        recorded = {command: recorded[command]} if command in recorded else {}
    if not recorded:
        what = f"options of 'dealrec {command}'" if command else "options"
        raise DealrecError(f"{manifest.path}: records no {what} (made by the commands {', '.join(CONFIG_COMMANDS)} "
                           f"of a dealrec that records them)")
    lines = [f"# The options recorded in {manifest.path}, for --config: a command reads the top-level keys",
             "# and its own table; options given on the command line win."]
    for name, options in recorded.items():
        if not isinstance(options, dict):
            raise InputError(manifest.path, "not a table of options", field=f"{OPTIONS_KEY}.{name}")
        lines += ["", f"[{name}]"]
        used = manifest.section("selection")
        for flag, value in options.items():
            field = RESOLVED_BY_SELECTION.get(name, {}).get(flag)
            resolved = value is None and field is not None and used.get(field) is not None
            if resolved:
                value = used[field]
            taken = _auto_taken_then(flag, value, used) if field is not None else None
            if taken is not None:
                lines.append(f"{flag} = {toml_value(taken)}   # {value} took {taken} then, a fallback "
                             f"today's {value} does not take ({AUTO_FALLBACK}): the same coreset")
            elif resolved:
                lines.append(f"{flag} = {toml_value(value)}   # not set: the default then, as the "
                             f"selection used it")
            else:
                lines.append(f"# {flag}: not set" if value is None else f"{flag} = {toml_value(value)}")
        for flag, value in LEGACY_VALUES.get(name, {}).items():
            if flag not in options:
                lines.append(f"{flag} = {toml_value(value)}   # recorded before the option existed: the value then")
    return "\n".join(lines) + "\n"


def _auto_taken_then(flag: str, value, used: Mapping[str, Any]) -> str | None:
    """For an ``auto`` allocation whose run fell back to budgets that today's ``auto`` would not fall back to
    (``strata.AUTO_FALLBACK`` changed since): the budgets it took, which select that run's coreset again (auto's
    fallback is the same selection as asking for those budgets). None otherwise: ``auto`` that kept the paper's
    shares, or took today's fallback, decides the same way again."""
    if flag != "allocation" or value != AUTO_ALLOCATION:
        return None
    taken = used.get("allocation_used")
    return taken if taken not in (None, "equal", AUTO_FALLBACK) else None


@click.command("config-from-run")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--command", type=click.Choice(CONFIG_COMMANDS), default=None,
              help="Only this command's options (default: those of every command that recorded them in RUN).")
def config_from_run_command(run, command):
    """Print the options RUN was made with as a config file: 'dealrec config-from-run RUN > run.toml', then
    'dealrec COMMAND ... --config run.toml' runs it again with them."""
    click.echo(config_from_run(run, command), nl=False)


__all__ = ["CONFIG_COMMANDS", "MANIFEST_FILE", "OPTIONS_KEY", "check_options", "check_value", "config_from_run",
           "flag_name", "option_flags", "python_name", "read_config", "recording", "with_config"]
