"""What a client reads when its request is wrong: every validation error in words
(shared/service.py), never a bare position or a library's phrase."""

from __future__ import annotations

from shared.service import _describe


def test_a_body_that_is_not_json_is_named_as_such_with_where_and_why() -> None:
    error = {"type": "json_invalid", "loc": ("body", 19), "msg": "JSON decode error",
             "ctx": {"error": "Expecting ',' delimiter"}}
    assert _describe(error) == ("the body is not valid JSON at character 19: "
                                "Expecting ',' delimiter")


def test_a_missing_body_asks_for_a_json_object() -> None:
    assert _describe({"type": "missing", "loc": ("body",), "msg": "Field required"}) == (
        "the body is missing: send a JSON object")


def test_a_bad_field_is_named_with_its_path() -> None:
    error = {"type": "less_than_equal", "loc": ("body", "delay", "minutes"),
             "msg": "Input should be less than or equal to 600"}
    assert _describe(error) == "delay.minutes: Input should be less than or equal to 600"
