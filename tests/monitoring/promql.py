"""Just enough PromQL lexing to list the metric names an expression reads.

Not a parser: ``promtool`` checks syntax. This strips what cannot hold a metric name (string
literals, label matchers, ranges, grouping label lists) and keeps the identifiers that are not
functions, keywords or numbers. Grafana's ``$__rate_interval``-style macros are replaced by
durations first, so the result is also valid PromQL for ``promtool``.
"""

from __future__ import annotations

import re

GRAFANA_MACROS = {
    "$__rate_interval": "5m",
    "${__rate_interval}": "5m",
    "$__interval": "1m",
    "${__interval}": "1m",
    "$__range": "1h",
    "${__range}": "1h",
}
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$", re.S)


def expand_macros(expr: str) -> str:
    # longest first: $__range must not eat the start of $__range_s
    for macro in sorted(GRAFANA_MACROS, key=len, reverse=True):
        expr = expr.replace(macro, GRAFANA_MACROS[macro])
    return expr


def outside_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric (and recording-rule) names ``expr`` reads."""
    text = outside_strings(expand_macros(expr))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in KEYWORDS}


def variable_query_expr(query: str) -> str | None:
    """The PromQL inside a Grafana ``label_values(expr, label)`` variable query, if any."""
    m = _LABEL_VALUES.match(query)
    return None if m is None else m.group("expr")
