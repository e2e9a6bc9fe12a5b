"""Schemathesis hooks for tests/it/schemathesis.rs, loaded with SCHEMATHESIS_HOOKS.

The Rust test writes a JSON file (path in MXTEST_SCHEMATHESIS_IDS) naming:

- "known": path prefix -> path parameter name -> ids that exist in the gateway under that
  prefix (inboxes, messages, deliveries, keys, domains). Generated ids alone would almost never
  name a real object, so most requests would stop at a 404: half the time a path parameter is
  one of these instead (see `_valid_in_place`), so the handlers behind the lookups are reached
  too.
- "foreign": strings that belong to another inbox (its id, address, message, delivery, event
  and key ids). With an inbox key no 2xx response may contain any of them.
"""

import json
import os

import schemathesis
from hypothesis import strategies as st

with open(os.environ["MXTEST_SCHEMATHESIS_IDS"], encoding="utf-8") as handle:
    IDS = json.load(handle)

KNOWN = IDS.get("known", {})
FOREIGN_EXACT = IDS.get("foreign_exact", [])
FOREIGN_SUBSTRINGS = IDS.get("foreign_substrings", [])


def _valid_in_place(generated, known):
    """Whether a known id may stand in for the generated value without making a request that
    was generated to break the schema valid: string parameters (ids, names) have no
    constraints, so any string is valid; the one integer (`attempt`) only when the generated
    value is a valid one too."""
    if isinstance(known, str):
        return isinstance(generated, str)
    return isinstance(generated, int) and not isinstance(generated, bool) and 1 <= generated <= 1000


@schemathesis.hook
def flatmap_path_parameters(ctx, path_parameters):
    if not path_parameters:
        return st.just(path_parameters)
    path = ctx.operation.path if ctx.operation is not None else ""
    prefixes = [prefix for prefix in KNOWN if path.startswith(prefix)]
    known = KNOWN[max(prefixes, key=len)] if prefixes else {}
    choices = {}
    for name, generated in path_parameters.items():
        ids = [id_ for id_ in known.get(name, []) if _valid_in_place(generated, id_)]
        if ids:
            choices[name] = st.one_of(st.just(generated), st.sampled_from(ids))
        else:
            choices[name] = st.just(generated)
    return st.fixed_dictionaries(choices)


def _strings(value):
    """Every string in a JSON value: keys and values."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)


def _leaks(text):
    try:
        strings = list(_strings(json.loads(text)))
    except ValueError:
        strings = [text]
    found = set()
    for string in strings:
        if string in FOREIGN_EXACT:
            found.add(string)
        for marker in FOREIGN_SUBSTRINGS:
            if marker in string:
                found.add(marker)
    return sorted(found)


@schemathesis.check
def no_foreign_inbox_data(ctx, response, case):
    """An inbox key's successful answer names nothing of another inbox."""
    if not (FOREIGN_EXACT or FOREIGN_SUBSTRINGS):
        return None
    if not 200 <= response.status_code < 300:
        return None
    leaked = _leaks(response.text)
    if leaked:
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered {response.status_code} "
            f"with another inbox's data: {leaked}"
        )
    return None
