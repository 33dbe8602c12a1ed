"""The one entry point of every script: `run(main)`.

Flags are checked against `main`'s keyword-only signature and converted to its annotated types before
`main` is called, so a mistyped flag stops the script before it does any work. `-h`/`--help` lists the
flags with the `# comment` written after each parameter. A user error (ValueError or OSError: a missing
or corrupt file, a bad value) ends the script with one line `error: ...`, and Ctrl-C with `interrupted`;
set PIPS_DEBUG=1 or pass --debug to see the traceback. Any other exception is a bug and keeps its traceback.
"""

import difflib
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

DEBUG_ENV = "PIPS_DEBUG"
USAGE_EXIT = 2  # exit status of a flag error, before any work
ERROR_EXIT = 1  # exit status of a user error met while working
INTERRUPT_EXIT = 130  # Ctrl-C, as a shell reports it

_KNOB = re.compile(r"^\s+(\w+)\s*:[^#]*?#\s*(.+?)\s*$")
_END_OF_SIGNATURE = re.compile(r"^\)\s*(->.*)?:\s*$")
_FLAG = re.compile(r"^--?[A-Za-z_]")
_SIZE = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


class UsageError(ValueError):
    """A flag that `main` does not take, or a value that does not fit its type."""


def flag_comments(fn: Callable) -> dict[str, str]:
    """The `# comment` after each keyword parameter in the source of `fn`'s signature."""
    comments = {}
    for line in inspect.getsource(fn).splitlines()[1:]:
        if _END_OF_SIGNATURE.match(line):
            break
        if m := _KNOB.match(line):
            comments[m.group(1)] = m.group(2)
    return comments


def explain_flags(fn: Callable) -> Callable:
    """Append an Args section built from the `# comment` after each keyword parameter of `fn`, so that
    `help(main)` explains every flag; the comments stay the one place knobs are described."""
    if knobs := flag_comments(fn):
        args = "\n".join(f"    {name}: {comment}" for name, comment in knobs.items())
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}\n".lstrip()
    return fn


def _kinds(annotation: object) -> tuple[object, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_bool(annotation: object) -> bool:
    return bool in _kinds(annotation)


def _is_size(kind: object) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (int, int)


def _metavar(annotation: object) -> str:
    for kind in _kinds(annotation):
        if _is_size(kind):
            return "H,W"
        if kind in (int, float, str):
            return kind.__name__.upper()
    return "VALUE"


def _convert_one(text: str, kind: object) -> object:
    """`text` as `kind`; ValueError when it is not one."""
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
    elif kind is type(None):
        if text.lower() == "none":
            return None
    elif kind in (int, float):
        return kind(text)
    elif _is_size(kind):
        if m := _SIZE.match(text):
            return int(m.group(1)), int(m.group(2))
    elif kind is str or typing.get_origin(kind) is tuple:  # comma lists stay text: main splits them
        return text
    raise ValueError(text)


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", type(None): "none"}


def convert(flag: str, text: str, annotation: object) -> object:
    """The value of `--flag text` as `main` annotates it: bool, int, float, str, `H,W` sizes
    (tuple[int, int]), comma lists (tuple[str, ...], kept as text), and unions of these such as int | None."""
    for kind in _kinds(annotation):
        try:
            return _convert_one(text, kind)
        except ValueError:
            continue
    if any(_is_size(kind) for kind in _kinds(annotation)):
        raise UsageError(f"--{flag} takes H,W (two integers, e.g. 256,384), got {text!r}")
    expected = " or ".join(_EXPECTED.get(kind, str(kind)) for kind in _kinds(annotation))
    raise UsageError(f"--{flag} takes {expected}, got {text!r}")


def _unknown(token: str, names: Sequence[str]) -> UsageError:
    name = token.lstrip("-").split("=", 1)[0].replace("-", "_")
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean --{close[0]}?" if close else " (--help lists the flags)"
    return UsageError(f"unknown flag {token.split('=', 1)[0]}{hint}")


def parse_flags(main: Callable, argv: Sequence[str]) -> dict[str, object]:
    """Keyword arguments of `main` from `--name value`, `--name=value`, `-X value` (one-letter names),
    `--name`/`--noname` for booleans; `-` in names may stand for `_`; a flag given twice takes the last
    value. Raises UsageError for an unknown flag, a stray argument or a value that does not fit the
    parameter's annotation."""
    params = inspect.signature(main, eval_str=True).parameters
    names = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    kwargs: dict[str, object] = {}
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        if not _FLAG.match(token):
            raise UsageError(f"unexpected argument {token!r}: flags take the form --name value")
        key, equals, text = token.lstrip("-").partition("=")
        name, has_value = key.replace("-", "_"), bool(equals)
        if name not in names and name[2:] in names and name.startswith("no") and not has_value:
            if _is_bool(params[name[2:]].annotation):  # --noresume = --resume false
                name, has_value, text = name[2:], True, "false"
        if name not in names or (not token.startswith("--") and len(name) > 1):
            raise _unknown(token, names)
        annotation = params[name].annotation
        if not has_value:
            next_is_value = tokens and not _FLAG.match(tokens[0])
            if _is_bool(annotation) and not (next_is_value and tokens[0].lower() in _TRUE + _FALSE):
                text = "true"
            elif next_is_value:
                text = tokens.pop(0)
            else:
                raise UsageError(f"--{name} needs a value ({_metavar(annotation)})")
        kwargs[name] = convert(name, text, annotation)
    return kwargs


def usage(main: Callable, prog: str) -> str:
    """The --help text: the script's docstring, then each flag with its type, meaning and default."""
    params = inspect.signature(main, eval_str=True).parameters
    comments = flag_comments(main)
    rows = []
    for name, p in params.items():
        if p.kind is not p.KEYWORD_ONLY:
            continue
        spec = f"--{name}" if _is_bool(p.annotation) else f"--{name} {_metavar(p.annotation)}"
        default = "" if p.default is None else f" (default: {p.default!r})"
        rows.append((spec, comments.get(name, "") + default))
    rows.append(("--debug", f"show the traceback of an error (as does {DEBUG_ENV}=1)"))
    rows.append(("-h, --help", "show this text"))
    width = max(len(spec) for spec, _ in rows)
    flags = "\n".join(f"  {spec.ljust(width)}  {text}" for spec, text in rows)
    doc = inspect.cleandoc(sys.modules[main.__module__].__doc__ or "")
    return f"usage: python {prog} [--flag value ...]\n\n{doc}\n\nflags:\n{flags}\n"


def one_line(err: BaseException) -> str:
    """The message of `err` on one line; of an error re-raised from a DataLoader worker, the worker's message
    without its traceback."""
    text, last = str(err), f"\n{type(err).__name__}: "
    if "Original Traceback (most recent call last)" in text and last in text:
        text = text.rsplit(last, 1)[1]
    return " ".join(text.split()) or type(err).__name__


def run(main: Callable, argv: Sequence[str] | None = None) -> None:
    """Run `main` with the flags of `argv` (default: the command line), as described in the module doc."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(usage(main, prog))
        return
    try:
        kwargs = parse_flags(main, argv)
    except UsageError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(USAGE_EXIT)
    try:
        main(**kwargs)
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
