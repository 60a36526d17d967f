"""What every service's OpenAPI document must hold, checked the same way for each: every
route has a summary and a description, every parameter a description and an example, its
request body and success answer carry examples, every answer a description."""

from __future__ import annotations

from typing import Any

# probes every service shares (shared/service.py), documented there
SHARED = {"/healthz", "/readyz", "/metrics"}


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) of every route but the shared probes."""
    return [(method.upper(), path, op) for path, ops in spec["paths"].items()
            if path not in SHARED for method, op in ops.items()]


def has_example(media: dict[str, Any]) -> bool:
    return bool(media.get("example") is not None or media.get("examples"))


def assert_every_route_is_documented(spec: dict[str, Any]) -> None:
    """Summary, description, parameters, bodies and answers, with examples (what a reader
    copies first)."""
    for method, path, op in operations(spec):
        where = f"{method} {path}"
        assert op.get("summary"), where
        assert len(op.get("description", "")) > 40, where
        for parameter in op.get("parameters", []):
            schema = parameter.get("schema", {})
            assert parameter.get("description"), f"{where}: parameter {parameter['name']}"
            assert (parameter.get("example") is not None or parameter.get("examples")
                    or schema.get("examples")), f"{where}: parameter {parameter['name']}"
        if method in ("POST", "PUT", "PATCH") and "requestBody" in op:
            content = op["requestBody"]["content"]
            assert content and all(has_example(m) for m in content.values()), where
        successes = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert len(successes) == 1, where
        for code, response in successes.items():
            if code == "204":
                assert "content" not in response, where
                continue
            assert response["content"] and all(
                has_example(m) for m in response["content"].values()), where
        for code, response in op["responses"].items():
            assert response.get("description"), f"{where} {code}"
            for media in response.get("content", {}).values():
                assert has_example(media) or media.get("schema"), f"{where} {code}"
