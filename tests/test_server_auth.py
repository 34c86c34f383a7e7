"""API keys, binding and CORS."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

from impetus_cli.cli import app
from impetus_cli.runtime.config import load_settings
from impetus_cli.runtime.manager import ModelManager
from tests.fixtures.fake_engine import FakeEngine, fake_info, fake_model
from tests.fixtures.servers import Registry, start_server
from tests.test_server_openai import raw_post


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[str]:
    FakeEngine.reset()
    model = fake_model(tmp_path, "fake")
    settings = replace(load_settings(), api_key="s3cret", cors_origins=("http://localhost:3000",))
    manager = ModelManager(
        settings,
        store=Registry({"fake": model.path}),
        engine_factory=FakeEngine.factory,
        memory_probe=lambda: 10**11,
        allow_paths=False,
    )
    manager.models.info = lambda m: fake_info(m.path)  # type: ignore[method-assign]
    with start_server(manager, settings) as url:
        yield url


BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


def test_a_request_without_the_key_is_401_in_the_error_shape(keyed_server: str) -> None:
    status, _, raw = raw_post(keyed_server, "/v1/chat/completions", BODY)
    assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
    status, _, _ = raw_post(
        keyed_server, "/v1/chat/completions", BODY, {"Authorization": "Bearer wrong"}
    )
    assert status == 401


@pytest.mark.parametrize(
    "header", [{"Authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}, {"api-key": "s3cret"}]
)
def test_the_key_is_accepted_in_every_header_clients_use(
    keyed_server: str, header: dict[str, str]
) -> None:
    assert raw_post(keyed_server, "/v1/chat/completions", BODY, header)[0] == 200


def test_health_stays_open_and_the_sdk_works_with_the_key(keyed_server: str) -> None:
    with urllib.request.urlopen(keyed_server + "/health") as reply:
        assert reply.status == 200
    c = openai.OpenAI(base_url=keyed_server + "/v1", api_key="s3cret", max_retries=0)
    assert c.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "x"}]
    ).choices


def test_cors_headers_only_for_named_origins(keyed_server: str) -> None:
    _, headers, _ = raw_post(
        keyed_server,
        "/v1/chat/completions",
        BODY,
        {"Authorization": "Bearer s3cret", "Origin": "http://localhost:3000"},
    )
    assert headers.get("Access-Control-Allow-Origin") == "http://localhost:3000"
    _, headers, _ = raw_post(
        keyed_server,
        "/v1/chat/completions",
        BODY,
        {"Authorization": "Bearer s3cret", "Origin": "http://evil.example"},
    )
    assert "Access-Control-Allow-Origin" not in headers


def test_without_a_key_any_bearer_or_none_is_accepted(fake_server: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer anything"},
        {"x-api-key": "k"},
    ):
        assert raw_post(fake_server, "/v1/chat/completions", BODY, headers)[0] == 200


def test_serve_refuses_a_public_address_without_a_key() -> None:
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "without an API key" in str(result.exception) or "without an API key" in result.output
