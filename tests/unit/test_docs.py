"""The generated references stay true: docs/configuration.md and the chart's README are
what ``python -m canvas_sync.devtools.docs`` writes now, every setting is documented, and
values.yaml's ``@param`` comments agree with the settings and with the values themselves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from canvas_sync.config import Settings
from canvas_sync.devtools import docs

from tests.helpers import ROOT

VALUES_TEXT = (ROOT / docs.CHART_VALUES).read_text()
VALUES = docs.load_values(VALUES_TEXT)
PARAMS = [param for section in docs.chart_sections(VALUES_TEXT) for param in section.params]
SETTING = re.compile(r"\bCANVAS_[A-Z0-9_]+\b")

CHART_DIFFERS: dict[str, str] = {
    "auth.enabled": "a switch in the chart: true renders CANVAS_AUTH=jwt, false CANVAS_AUTH=off",
}
"""Chart values that name one setting and deliberately do not hold its default, with why."""


def test_the_generated_files_are_what_the_generator_writes_now() -> None:
    behind = docs.drifted(ROOT)
    assert behind == [], f"run `{docs.COMMAND}`: {', '.join(map(str, behind))} drifted"


def test_check_names_the_drifted_file_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (docs.CONFIGURATION, docs.CHART_README, docs.CHART_VALUES):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text())
    assert docs.main(["--check", "--root", str(tmp_path)]) == 0
    stale = (tmp_path / docs.CONFIGURATION).read_text().replace("Bind address", "Bind adress")
    (tmp_path / docs.CONFIGURATION).write_text(stale)
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert str(docs.CONFIGURATION) in capsys.readouterr().err
    assert (tmp_path / docs.CONFIGURATION).read_text() == stale
    assert docs.main(["--root", str(tmp_path)]) == 0
    assert docs.main(["--check", "--root", str(tmp_path)]) == 0


def test_the_chart_readme_keeps_its_hand_written_head(tmp_path: Path) -> None:
    head = "# My head\n\nKept as written.\n\n"
    text = docs.chart_readme(VALUES_TEXT, head)
    assert text.startswith(head) and docs.chart_head(text) == head
    assert docs.chart_head(None) == docs.CHART_HEAD


def test_every_setting_has_a_description_and_a_row() -> None:
    undocumented = [name for name, info in Settings.model_fields.items() if not (info.description or "").strip()]
    assert undocumented == [], f"write a docstring under these fields in config.py: {undocumented}"
    page = docs.configuration()
    for name in Settings.model_fields:
        assert f"| `CANVAS_{name.upper()}`" in page


def test_defaults_read_as_an_operator_writes_them() -> None:
    fields = Settings.model_fields
    assert docs.env_default("replica_id", fields["replica_id"]) == "host name"
    assert docs.env_default("auth_secret", fields["auth_secret"]) == "unset (secret)"
    assert docs.env_default("autosave_interval", fields["autosave_interval"]) == "`5`"
    assert docs.env_default("send_interval", fields["send_interval"]) == "`0.02`"
    assert docs.env_default("create_table", fields["create_table"]) == "`false`"
    assert docs.env_default("log_level", fields["log_level"]) == "`info`"
    assert docs.env_default("dynamodb_endpoint", fields["dynamodb_endpoint"]) == "unset"


def test_every_setting_named_in_the_chart_exists() -> None:
    settings = {f"CANVAS_{name.upper()}" for name in Settings.model_fields}
    named = {(param.key, variable) for param in PARAMS for variable in SETTING.findall(param.description)}
    assert named, "values.yaml names no setting at all: has the comment format changed?"
    unknown = sorted((key, variable) for key, variable in named if variable not in settings)
    assert unknown == [], f"@param comments name settings that do not exist: {unknown}"


def _as_environment(value: Any) -> str | None:
    """The chart's empty string is the environment's unset."""
    rendered = docs.env_value(value)
    return None if rendered == "" else rendered


def test_the_chart_defaults_are_the_settings_defaults() -> None:
    compared = 0
    for param in PARAMS:
        variables = set(SETTING.findall(param.description))
        value = docs.lookup(VALUES, param.key)
        if len(variables) != 1 or isinstance(value, dict | list) or param.key in CHART_DIFFERS:
            continue
        name = variables.pop().removeprefix("CANVAS_").lower()
        info = Settings.model_fields[name]
        if info.default_factory is not None:
            continue  # computed at start-up (the host name): the chart cannot hold it
        assert _as_environment(value) == _as_environment(info.default), (
            f"values.yaml {param.key}={value!r} but CANVAS_{name.upper()} defaults to {info.default!r}: "
            "make them agree, or list the key in CHART_DIFFERS with the reason"
        )
        compared += 1
    assert compared >= 10
    for key in CHART_DIFFERS:
        assert any(param.key == key for param in PARAMS), f"CHART_DIFFERS lists {key}, which has no @param"


def test_every_param_names_a_value_and_every_value_has_a_param() -> None:
    documented = {param.key for param in PARAMS}
    missing_values = sorted(key for key in documented if docs.lookup(VALUES, key) is docs._MISSING)
    assert missing_values == [], f"@param keys with no value in values.yaml: {missing_values}"

    def covered(leaf: str) -> bool:
        parts = leaf.split(".")
        return any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1))

    undocumented = sorted(leaf for leaf in docs.leaves(VALUES) if not covered(leaf))
    assert undocumented == [], f"values without an @param (or a documented parent map): {undocumented}"
    assert len(PARAMS) == len(documented), "a key documented twice"


def test_the_leaf_rule_notices_an_undocumented_value() -> None:
    text = VALUES_TEXT + "\n## @param extra.documented A value\nextra:\n  documented: 1\n  forgotten: 2\n"
    values = docs.load_values(text)
    documented = {p.key for s in docs.chart_sections(text) for p in s.params}
    assert "extra.forgotten" in set(docs.leaves(values)) - documented
    with pytest.raises(ValueError, match="no value"):
        docs.chart_readme(text + "## @param extra.gone Not there\n")
