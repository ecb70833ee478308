"""SQL obfuscation for spans of type ``sql``, cached per raw statement.

A leaf package: standard library only, imported by both ``agent_sim`` (the
receiver obfuscates what it stores) and ``contrib`` (``TRACER_DB_OBFUSCATE``),
which may not import each other (tests/test_package_rules.py); one copy keeps
both sides' output identical.

Pure functions; thread-safe (``functools.lru_cache`` is). The cache is what
keeps this off the ingest budget: applications send the same few hundred
statements over and over, and a regex scan of every SQL span would cost more
than decode, stats and storage together (DESIGN "cost budget").

Rules (MySQL and SQLite dialects):
- string literals ('…', "…" — MySQL's default, with backslash escapes and
  doubled quotes), numbers (integer, decimal, exponent, hex, negative),
  TRUE/FALSE/NULL and bind parameters (``%s``, ``%(name)s``, ``?``,
  ``:name``, ``$1``) become ``?``;
- ``IN (…)`` lists and ``VALUES`` rows made only of ``?`` collapse to
  ``( ? )``, several such ``VALUES`` rows to one;
- comments (``-- …``, ``# …``, ``/* … */``) are dropped, whitespace runs
  become one space; identifiers (backticks included, digits inside names) are
  kept as written.
Double-quoted text is treated as a literal: in MySQL it is one, and a leaked
value is worse than an obfuscated SQLite identifier.
"""

from __future__ import annotations

import functools
import re

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<str>(?:[xXbBnN](?=')|_[A-Za-z0-9]+(?='))?'(?:[^'\\]|\\.|'')*(?:'|\Z))
  | (?P<dstr>"(?:[^"\\]|\\.|"")*(?:"|\Z))
  | (?P<bt>`(?:[^`]|``)*(?:`|\Z))
  | (?P<hex>0[xX][0-9a-fA-F]+|0[bB][01]+)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ph>%\([^)]*\)s|%[sd]|\?\d*|:[A-Za-z_]\w*|\$\d+)
  | (?P<ident>[A-Za-z_@\u0080-\U0010ffff][\w$@\u0080-\U0010ffff]*)
  | (?P<op>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_LITERAL_WORDS = frozenset(("TRUE", "FALSE", "NULL"))
# After one of these a '-' is a sign, not a subtraction.
_VALUE_KINDS = frozenset(("ident", "bt", "lit", "close"))
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"")
_CACHE_SIZE = 4096


def obfuscate_sql(sql: str) -> str:
    """The obfuscated form of ``sql`` (see the module docstring). Never raises."""
    if len(sql) > 100_000:
        # Not worth a cache slot; statements this long are bulk loads.
        return _obfuscate(sql)
    return _cached(sql)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cached(sql: str) -> str:
    return _obfuscate(sql)


def _obfuscate(sql: str) -> str:
    # tokens: [kind, text, space_before]
    tokens: list[list] = []
    space = False
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        text = m.group()
        if kind == "ws" or kind == "comment":
            space = True
            continue
        if kind in ("str", "dstr", "hex", "num", "ph"):
            if kind == "num" and tokens and tokens[-1][1] in ("-", "+") and tokens[-1][0] == "op":
                prev = tokens[-2][0] if len(tokens) > 1 else None
                if prev not in _VALUE_KINDS:
                    # unary sign: "-5" is one literal
                    sign = tokens.pop()
                    space = sign[2]
            kind, text = "lit", "?"
        elif kind == "ident" and text.upper() in _LITERAL_WORDS:
            kind, text = "lit", "?"
        elif kind == "op":
            if text == "(":
                kind = "open"
            elif text == ")":
                kind = "close"
        tokens.append([kind, text, space])
        space = False
    tokens = _collapse(tokens)
    out: list[str] = []
    for i, (_kind, text, sp) in enumerate(tokens):
        if sp and i:
            out.append(" ")
        out.append(text)
    return "".join(out)


def _collapse(tokens: list[list]) -> list[list]:
    """``( ?, ?, … )`` → ``( ? )``; ``VALUES ( ? ), ( ? )`` → ``VALUES ( ? )``."""
    out: list[list] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if tok[0] == "open":
            j = i + 1
            saw_lit = False
            while j < n and (tokens[j][0] == "lit" or tokens[j][1] == ","):
                saw_lit = saw_lit or tokens[j][0] == "lit"
                j += 1
            if saw_lit and j < n and tokens[j][0] == "close":
                group = ["group", "( ? )", tok[2]]
                # a further "( ? )" row after VALUES ( ? ) folds into this one
                if len(out) >= 2 and out[-1][1] == "," and out[-2][0] == "group" and _after_values(out):
                    out.pop()
                else:
                    out.append(group)
                i = j + 1
                continue
        out.append(tok)
        i += 1
    return out


def _after_values(out: list[list]) -> bool:
    k = len(out) - 2
    while k >= 1 and out[k][0] == "group" and out[k - 1][1] == ",":
        k -= 2
    return k >= 1 and out[k][0] == "group" and out[k - 1][1].upper() in ("VALUES", "VALUE")


def obfuscate_error_message(message: str) -> str:
    """Quoted values in a database error message → ``?`` (MySQL quotes the
    offending value in duplicate-key and syntax errors)."""
    return _QUOTED.sub("?", message)
