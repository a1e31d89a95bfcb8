"""Configuration: defaults, overrides, and one clear line for a bad value."""

from __future__ import annotations

import pytest
from canvas_sync.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _auth_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other settings are the point here; the tests of authentication undo this."""
    monkeypatch.setenv("CANVAS_AUTH", "off")


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CANVAS_PORT", "CANVAS_HOST", "CANVAS_TABLE", "CANVAS_AUTOSAVE_INTERVAL", "CANVAS_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CANVAS_AUTH_SECRET", "s" * 32)
    s = load_settings()
    assert (s.auth, s.auth_audience, s.auth_leeway, s.auth_query_token, s.origins) == (
        "jwt",
        "canvas-sync",
        30,
        False,
        [],
    )
    assert (s.host, s.port, s.table, s.dynamodb_endpoint, s.create_table) == (
        "0.0.0.0",
        8080,
        "canvas_objects",
        None,
        False,
    )
    assert (s.autosave_interval, s.sync_interval, s.shutdown_timeout) == (5.0, 1.0, 20.0)
    assert (s.max_message_bytes, s.max_object_bytes, s.max_objects_per_project) == (65536, 16384, 10000)
    assert s.log_level.value == "info" and s.replica_id


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANVAS_PORT", "9000")
    monkeypatch.setenv("CANVAS_AUTOSAVE_INTERVAL", "0.25")
    monkeypatch.setenv("CANVAS_CREATE_TABLE", "true")
    monkeypatch.setenv("CANVAS_LOG_LEVEL", "debug")
    s = load_settings(port=9100, host=None)
    assert (s.port, s.autosave_interval, s.create_table, s.log_level.value, s.host) == (
        9100,
        0.25,
        True,
        "debug",
        "0.0.0.0",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CANVAS_AUTOSAVE_INTERVAL", "soon"),
        ("CANVAS_AUTOSAVE_INTERVAL", "0"),
        ("CANVAS_SYNC_INTERVAL", "-1"),
        ("CANVAS_MAX_OBJECT_BYTES", "-5"),
        ("CANVAS_MAX_MESSAGE_BYTES", "big"),
        ("CANVAS_PORT", "70000"),
        ("CANVAS_LOG_LEVEL", "loud"),
        ("CANVAS_CREATE_TABLE", "perhaps"),
        ("CANVAS_TABLE", "no spaces"),
        ("CANVAS_MAX_STORED_OBJECT_BYTES", "1000"),  # below CANVAS_MAX_OBJECT_BYTES
        ("CANVAS_MAX_STORED_OBJECT_BYTES", "500000"),  # above what DynamoDB stores
        ("CANVAS_MAX_CLOCK_DRIFT", "0"),
        ("CANVAS_MAX_TOMBSTONES_PER_PROJECT", "-1"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert name in message and repr(value) in message and "\n" not in message


def test_authentication_is_on_by_default_and_needs_one_key_source(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CANVAS_AUTH", "CANVAS_AUTH_SECRET", "CANVAS_AUTH_JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="CANVAS_AUTH=jwt needs exactly one of"):
        load_settings()  # serve never starts open by accident
    assert load_settings(auth="off").auth == "off"
    with pytest.raises(ConfigError, match="exactly one"):
        load_settings(auth_secret="s" * 32, auth_jwks_url="https://issuer.example/jwks.json")
    with pytest.raises(ConfigError, match="CANVAS_AUTH_SECRET"):
        load_settings(auth_secret="short")
    with pytest.raises(ConfigError, match="CANVAS_AUTH_JWKS_URL"):
        load_settings(auth_jwks_url="ftp://nope")
    monkeypatch.setenv("CANVAS_ALLOWED_ORIGINS", "https://app.example, https://admin.example")
    assert load_settings(auth="off").origins == ["https://app.example", "https://admin.example"]
