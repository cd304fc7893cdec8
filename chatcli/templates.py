"""Templates (roles): a reusable system prompt, a prompt around the input, and the model to ask.

A template is a TOML file ``NAME.toml`` in the config directory's ``templates/``, or one of the
few built in (a file of the same name replaces a built-in one)::

    description = "Review code"
    system = "You are a careful reviewer. Focus on {focus}."
    prompt = "Review this:\\n\\n{input}"
    temperature = 0.2             # and optionally provider, model
    [vars]                        # defaults for the variables
    focus = "correctness"
    [options]                     # provider options, as -o gives them
    max_tokens = 800

``{input}`` is what the user gave: piped stdin, then the question (in the REPL: the message).
Any other ``{word}`` is a variable, set with ``--var word=value`` or defaulted in ``[vars]``;
a variable with neither is a usage error naming it. ``{{`` and ``}}`` are literal braces; any
other brace is kept as it is (a JSON example in a system prompt needs no escaping). A prompt
without ``{input}`` has the input appended after a blank line. Values are put in as they are:
a value holding ``{x}`` is not expanded again.

Template files are read like config.toml: only when no other user could have written them
(they choose the provider a request goes to), bounded, and their errors name the file and key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from chatcli.errors import ConfigError, UsageError

#: The variable that holds the user's input.
INPUT: Final = "input"
#: How a template is named (its file is NAME.toml).
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A variable, or an escaped brace.
_FIELD: Final = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: The keys a template file may hold, and the types they take.
_KEYS: Final[dict[str, type | tuple[type, ...]]] = {
    "description": str,
    "system": str,
    "prompt": str,
    "provider": str,
    "model": str,
    "temperature": (int, float),
    "vars": dict,
    "options": dict,
}

BUILTIN: Final[dict[str, str]] = {
    "commit": '''\
description = "A commit message for a diff (git diff --staged | chatcli ask -t commit)"
system = """You write git commit messages. Answer with the message alone, no fences and no \\
commentary: a summary line in the imperative mood of at most 72 characters, a blank line, \\
then a short body that says what changed and why, wrapped at 72 columns. Follow the \\
{style} style."""
prompt = "Write the commit message for this change:\\n\\n{input}"
temperature = 0.2

[vars]
style = "repository's usual"
''',
    "explain": '''\
description = "Explain a shell command, part by part"
system = """You explain shell commands to someone who uses a terminal every day. Go through \\
the command part by part (each program, option, pipe and redirection), say what the whole \\
does, and warn plainly about anything that deletes, overwrites or sends data. Be brief."""
prompt = "Explain this command:\\n\\n{input}"
''',
    "review": '''\
description = "Review code: bugs first, then clarity"
system = """You are a careful code reviewer. Focus on {focus}. List real problems first, \\
most serious first, each with the line it concerns and a concrete fix; then, briefly, what \\
could be clearer. Do not rewrite the whole code. Say so when you find nothing wrong."""
prompt = "Review this code:\\n\\n{input}"
temperature = 0.2

[vars]
focus = "correctness, error handling and security"
''',
    "translate": '''\
description = "Translate text (--var to=LANGUAGE; English by default)"
system = """You translate text into {to}. Keep the meaning, tone and formatting (Markdown, \\
code and names stay as they are). Answer with the translation alone."""
prompt = "{input}"
temperature = 0.2

[vars]
to = "English"
''',
}


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str = ""
    system: str | None = None
    prompt: str | None = None
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    defaults: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The file it was read from; ``None`` for a built-in one.
    path: Path | None = None

    @property
    def origin(self) -> str:
        return "built-in" if self.path is None else str(self.path)

    @property
    def variables(self) -> list[str]:
        """The variables the system prompt and the prompt use, ``input`` aside, in order."""
        names: dict[str, None] = {}
        for text in (self.system or "", self.prompt or ""):
            for match in _FIELD.finditer(text):
                if match.group(1) and match.group(1) != INPUT:
                    names[match.group(1)] = None
        return list(names)

    @property
    def takes_input(self) -> bool:
        """Whether the prompt places the input itself (else it is appended, or it is the
        message when there is no prompt)."""
        return any(m.group(1) == INPUT for m in _FIELD.finditer(self.prompt or ""))

    def values(self, given: Mapping[str, str]) -> dict[str, str]:
        """Every variable's value: ``given`` (``--var``) over the defaults. A variable with no
        value, or a ``--var`` the template does not use, is a usage error naming it."""
        used = self.variables
        unknown = [name for name in given if name not in used]
        if unknown:
            have = ", ".join(used) if used else "none"
            raise UsageError(
                f"template {self.name!r} has no variable {unknown[0]!r} (its variables: {have})"
            )
        values = {**self.defaults, **given}
        missing = [name for name in used if name not in values]
        if missing:
            raise UsageError(
                f"template {self.name!r} needs --var {missing[0]}=VALUE"
                + (f" (and {', '.join(missing[1:])})" if missing[1:] else "")
            )
        return {name: values[name] for name in used}

    def system_text(self, values: Mapping[str, str]) -> str | None:
        return None if self.system is None else _fill(self.system, values, None)

    def message(self, text: str, values: Mapping[str, str]) -> str:
        """The message sent for the user's ``text`` (stdin and question, or a REPL line)."""
        if self.prompt is None:
            return text
        if self.takes_input:
            return _fill(self.prompt, values, text)
        filled = _fill(self.prompt, values, None)
        return f"{filled}\n\n{text}" if text else filled

    def needs_input(self) -> bool:
        """Whether asking with no input at all makes no sense (the input is the message)."""
        return self.prompt is None or self.takes_input


@dataclass(frozen=True, slots=True)
class Applied:
    """A template in use, with its variables' values (what a session keeps)."""

    template: Template
    values: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.template.name

    def stored(self) -> str:
        """What the session database keeps: the name and the values, as JSON."""
        return json.dumps({"name": self.name, "vars": dict(self.values)}, ensure_ascii=False)

    def message(self, text: str) -> str:
        return self.template.message(text, self.values)

    @property
    def system(self) -> str | None:
        return self.template.system_text(self.values)


def _fill(text: str, values: Mapping[str, str], input_text: str | None) -> str:
    def replace(match: re.Match[str]) -> str:
        whole, name = match.group(0), match.group(1)
        if name is None:
            return whole[0]  # {{ or }}
        if name == INPUT:
            return input_text if input_text is not None else whole
        return values.get(name, whole)

    return _FIELD.sub(replace, text)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a template name: letters, digits, '.', '_' and '-' "
            "(at most 64, not starting with a punctuation mark)"
        )
    return name


def parse_vars(pairs: Iterable[str]) -> dict[str, str]:
    """``--var name=value`` arguments as a mapping (the last of a name wins)."""
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"--var {pair!r}: give NAME=VALUE, NAME a word like lang or focus")
        if name == INPUT:
            raise UsageError("--var input: {input} is the piped text and the question")
        values[name] = value
    return values


class Templates:
    """The templates of one config directory: its files over the built-in ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}.toml"

    def names(self) -> list[str]:
        """Every template name, sorted; an unreadable directory has none."""
        found = set(BUILTIN)
        try:
            for entry in os.scandir(self.directory):
                if entry.name.endswith(".toml") and _NAME.fullmatch(entry.name[:-5]):
                    found.add(entry.name[:-5])
        except OSError:
            pass
        return sorted(found)

    def get(self, name: str) -> Template:
        """The template ``name``: its file, else the built-in one; else a usage error."""
        template = self.find(name)
        if template is None:
            known = ", ".join(self.names())
            raise UsageError(
                f"no template named {name!r} (templates: {known}; see chatcli templates)"
            )
        return template

    def find(self, name: str) -> Template | None:
        """Like :meth:`get`, ``None`` for a name that has no template (a name that cannot be
        one is still a usage error)."""
        from chatcli.config import read_toml_file

        path = self.path(name)
        data = read_toml_file(path)
        if data is not None:
            return parse(name, data, path)
        return builtin(name) if name in BUILTIN else None

    def source_text(self, name: str) -> str | None:
        """The TOML of template ``name`` as it is (its file, valid or not, else the built-in
        text); ``None`` when there is no such template."""
        from chatcli.config import read_trusted_file

        raw = read_trusted_file(self.path(name))
        if raw is not None:
            return raw.decode("utf-8", errors="replace")
        return BUILTIN.get(name)

    def load(self, stored: str) -> Applied | None:
        """The template a session keeps (see :meth:`Applied.stored`); ``None`` when it has
        none or it is gone. A template that is not valid any longer is a config error."""
        try:
            data = json.loads(stored)
            name, values = data["name"], data.get("vars") or {}
            if not isinstance(name, str) or not isinstance(values, dict):
                return None
        except (ValueError, KeyError, TypeError):
            return None
        try:
            check_name(name)
        except UsageError:
            return None
        template = self.find(name)
        if template is None:
            return None
        kept = {k: str(v) for k, v in values.items() if k in template.variables}
        return Applied(template, template.values(kept))


def builtin(name: str) -> Template:
    import tomllib

    return parse(name, tomllib.loads(BUILTIN[name]), None)


def parse(name: str, data: Mapping[str, Any], path: Path | None) -> Template:
    """A template from a TOML file's contents; errors name the file and key."""
    where = str(path) if path is not None else f"built-in template {name}"
    for key, value in data.items():
        if key not in _KEYS:
            known = ", ".join(_KEYS)
            raise ConfigError(f"{where}: unknown key {key!r} (a template takes {known})")
        if not isinstance(value, _KEYS[key]) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    defaults = data.get("vars", {})
    for key, value in defaults.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key == INPUT:
            raise ConfigError(f"{where}: vars.{key}: a variable is a word (and not 'input')")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: vars.{key} must be text or a number")
    temperature = data.get("temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise ConfigError(f"{where}: temperature must be between 0 and 2")
    options = dict(data.get("options", {}))
    from chatcli.core import RESERVED_OPTIONS

    for key in options:
        if key in RESERVED_OPTIONS or not key.isidentifier():
            raise ConfigError(f"{where}: options.{key} is not a provider option")
    template = Template(
        name=name,
        description=data.get("description", ""),
        system=data.get("system"),
        prompt=data.get("prompt"),
        provider=data.get("provider"),
        model=data.get("model"),
        temperature=float(temperature) if temperature is not None else None,
        defaults={k: str(v) for k, v in defaults.items()},
        options=options,
        path=path,
    )
    unused = [name for name in template.defaults if name not in template.variables]
    if unused:
        raise ConfigError(
            f"{where}: vars.{unused[0]} is not used by the system prompt or the prompt"
        )
    return template


__all__ = [
    "BUILTIN",
    "INPUT",
    "Applied",
    "Template",
    "Templates",
    "builtin",
    "check_name",
    "parse",
    "parse_vars",
]
