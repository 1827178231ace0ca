"""Settings of the outside services, read under their conventional names."""

from __future__ import annotations

from chatbot.settings import Settings
from tests.support.server import serve_to_the_end


def test_mongo_and_openai_settings_come_from_their_usual_variables(monkeypatch):
    monkeypatch.setenv("MONGO_URL", "mongodb://user:pw@db.example:27017/?authSource=admin")
    monkeypatch.setenv("MONGO_DATABASE", "chat_prod")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway/office/v1")
    s = Settings()
    assert s.mongo_url.get_secret_value().startswith("mongodb://user:pw@")
    assert s.mongo_database == "chat_prod" and s.openai_base_url == "http://gateway/office/v1"
    assert s.openai_api_key.get_secret_value() == "sk-test"
    assert "pw" not in repr(s) and "sk-test" not in repr(s)  # secrets stay out of logs


def test_defaults_without_them(monkeypatch):
    for name in ("MONGO_URL", "MONGO_DATABASE", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.mongo_url is None and s.mongo_database == "chatbot" and s.openai_api_key is None
    assert s.search == "ddgs"


def test_a_bad_mongo_url_is_a_clear_error_that_does_not_echo_it():
    run = serve_to_the_end({"MONGO_URL": "db.example:27017?password=hunter2"})
    assert run.returncode == 2
    assert "MONGO_URL" in run.stderr and "mongodb://" in run.stderr
    assert "hunter2" not in run.stderr and "Traceback" not in run.stderr


def test_recorded_search_without_a_file_is_a_clear_configuration_error():
    run = serve_to_the_end({"CHATBOT_SEARCH": "recorded", "CHATBOT_SEARCH_RECORDED_PATH": None})
    assert run.returncode == 2
    assert "CHATBOT_SEARCH_RECORDED_PATH" in run.stderr and "Traceback" not in run.stderr


def test_one_nested_model_setting_keeps_the_personas_other_model_defaults(monkeypatch):
    """Setting the character's threads must not reset its 50 GPU layers to office's -1."""
    monkeypatch.setenv("CHATBOT_CHARACTER__MODEL__N_THREADS", "1")
    monkeypatch.setenv("CHATBOT_OFFICE__MODEL__N_THREADS", "1")
    s = Settings()
    assert s.character.model.n_threads == 1 and s.character.model.n_gpu_layers == 50
    assert s.office.model.n_threads == 1 and s.office.model.n_gpu_layers == -1
    monkeypatch.setenv("CHATBOT_CHARACTER__MODEL__N_GPU_LAYERS", "20")
    assert Settings().character.model.n_gpu_layers == 20
