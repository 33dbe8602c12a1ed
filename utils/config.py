"""Every script's settings: one frozen dataclass per script, read from the command line by argparse.

A field is declared with `knob(default, help)`. On the command line each field is `--name value` (or
`--name=value`; `-` may stand for `_`), booleans `--name` / `--no_name` (or `--name false`), sizes `H,W`,
lists of names `a,b` and of integers `250,1000`. `--config FILE` reads a YAML mapping of fields, below the
flags in precedence; `--print_config` prints the resolved config as YAML and stops. `run(main, Config)` is
each script's entry point: a mistyped flag stops before any work with the closest flag's name, a user error
(ValueError or OSError) ends with one line `error: ...`, and Ctrl-C with `interrupted`; `--debug` or
PIPS_DEBUG=1 shows the traceback.
"""

import argparse
import dataclasses
import difflib
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

DEBUG_ENV = "PIPS_DEBUG"
USAGE_EXIT = 2  # exit status of a flag or config error, before any work
ERROR_EXIT = 1  # exit status of a user error met while working
INTERRUPT_EXIT = 130  # Ctrl-C, as a shell reports it

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "none"}

Config = TypeVar("Config")


class UsageError(ValueError):
    """A flag or a config-file entry that the script does not take, or a value that does not fit its type."""


def knob(default: Any, help: str, aliases: tuple[str, ...] = ()) -> Any:
    """A config field with its default, its one-line meaning (shown by --help) and any former names its flag
    still answers to."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": aliases})


def _kinds(annotation: object) -> tuple[object, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_size(kind: object) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, int)


def _is_names(kind: object) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...)


def _is_ints(kind: object) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, ...)


def _choices(kind: object) -> tuple[object, ...]:
    return typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()


def _describe(kind: object) -> str:
    if _is_size(kind):
        return "H,W (two integers, e.g. 256,384)"
    if _is_names(kind):
        return "a comma-separated list"
    if _is_ints(kind):
        return "a comma-separated list of integers"
    if choices := _choices(kind):
        return "one of " + ", ".join(map(str, choices))
    return _EXPECTED.get(kind, str(kind))


def _metavar(annotation: object) -> str:
    for kind in _kinds(annotation):
        if _is_size(kind):
            return "H,W"
        if _is_names(kind):
            return "A,B,..."
        if _is_ints(kind):
            return "INT,INT,..."
        if choices := _choices(kind):
            return "{" + ",".join(map(str, choices)) + "}"
        if kind in (int, float):
            return kind.__name__.upper()
        if kind is str:
            return "TEXT"
    return "VALUE"


def _from_text(text: str, kind: object) -> object:
    """`text` (a flag's value) as `kind`; ValueError when it is not one."""
    if kind is bool and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    if kind is type(None) and text.lower() == "none":
        return None
    if kind in (int, float):
        return kind(text)
    if kind is str:
        return text
    if _is_size(kind):
        parts = text.split(",")
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    if _is_names(kind):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if _is_ints(kind):
        return tuple(int(part) for part in text.split(",") if part.strip())
    if text in map(str, _choices(kind)):
        return next(c for c in _choices(kind) if str(c) == text)
    raise ValueError(text)


def _from_value(value: object, kind: object) -> object:
    """A value from YAML or JSON (a config file, a checkpoint's config) as `kind`; ValueError if not one."""
    if isinstance(value, str) and kind is not str:
        return _from_text(value, kind)
    if kind is type(None) and value is None:
        return None
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if _is_size(kind) and isinstance(value, (list, tuple)) and len(value) == 2:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
    if _is_names(kind) and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if _is_ints(kind) and isinstance(value, (list, tuple)):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
    if value in _choices(kind):
        return value
    raise ValueError(value)


def convert(name: str, value: object, annotation: object, where: str = "") -> object:
    """`value` (text from the command line, or a value from a file) as the field `name` annotates it;
    UsageError naming the flag (and `where` it came from) when it does not fit."""
    for kind in _kinds(annotation):
        try:
            return _from_text(value, kind) if not where else _from_value(value, kind)
        except ValueError:
            continue
    expected = " or ".join(_describe(kind) for kind in _kinds(annotation))
    source = f" in {where}" if where else ""
    raise UsageError(f"--{name}{source} takes {expected}, got {value!r}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _types(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"; did you mean --{close[0]}?" if close else " (--help lists the flags)"


class _Bool(argparse.Action):
    """--name, --name true/false; the negative spellings --no_name, --no-name and --noname."""

    def __init__(self, option_strings: Sequence[str], dest: str, negative: bool = False, **kw: Any) -> None:
        self.negative = negative
        super().__init__(option_strings, dest, nargs=0 if negative else "?", **kw)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        if self.negative:
            setattr(namespace, self.dest, False)
        elif values is None:
            setattr(namespace, self.dest, True)
        else:
            setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("argument "):  # "argument --B/-B: <what>": the flag's own message
            flag, _, what = message.removeprefix("argument ").partition(": ")
            flag = flag.split("/")[0]
            if what.startswith("--"):
                message = what
            elif what.startswith("expected one argument"):
                message = f"{flag} needs a value"
            else:
                message = f"{flag}: {what}"
        raise UsageError(message)


def _flag_type(name: str, annotation: object) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return convert(name, text, annotation)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _aliases(f: dataclasses.Field) -> list[str]:
    """The hidden spellings of a field's flag: --na-me for --na_me, -X for a one-letter name, and the
    knob's former names."""
    names = [f.name, *f.metadata.get("aliases", ())]
    spellings = [f"--{n.replace('_', '-')}" for n in names if "_" in n] + [f"--{n}" for n in names[1:]]
    return spellings + [f"-{f.name}"] * (len(f.name) == 1)


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The argparse parser of a config dataclass: every field a flag whose value is left unset unless given,
    plus --config, --print_config and --debug."""
    parser = _Parser(
        prog=f"python {prog}",
        usage=f"python {prog} [--flag value ...]",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    hints = _types(cls)
    for name, f in _fields(cls).items():
        annotation = hints[name]
        default = "" if f.default is None else f" (default: {_shown(f.default)})"
        text = (f.metadata.get("help", "") + default).replace("%", "%%")  # argparse formats help with %
        kw: dict[str, Any] = {"dest": name, "type": _flag_type(name, annotation)}
        if bool in _kinds(annotation):
            kw |= {"action": _Bool, "metavar": "BOOL"}
            negatives = [f"--no_{name}", f"--no-{name.replace('_', '-')}", f"--no{name}"]
            parser.add_argument(
                *dict.fromkeys(negatives), dest=name, action=_Bool, negative=True, help=argparse.SUPPRESS
            )
        else:
            kw["metavar"] = _metavar(annotation)
        parser.add_argument(f"--{name}", help=text, **kw)
        if aliases := _aliases(f):
            parser.add_argument(*aliases, help=argparse.SUPPRESS, **kw)
    parser.add_argument(
        "--config", action="append", metavar="FILE", help="YAML file of settings, below the flags; repeatable"
    )
    parser.add_argument("--print_config", action="store_true", help="print the resolved config and stop")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error ({DEBUG_ENV}=1)"
    )
    return parser


def _shown(value: object) -> str:
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return ",".join(map(str, value))
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return repr(value) if isinstance(value, str) else str(value)


class Flags(NamedTuple):
    """What a command line asked for."""

    given: dict[str, Any]  # the fields set by flags, converted to their types
    files: tuple[Path, ...]  # --config files, in the order given
    print_config: bool  # --print_config
    debug: bool  # --debug or PIPS_DEBUG=1


def read_command_line(cls: type, argv: Sequence[str], prog: str, description: str = "") -> Flags:
    """Flags of `argv` for the config dataclass `cls`. Raises UsageError for an unknown flag (naming the
    closest one), a stray argument or a value that does not fit its field."""
    parser = build_parser(cls, prog, description)
    namespace, extra = parser.parse_known_args(list(argv))
    if extra:
        token = extra[0]
        if not token.startswith("-") or token == "-":
            raise UsageError(f"unexpected argument {token!r}: flags take the form --name value")
        name = token.lstrip("-").split("=", 1)[0].replace("-", "_")
        raise UsageError(f"unknown flag {token.split('=', 1)[0]}{_suggest(name, list(_fields(cls)))}")
    given = vars(namespace)
    files = tuple(Path(p) for p in given.pop("config", []))
    print_config = given.pop("print_config", False)
    debug = given.pop("debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return Flags(given, files, print_config, debug)


def read_file(path: str | Path, cls: type) -> dict[str, Any]:
    """The settings of a YAML config file, each checked against the field of `cls` it names."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config: no such file: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"--config {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"--config {path} must hold a mapping of settings (name: value)")
    return check_values(values, cls, str(path))


def check_values(values: Mapping[str, Any], cls: type, where: str) -> dict[str, Any]:
    """`values` (from a file or a checkpoint) converted to the types of the fields of `cls` they name;
    UsageError naming `where` for an unknown name or a value that does not fit."""
    hints, names = _types(cls), list(_fields(cls))
    out = {}
    for name, value in values.items():
        if name not in hints:
            raise UsageError(f"{where}: unknown setting {name!r}{_suggest(str(name), names)}")
        out[name] = convert(name, value, hints[name], where)
    return out


def require(ok: bool, name: str, what: str, value: object) -> None:
    """UsageError `--name must be <what>, got <value>` unless `ok`: for a config's checks of its values."""
    if not ok:
        raise UsageError(f"--{name} must be {what}, got {_shown(value)}")


def resolve(cls: type[Config], *layers: Mapping[str, Any]) -> Config:
    """`cls` built from its defaults overridden by each layer in turn: the last layer wins."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return cls(**merged)


def to_yaml(config: object) -> str:
    """A config dataclass as YAML that --config reads back (sizes and lists as YAML lists)."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return yaml.safe_dump(values, sort_keys=False)


def one_line(err: BaseException) -> str:
    """The message of `err` on one line; of an error re-raised from a DataLoader worker, the worker's message
    without its traceback."""
    text, last = str(err), f"\n{type(err).__name__}: "
    if "Original Traceback (most recent call last)" in text and last in text:
        text = text.rsplit(last, 1)[1]
    return " ".join(text.split()) or type(err).__name__


def default_resolve(cls: type[Config], flags: Flags) -> tuple[Config, list[str]]:
    """The config of a script without layers of its own (defaults < --config files < flags), no notes."""
    return resolve(cls, *(read_file(path, cls) for path in flags.files), flags.given), []


Resolver = Callable[[type[Config], Flags], tuple[Config, list[str]]]


def run(
    main: Callable[[Config], None],
    cls: type[Config],
    resolve_config: Resolver = default_resolve,
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
) -> None:
    """Read the command line, resolve the config and call `main` with it, as the module docstring describes.

    Args:
        main: the script's work, called with the resolved config.
        cls: the script's frozen config dataclass.
        resolve_config: builds the config from the flags (a script's own precedence) and lines that tell
            how, printed before `main` runs (as comments above the YAML of --print_config).
        argv: the arguments after the program name; default sys.argv[1:].
        prog: the program name that heads --help; default the script's file name.
        description: the text that heads --help (say, for one of a script's modes); default the docstring
            of `main`'s module.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).name
    if description is None:
        module = sys.modules.get(getattr(main, "__module__", None) or "")
        description = (getattr(module, "__doc__", None) or "").strip()
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        flags = read_command_line(cls, argv, prog, description)
        config, notes = resolve_config(cls, flags)
    except UsageError as err:
        if debug:
            raise
        sys.stderr.write(f"error: {err}\n")
        sys.exit(USAGE_EXIT)
    except (OSError, ValueError) as err:
        if debug:
            raise
        sys.stderr.write(f"error: {one_line(err)}\n")
        sys.exit(ERROR_EXIT)
    if flags.print_config:
        sys.stdout.write("".join(f"# {note}\n" for note in notes) + to_yaml(config))
        return
    for note in notes:
        sys.stdout.write(f"{note}\n")
        sys.stdout.flush()
    try:
        main(config)
    except (OSError, ValueError) as err:
        if debug:
            raise
        sys.stderr.write(f"error: {one_line(err)}\n")
        sys.exit(ERROR_EXIT)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(INTERRUPT_EXIT)
