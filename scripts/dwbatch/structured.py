"""Whether a structured-output answer is what its request asked for: JSON, and valid against
the request's JSON Schema (jsonschema, loaded only when a schema is checked)."""

from __future__ import annotations

import json
from collections import OrderedDict

from .jsontext import strict_loads


class _ValidatorCache:
    """A few compiled validators, keyed by schema text (a batch usually shares one schema)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.items: OrderedDict[str, object] = OrderedDict()

    def get(self, schema: dict):
        key = _schema_key(schema)
        validator = self.items.get(key)
        if validator is None:
            import jsonschema  # (here: most joins check no schema, and it takes a while to load)

            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
                validator = cls(schema)
            except jsonschema.SchemaError as exc:
                validator = exc
            self.items[key] = validator
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        else:
            self.items.move_to_end(key)
        return validator


_VALIDATORS = _ValidatorCache()


def _key_encoder():
    """Schema text with sorted keys, as json.JSONEncoder(sort_keys=True).encode writes it,
    from one C encoder made once (encode() makes a new one every call)."""
    plain = json.JSONEncoder(sort_keys=True)
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        encoder = make(None, plain.default, json.encoder.encode_basestring_ascii, None,
                       ": ", ", ", True, False, True)
    except TypeError:  # (no C encoder, or another signature)
        return plain.encode
    join = "".join
    return lambda schema: join(encoder(schema, 0))


_schema_key = _key_encoder()


def strip_fence(text: str) -> str:
    s = text.strip()
    if s.startswith("```") and s.endswith("```") and s.count("\n") >= 1:
        s = s[s.index("\n") + 1:-3].strip()
    return s


def check_structured(content, schema: dict | None) -> tuple[str, object, dict | None]:
    """(status, parsed JSON, error) of a structured-output answer against its schema."""
    if not isinstance(content, str):
        return "invalid_json", None, {"message": "the answer has no text to parse as JSON"}
    try:
        value = strict_loads(strip_fence(content))
    except (ValueError, RecursionError) as exc:
        return "invalid_json", None, {"message": f"the answer is not valid JSON: "
                                                 f"{str(exc) or type(exc).__name__}"}
    if schema is None:
        return "ok", value, None
    validator = _VALIDATORS.get(schema)
    if isinstance(validator, Exception):
        return "schema_invalid", value, {
            "message": f"the request's own JSON Schema is invalid: {validator.message}"}
    try:
        if quick_valid(schema, value):
            return "ok", value, None
    except RecursionError:
        pass
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    if error is None:
        return "ok", value, None
    path = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]"
                         for p in error.absolute_path)
    return "schema_invalid", value, {
        "message": f"the answer does not match the request's JSON Schema at {path}: "
                   f"{error.message}",
        "path": list(error.absolute_path), "validator": error.validator}


# Keywords that never make an answer invalid here (jsonschema asserts no format unless given a
# format checker, and none is).
_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default", "format"})
_NUMBERS = (int, float)


def quick_valid(schema, value) -> bool:
    """True when `value` certainly satisfies `schema` (one jsonschema has already checked),
    by the few keywords answer schemas mostly use; False when not certain: jsonschema decides
    then (and words the error). Why: jsonschema takes tens of microseconds an answer, and a
    structured job has an answer per request."""
    if schema is True:
        return True
    if type(schema) is not dict:
        return False
    kind = type(value)
    for key, rule in schema.items():
        if key == "type":
            if not (_is_type(value, rule) if type(rule) is str else
                    type(rule) is list and any(_is_type(value, one) for one in rule)):
                return False
        elif key == "properties":
            if kind is dict:
                for name, sub in rule.items():
                    if name in value and not quick_valid(sub, value[name]):
                        return False
        elif key == "required":
            if kind is dict and any(name not in value for name in rule):
                return False
        elif key == "additionalProperties":
            if kind is dict and rule is not True:
                if "patternProperties" in schema:
                    return False
                known = schema.get("properties") or {}
                for name, item in value.items():
                    if name not in known and (rule is False or not quick_valid(rule, item)):
                        return False
        elif key == "items":
            if kind is list:
                if "prefixItems" in schema or (type(rule) is not dict and rule is not True):
                    return False
                if not all(quick_valid(rule, item) for item in value):
                    return False
        elif key == "enum":
            if not (kind is str or value is None) or value not in rule:
                return False
        elif key in ("minLength", "maxLength"):
            if kind is str and not (len(value) >= rule if key == "minLength"
                                    else len(value) <= rule):
                return False
        elif key in ("minItems", "maxItems"):
            if kind is list and not (len(value) >= rule if key == "minItems"
                                     else len(value) <= rule):
                return False
        elif key in ("minimum", "maximum"):
            if kind in _NUMBERS and type(rule) in _NUMBERS and not (
                    value >= rule if key == "minimum" else value <= rule):
                return False
            if type(rule) not in _NUMBERS:
                return False
        elif key not in _ANNOTATIONS:
            return False
    return True


def _is_type(value, name) -> bool:
    kind = type(value)
    if name == "string":
        return kind is str
    if name == "object":
        return kind is dict
    if name == "array":
        return kind is list
    if name == "boolean":
        return kind is bool
    if name == "null":
        return value is None
    if name == "integer":  # (a float like 1.0 is one too for jsonschema: left to it)
        return kind is int
    if name == "number":
        return kind is int or kind is float
    return False
