"""The quick check of structured answers: it only ever says "valid" where jsonschema finds no
error, on every pairing of a set of answer schemas with a set of answers; where it is not
sure, jsonschema decides and words the error as before."""

from __future__ import annotations

import itertools
import json

import jsonschema
import pytest
from dwbatch import structured

SCALARS = [0, 1, -3, 1.0, 1.5, 10**20, True, False, None, "", "a", "abc", "é" * 3, "5"]
VALUES = SCALARS + [[], [1, 2], ["a", "b"], [1, "a"], [[1]], [None], {}, {"answer": "x"},
                    {"answer": 1}, {"answer": "x", "n": 2}, {"answer": "x", "extra": True},
                    {"n": 2.5}, {"answer": None}, {"tags": ["a", "b"]}, {"tags": ["a", 1]},
                    {"answer": "x", "tags": []}, {"answer": "", "n": -1},
                    {"nested": {"answer": "x"}}, {"nested": {"answer": 3}}]

SCHEMAS = [
    {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
     "additionalProperties": False},
    {"type": "object", "properties": {"answer": {"type": "string", "minLength": 1},
                                      "n": {"type": "integer", "minimum": 0}},
     "required": ["answer"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                               "maxItems": 1}},
     "additionalProperties": {"type": "string"}},
    {"type": ["string", "null"], "maxLength": 2},
    {"type": "number", "maximum": 1},
    {"type": "integer"},
    {"type": "boolean"},
    {"enum": ["a", "abc", None, 1]},
    {"type": "array", "minItems": 1, "items": {"type": ["integer", "string"]}},
    {"type": "object", "properties": {"nested": {"type": "object", "properties": {
        "answer": {"type": "string"}}, "required": ["answer"]}}},
    {"type": "object", "title": "t", "description": "d", "format": "anything",
     "properties": {"answer": {"type": "string", "format": "date"}}},
    # keywords the quick check does not know: always left to jsonschema
    {"type": "object", "patternProperties": {"^a": {"type": "string"}},
     "additionalProperties": False},
    {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "string"}},
    {"const": "a"},
    {"type": "object", "properties": {"answer": {"$ref": "#/$defs/s"}},
     "$defs": {"s": {"type": "string"}}},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"},
    {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    True,
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_the_quick_check_never_passes_what_jsonschema_refuses(schema):
    validator = jsonschema.validators.validator_for(schema)(schema)
    passed = 0
    for value in VALUES:
        if structured.quick_valid(schema, value):
            passed += 1
            errors = list(validator.iter_errors(value))
            assert not errors, (schema, value, errors[0].message)
    if schema is True or "type" in schema and not set(schema) & {
            "patternProperties", "prefixItems", "$ref", "$schema", "$defs"}:
        assert passed, f"the quick check never decided for {schema}"


def test_answers_checked_quickly_or_not_get_the_same_outcome(monkeypatch):
    outcomes = []
    for quick in (True, False):
        if not quick:
            monkeypatch.setattr(structured, "quick_valid", lambda schema, value: False)
        outcomes.append([structured.check_structured(json.dumps(value), schema)
                         for schema, value in itertools.product(SCHEMAS[:11], VALUES)
                         if isinstance(schema, dict)])
    assert outcomes[0] == outcomes[1]
    statuses = {status for status, _value, _error in outcomes[0]}
    assert statuses == {"ok", "schema_invalid"}
