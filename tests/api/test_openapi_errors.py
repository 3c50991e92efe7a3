"""The OpenAPI document states the statuses and bodies validation errors really come with."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from stepedit.api.flavours import registry_of


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_provider_routes_document_400_not_fastapis_422(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    flavours = registry_of(client.app)
    provider = [op for op in operations(document) if flavours.for_path(op[1]).name != "native"]
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


def test_routes_taking_an_id_document_their_404(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    documented = [
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/api/v3/predictions/{prediction_id}", "get"),
        ("/api/v3/predictions/{prediction_id}/result", "get"),
        ("/files/{filename}", "get"),
    ]
    flavours = registry_of(client.app)
    for path, method in documented:
        not_found = paths[path][method]["responses"]["404"]
        content = not_found["content"]["application/json"]
        assert content["schema"] == flavours.for_path(path).errors.schema, path
        # and the route answers it so
        example = path.replace("{job_id}", "x").replace("{prediction_id}", "x")
        answer = client.request(method, example.replace("{filename}", "x.png"))
        assert answer.status_code == 404, path


def test_the_files_route_documents_its_image_types(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/files/{filename}"]["get"]["responses"]
    content = responses["200"]["content"]
    assert set(content) == {"image/png", "image/jpeg", "image/webp"}
    assert content["image/png"]["schema"] == {"type": "string", "format": "binary"}


def test_error_examples_match_their_status(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/api/v3/predictions/{prediction_id}"]
    example = responses["get"]["responses"]["404"]["content"]["application/json"]["example"]
    assert example["code"] == 404
