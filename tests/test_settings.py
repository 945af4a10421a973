from __future__ import annotations

import re
from pathlib import Path

import pytest

from pmcqa.core.settings import ConfigFileError, Settings
from pmcqa.core.settings_doc import END, START, render_into, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_documents_every_setting() -> None:
    readme = README.read_text()
    stale = "README settings table is stale: run python -m pmcqa.core.settings_doc"
    assert render_into(readme) == readme, stale
    for name in Settings.model_fields:
        assert f"PMCQA_{name.upper()}" in readme


def test_table_is_between_markers() -> None:
    table = settings_table()
    assert table.count("\n") == len(Settings.model_fields) + 1
    assert START in README.read_text() and END in README.read_text()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PMCQA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PMCQA_API_KEYS", "alpha, beta")
    monkeypatch.setenv("NCBI_API_KEY", "k")
    monkeypatch.delenv("PMCQA_NCBI_API_KEY", raising=False)
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.api_keys == ["alpha", "beta"]
    assert settings.ncbi_rate() == 10.0
    assert settings.raw_dir == tmp_path / "raw"


def test_rate_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NCBI_API_KEY", raising=False)
    monkeypatch.delenv("PMCQA_NCBI_API_KEY", raising=False)
    assert Settings().ncbi_rate() == 3.0


def test_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "pmcqa.toml"
    config.write_text('top_k = 5\nanswer_backend = "openai"\n')
    monkeypatch.setenv("PMCQA_CONFIG_FILE", str(config))
    settings = Settings()
    assert settings.top_k == 5 and settings.answer_backend == "openai"
    monkeypatch.setenv("PMCQA_TOP_K", "7")
    assert Settings().top_k == 7  # the environment wins over the file


def test_a_config_file_named_in_dotenv_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`.env` may name the TOML file like any other setting; it was silently ignored there."""
    config = tmp_path / "pmcqa.toml"
    config.write_text("top_k = 5\n")
    (tmp_path / ".env").write_text(f"PMCQA_CONFIG_FILE={config}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PMCQA_CONFIG_FILE", raising=False)
    monkeypatch.delenv("PMCQA_TOP_K", raising=False)
    assert Settings().top_k == 5
    (tmp_path / ".env").write_text(f"PMCQA_CONFIG_FILE={tmp_path / 'missing.toml'}\n")
    with pytest.raises(ConfigFileError, match="no such file"):
        Settings()


def test_the_config_file_is_read_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The check that refuses an ignored file hands its parsed values to the settings (it was read and
    parsed again by pydantic-settings' TOML source)."""
    config = tmp_path / "pmcqa.toml"
    config.write_text("top_k = 5\n")
    monkeypatch.setenv("PMCQA_CONFIG_FILE", str(config))
    opened: list[Path] = []
    open_path = Path.open

    def counting_open(self: Path, *args: object, **kwargs: object) -> object:
        if self == config:
            opened.append(self)
        return open_path(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", counting_open)
    assert Settings().top_k == 5
    assert len(opened) == 1


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file"),
        ("topk = 9\n", "unknown setting(s) topk"),  # a typo would leave the default in force
        ("top_k = \n", "not a readable TOML file"),
    ],
)
def test_a_config_file_that_would_be_ignored_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, says: str
) -> None:
    config = tmp_path / "pmcqa.toml"
    if content is not None:
        config.write_text(content)
    monkeypatch.setenv("PMCQA_CONFIG_FILE", str(config))
    with pytest.raises(ConfigFileError, match=re.escape(says)) as raised:
        Settings()
    assert str(config) in str(raised.value)


@pytest.mark.parametrize(
    "setting", ["ncbi_requests_per_second", "ncbi_timeout_s", "generation_timeout_s", "ncbi_backoff_s"]
)
def test_times_and_rates_must_be_usable(setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        Settings(**{setting: -1})


def test_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMCQA_ANSWER_BACKEND", "gpt5")
    with pytest.raises(ValueError, match="answer_backend"):
        Settings()
