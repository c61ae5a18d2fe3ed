"""Message templates: Jinja2 in a sandbox, compiled once, rendered once per recipient."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from worker.inputerrors import InputError

# WhatsApp refuses text messages longer than this many characters.
MAX_MESSAGE_CHARS = 4096

# `'x' * n` and `n ** m` are the two ways a template line can eat gigabytes or hours of CPU
# before the length check ever runs; these bound them.
_MAX_REPEAT_CHARS = 1_000_000
_MAX_POWER_BITS = 100_000


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox (no Python internals, no mutating values) plus bounds on `*` and `**`."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > _MAX_REPEAT_CHARS
                ):
                    raise SecurityError("repetition too large")
            return operator.mul(left, right)
        if operator_name == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and abs(right) * abs(left).bit_length() > _MAX_POWER_BITS
            ):
                raise SecurityError("power too large")
            return operator.pow(left, right)
        return super().call_binop(context, operator_name, left, right)


# Plain text, not HTML: autoescape would turn "Tom & Jerry" into "Tom &amp; Jerry".
# A template file's final newline is an editor artefact, not part of the message: drop it.
_ENV = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


class MessageTemplate:
    """A compiled message template; build one with ``compile_template``."""

    __slots__ = ("_template", "_variables", "source", "text")

    def __init__(self, text: str, source: str | None = None) -> None:
        self.text = text
        self.source = source
        try:
            tree = _ENV.parse(text)
            self._variables = frozenset(meta.find_undeclared_variables(tree))
            self._template = _ENV.from_string(tree)
        except TemplateSyntaxError as exc:
            raise InputError(
                f"template syntax error: {exc.message}",
                source=source or "template",
                line=exc.lineno,
            ) from exc
        except Exception as exc:
            # Pathological input (nesting deep enough to hit the recursion limit, ...).
            reason = f"invalid template: {type(exc).__name__}: {exc}"
            raise InputError(reason, source=source or "template") from exc

    def variables(self) -> frozenset[str]:
        """Names the template reads from each recipient (a `{% set %}` name is not one of them).

        Names used only under ``{% if x is defined %}`` or ``x | default(...)`` are listed too.
        """
        return self._variables

    def render(
        self,
        variables: Mapping[str, str],
        row: int | None = None,
        source: str | None = None,
    ) -> str:
        """The message for one recipient; InputError (naming ``source``, ``row``, field) if bad."""
        try:
            text = self._template.render(variables)
        except UndefinedError as exc:
            raise self._undefined_error(exc, variables, row, source) from None
        except SecurityError as exc:
            raise InputError(
                f"template refused by the sandbox: {exc}", source=source, row=row
            ) from None
        except Exception as exc:
            # A template is user code: a ZeroDivisionError or a bad filter argument is bad input,
            # never a crash of the producer.
            reason = f"template error: {type(exc).__name__}: {exc}"
            raise InputError(reason, source=source, row=row) from exc
        if len(text) > MAX_MESSAGE_CHARS:
            raise InputError(
                f"message is {len(text)} characters, WhatsApp allows {MAX_MESSAGE_CHARS}",
                source=source,
                row=row,
            )
        if not text.strip():
            raise InputError("message is empty", source=source, row=row)
        return text

    def _undefined_error(
        self, exc: UndefinedError, variables: Mapping[str, str], row: int | None, source: str | None
    ) -> InputError:
        """Name the missing field when the error is a plain missing variable."""
        # Jinja says "'name' is undefined" for a missing top-level name; match that against the
        # names this template reads rather than subclassing Undefined, whose dunders are bound
        # at class creation and would have to be re-bound one by one.
        for name in self._variables:
            if name not in variables and exc.message == f"{name!r} is undefined":
                reason = f"undefined template variable {name!r}"
                return InputError(reason, source=source, row=row, field=name)
        return InputError(f"template error: {exc}", source=source, row=row)


def compile_template(text: str, source: str | None = None) -> MessageTemplate:
    """Compile ``text`` once; InputError naming ``source`` and the line on a syntax error."""
    return MessageTemplate(text, source)
