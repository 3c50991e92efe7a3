"""The OpenAPI document states the statuses and bodies validation errors really come with."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from stepedit.api.errors import flavour_for_path


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_provider_routes_document_400_not_fastapis_422(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    provider = [op for op in operations(document) if flavour_for_path(op[1]) != "native"]
    assert len(provider) >= 7
    for method, path, operation in provider:
        assert "422" not in operation["responses"], (method, path)
    edits = document["paths"]["/v1/images/edits"]["post"]["responses"]["400"]
    error = edits["content"]["application/json"]["schema"]["properties"]["error"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    # what the route really answers with a missing field
    answer = client.post("/v1/images/edits", data={"model": "step-1x-edit"})
    assert answer.status_code == 400
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_native_422_documents_the_native_error_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    responses = document["paths"]["/v1/jobs"]["get"]["responses"]
    schema = responses["422"]["content"]["application/json"]["schema"]
    assert schema["properties"]["error"]["required"] == ["code", "message", "param"]
    assert "HTTPValidationError" not in document.get("components", {}).get("schemas", {})
    answer = client.get("/v1/jobs", params={"limit": 0})
    assert answer.status_code == 422
    assert set(answer.json()["error"]) == {"code", "message", "param"}


def test_the_edits_upload_is_documented_as_required(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/images/edits"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "image" in schema["required"]
