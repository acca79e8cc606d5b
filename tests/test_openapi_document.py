"""What the OpenAPI document declares agrees with what the validation code accepts."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.core.schemas import ID_PATTERN, MAX_ID, check_features, is_id
from ranker.server.openapi import openapi


def validator(name: str):
    document = openapi()
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": {"schemas": document["components"]["schemas"]}}
    )


def test_every_path_parameter_is_declared_with_the_id_rule():
    for path, item in openapi()["paths"].items():
        for method, operation in item.items():
            declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
            named = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert set(declared) == named, (method, path)
            for parameter in declared.values():
                if "enum" in parameter["schema"]:  # a kind, such as the entity type, not an id
                    continue
                assert parameter["schema"]["pattern"] == ID_PATTERN and parameter["schema"]["maxLength"] == MAX_ID
            if named and (method in ("get", "delete") or "/events/" in path):  # an id that may not exist
                assert "404" in operation["responses"], (method, path)


names = st.sampled_from(["", "_x", "x", "état", "日本", "a b", "id"]) | st.text(max_size=4)
numbers = st.integers(-(10**16), 10**16) | st.floats(allow_nan=False, allow_infinity=False)
features = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=3) | st.lists(numbers, max_size=3),
    lambda children: (
        st.dictionaries(names, children, max_size=3)
        | st.lists(st.dictionaries(names, children, max_size=2), max_size=2)
        | st.lists(children, max_size=2)
    ),
    max_leaves=30,
)


def accepted(obj: dict[str, Any]) -> bool:
    try:
        check_features(obj, "f")
    except ValueError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(obj=st.dictionaries(names, features, max_size=4))
def test_the_feature_schema_accepts_exactly_what_rank_accepts(obj):
    assert validator("FeatureObject0").is_valid(obj) == accepted(obj)


def test_the_feature_schema_limits_nesting_as_rank_does():
    for depth in (8, 9, 10):
        obj: Any = {"leaf": 1}
        for _ in range(depth):
            obj = {"ns": obj}
        assert validator("FeatureObject0").is_valid(obj) == accepted(obj) == (depth <= 8)


@settings(max_examples=300, deadline=None)
@given(value=st.text(st.sampled_from("a./\x00\x7f\x85\x9f é\n"), max_size=8) | st.text(max_size=6))
def test_the_id_schema_accepts_exactly_the_id_rule(value):
    schema = jsonschema_rs.validator_for({"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": ID_PATTERN})
    assert schema.is_valid(value) == is_id(value)
