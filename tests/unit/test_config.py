"""config/*.toml + ${ENV} -> Settings: defaults, substitution, and errors that name the file, the table and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adapters.webhook.adapter import WebhookAdapter, WebhookOptions
from syndicate.config import (
    CONFIG_ENV,
    DEFAULT_RETRY,
    DEFAULT_STORE_URL,
    ConfigError,
    load_config,
    resolve_config_path,
)

REPO = Path(__file__).resolve().parents[2]

WEBHOOK = """
[channels.x]
kind = "webhook"
url = "http://127.0.0.1:9/webhook/x"
secret = "s3cret"
"""


def write(tmp_path: Path, text: str, name: str = "syndicate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value


# ------------------------------------------------------------------------------------------ loading & defaults


def test_defaults_for_a_minimal_channel(tmp_path: Path) -> None:
    path = write(tmp_path, WEBHOOK)
    settings = load_config(path, env={})
    assert settings.source == str(path)
    assert settings.store.url == DEFAULT_STORE_URL == "sqlite:///var/syndicate.db"
    assert list(settings.channels) == ["x"]
    ch = settings.channels["x"]
    assert ch.name == "x" and ch.kind == "webhook" and ch.enabled is True
    assert ch.concurrency == 4
    assert ch.timeout == 30
    assert ch.retry == DEFAULT_RETRY == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert ch.adapter_cls is WebhookAdapter
    assert isinstance(ch.options, WebhookOptions)
    assert str(ch.options.url) == "http://127.0.0.1:9/webhook/x"
    assert ch.options.secret == "s3cret" and ch.options.lookup_url is None and ch.options.headers == {}
    assert settings.engine.lease_seconds == 60 and settings.engine.retry_jitter == 0.1
    assert settings.media.allow_private is False
    adapter = ch.create_adapter()
    assert isinstance(adapter, WebhookAdapter) and adapter.name == "x" and adapter.timeout == 30
    assert adapter.supports_lookup is False


def test_empty_file_gives_defaults_and_no_channels(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, ""), env={})
    assert settings.store.url == DEFAULT_STORE_URL
    assert settings.channels == {}


def test_explicit_values_override_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[store]
url = "sqlite:///tmp/other.db"
[engine]
lease_seconds = 12
[channels.x]
kind = "webhook"
url = "http://127.0.0.1:9/webhook/x"
lookup_url = "http://127.0.0.1:9/webhook/x"
secret = "s"
concurrency = 2
timeout = 0.5
retry = [0, 0.05, 1]
enabled = false
headers = { "X-Newsroom" = "baoshan" }
""",
    )
    settings = load_config(path, env={})
    assert settings.store.url == "sqlite:///tmp/other.db"
    assert settings.engine.lease_seconds == 12
    ch = settings.channels["x"]
    assert (ch.concurrency, ch.timeout, ch.retry, ch.enabled) == (2, 0.5, (0, 0.05, 1), False)
    assert ch.options.headers == {"X-Newsroom": "baoshan"}
    assert settings.enabled_channels == {}
    assert ch.create_adapter().supports_lookup is True


# ------------------------------------------------------------------------------------------ ${VAR} substitution


def test_env_substitution(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[store]
url = "sqlite:///${DB_DIR}/s.db"
[channels.x]
kind = "webhook"
url = "${BASE:-http://127.0.0.1:8765}/webhook/${NAME}"
secret = "pa$$word-${SECRET}-$${NOT_A_VAR}-${UNSET:-fallback}"
headers = { "Authorization" = "Bearer ${TOKEN}" }
""",
    )
    env = {"DB_DIR": "data", "NAME": "mirror", "SECRET": "xyz", "TOKEN": "t0k"}
    settings = load_config(path, env=env)
    assert settings.store.url == "sqlite:///data/s.db"
    ch = settings.channels["x"]
    assert str(ch.options.url) == "http://127.0.0.1:8765/webhook/mirror"
    assert ch.options.secret == "pa$word-xyz-${NOT_A_VAR}-fallback"
    assert ch.options.headers == {"Authorization": "Bearer t0k"}

    settings = load_config(path, env={**env, "BASE": "https://hooks.example.com"})
    assert str(settings.channels["x"].options.url) == "https://hooks.example.com/webhook/mirror"


def test_default_also_applies_when_the_variable_is_empty(tmp_path: Path) -> None:
    # Shell semantics of ${VAR:-default}: unset *or empty* takes the default.
    path = write(tmp_path, WEBHOOK.replace('"s3cret"', '"${SECRET:-dflt}"'))
    assert load_config(path, env={"SECRET": ""}).channels["x"].options.secret == "dflt"
    assert load_config(path, env={"SECRET": "set"}).channels["x"].options.secret == "set"


def test_substitution_uses_the_given_env_not_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNDICATE_TEST_SECRET", "from-os")
    path = write(tmp_path, WEBHOOK.replace('"s3cret"', '"${SYNDICATE_TEST_SECRET}"'))
    assert load_config(path, env={"SYNDICATE_TEST_SECRET": "from-arg"}).channels["x"].options.secret == "from-arg"
    assert load_config(path).channels["x"].options.secret == "from-os"  # env=None: the process environment


def test_missing_env_var_names_file_table_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, WEBHOOK.replace('"s3cret"', '"${MISSING_SECRET}"'))
    err = config_error(path)
    message = str(err)
    assert str(path) in message
    assert "[channels.x]" in message
    assert re.search(r"\bsecret\b", message)
    assert "MISSING_SECRET" in message and "not set" in message
    assert (err.file, err.table, err.key) == (str(path), "channels.x", "secret")


def test_missing_env_var_in_a_nested_table_and_in_store(tmp_path: Path) -> None:
    path = write(tmp_path, WEBHOOK + 'headers = { "X-Token" = "${TOKEN}" }\n')
    err = config_error(path)
    assert (err.table, err.key) == ("channels.x", "headers.X-Token") and "TOKEN" in str(err)

    path = write(tmp_path, '[store]\nurl = "${DB_URL}"\n')
    err = config_error(path)
    assert (err.table, err.key) == ("store", "url")
    assert f"{path}: [store] url: environment variable DB_URL is not set" == str(err)


# ------------------------------------------------------------------------------------------ unknown keys & kinds


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = config_error(write(tmp_path, '[stroe]\nurl = "x"\n'))
    assert err.key == "stroe"
    assert "stroe" in str(err) and "unknown" in str(err)
    assert "channels, engine, media, reach, server, store" in str(err)


def test_unknown_key_in_store(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\npath = "var/s.db"\n')
    err = config_error(path)
    assert str(err) == f"{path}: [store] path: unknown key (allowed here: url)"


def test_unknown_key_in_engine_lists_the_allowed_ones(tmp_path: Path) -> None:
    err = config_error(write(tmp_path, "[engine]\nlease = 5\n"))
    assert (err.table, err.key) == ("engine", "lease")
    assert "claim_batch, lease_seconds, poll_interval, retry_jitter" in str(err)


@pytest.mark.parametrize("typo", ["concurency = 3", "lookup = 'http://a/b'", "secrets = 'x'"])
def test_unknown_key_in_a_channel_lists_common_and_kind_keys(tmp_path: Path, typo: str) -> None:
    err = config_error(write(tmp_path, WEBHOOK + typo + "\n"))
    key = typo.split(" ")[0]
    assert (err.table, err.key) == ("channels.x", key)
    assert f"[channels.x] {key}: unknown key" in str(err)
    allowed = re.search(r"allowed here: ([^)]*)\)", str(err))
    assert allowed is not None
    names = set(allowed.group(1).split(", "))
    # Both the keys every channel has and the webhook's own keys: an operator fixing a typo sees them all.
    assert {"kind", "enabled", "concurrency", "timeout", "retry"} <= names
    assert {"url", "secret", "lookup_url", "headers"} <= names


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    err = config_error(write(tmp_path, WEBHOOK.replace('kind = "webhook"', 'kind = "telegram"')))
    assert (err.table, err.key) == ("channels.x", "kind")
    assert "unknown channel kind 'telegram'" in str(err)
    known = re.search(r"known: ([^)]*)\)", str(err))
    assert known is not None and "webhook" in known.group(1).split(", ")


@pytest.mark.parametrize("kind", ['["webhook"]', "{ name = 'webhook' }", "7"])
def test_non_string_kind_is_a_config_error(tmp_path: Path, kind: str) -> None:
    err = config_error(write(tmp_path, WEBHOOK.replace('kind = "webhook"', f"kind = {kind}")))
    assert (err.table, err.key) == ("channels.x", "kind") and "unknown channel kind" in str(err)


def test_missing_kind(tmp_path: Path) -> None:
    err = config_error(write(tmp_path, WEBHOOK.replace('kind = "webhook"\n', "")))
    assert (err.table, err.key) == ("channels.x", "kind")
    assert "missing" in str(err)


def test_missing_required_kind_option(tmp_path: Path) -> None:
    err = config_error(write(tmp_path, WEBHOOK.replace('secret = "s3cret"\n', "")))
    assert (err.table, err.key) == ("channels.x", "secret") and "missing" in str(err)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('url = "not a url"', "url"),
        ('secret = ""', "secret"),
        ("concurrency = 0", "concurrency"),
        ("timeout = -1", "timeout"),
        ('enabled = "perhaps"', "enabled"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    text = "\n".join(ln for ln in WEBHOOK.splitlines() if not ln.startswith(key + " ")) + "\n" + line + "\n"
    err = config_error(write(tmp_path, text))
    assert (err.table, err.key) == ("channels.x", key)
    assert f"[channels.x] {key}:" in str(err)


@pytest.mark.parametrize(
    ("retry", "problem"),
    [
        ("[]", "at least one delay"),
        ("[0, -5, 10]", ">= 0"),
        ("[-1]", ">= 0"),
        ('"fast"', ""),
    ],
)
def test_bad_retry(tmp_path: Path, retry: str, problem: str) -> None:
    err = config_error(write(tmp_path, WEBHOOK + f"retry = {retry}\n"))
    assert err.table == "channels.x"
    assert err.key is not None and err.key.startswith("retry")
    assert problem in str(err)


@pytest.mark.parametrize("name", ["Mirror", "with space", "-x", "_x", "x.y", "a" * 64, "镜像"])
def test_bad_channel_name(tmp_path: Path, name: str) -> None:
    err = config_error(write(tmp_path, WEBHOOK.replace("[channels.x]", f'[channels."{name}"]')))
    assert err.table == f"channels.{name}"
    assert "lower-case letters, digits" in str(err)


@pytest.mark.parametrize("name", ["x", "cms-mirror", "a_b", "0news", "a" * 63])
def test_good_channel_names(tmp_path: Path, name: str) -> None:
    settings = load_config(write(tmp_path, WEBHOOK.replace("[channels.x]", f'[channels."{name}"]')), env={})
    assert list(settings.channels) == [name]


def test_tables_must_be_tables(tmp_path: Path) -> None:
    err = config_error(write(tmp_path, 'store = "sqlite:///x.db"\n'))
    assert err.table == "store" and "must be a table" in str(err)
    err = config_error(write(tmp_path, "channels = 5\n"))
    assert err.key == "channels" and "must be a table" in str(err)
    err = config_error(write(tmp_path, "[channels]\nx = 1\n"))
    assert err.table == "channels.x" and "must be a table" in str(err)


# ------------------------------------------------------------------------------------------ reading the file


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl = "unterminated\n')
    err = config_error(path)
    assert str(err).startswith(f"{path}: not valid TOML")
    assert "line 2" in str(err)


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = config_error(path)
    assert str(err) == f"{path}: file not found"


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    err = config_error(tmp_path)
    assert str(err).startswith(f"{tmp_path}: cannot read the file")


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[store]\nurl = "sqlite:///café.db"\n'.encode("latin-1"))
    err = config_error(path)
    assert str(err).startswith(f"{path}: not valid UTF-8")


# ------------------------------------------------------------------------------------------ which file


def test_resolve_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert resolve_config_path(None) is None  # nothing anywhere: built-in defaults

    (tmp_path / "config").mkdir()
    write(tmp_path / "config", "")
    assert resolve_config_path(None) == Path("config/syndicate.toml")

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "from-env.toml"))
    assert resolve_config_path(None) == tmp_path / "from-env.toml"
    assert resolve_config_path(tmp_path / "explicit.toml") == tmp_path / "explicit.toml"
    assert resolve_config_path("explicit.toml") == Path("explicit.toml")

    monkeypatch.setenv(CONFIG_ENV, "")
    assert resolve_config_path(None) == Path("config/syndicate.toml")


def test_load_config_follows_the_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    settings = load_config(None, env={})
    assert settings.source == "(built-in defaults)" and settings.channels == {}

    (tmp_path / "config").mkdir()
    write(tmp_path / "config", '[store]\nurl = "sqlite:///cwd.db"\n')
    assert load_config(None, env={}).store.url == "sqlite:///cwd.db"

    env_file = write(tmp_path, '[store]\nurl = "sqlite:///env.db"\n', "env.toml")
    monkeypatch.setenv(CONFIG_ENV, str(env_file))
    assert load_config(None, env={}).store.url == "sqlite:///env.db"

    explicit = write(tmp_path, '[store]\nurl = "sqlite:///explicit.db"\n', "explicit.toml")
    settings = load_config(explicit, env={})
    assert settings.store.url == "sqlite:///explicit.db" and settings.source == str(explicit)

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.toml"))
    err = config_error(None)
    assert str(err) == f"{tmp_path / 'missing.toml'}: file not found"


# ------------------------------------------------------------------------------------------ shipped files


def test_shipped_default_config_loads() -> None:
    settings = load_config(REPO / "config" / "syndicate.toml", env={})
    assert settings.store.url == DEFAULT_STORE_URL
    assert settings.media.allow_private is False  # a test-only escape hatch: no shipped config sets it
    assert settings.media.allow_hosts == {("127.0.0.1", 8765)}  # the sandbox's own host, and only it
    assert list(settings.channels) == [
        "cms-mirror",
        "archive",
        "newswire",
        "website",
        "feed",
        "app",
        "peoples_account",
        "shangguan",
        "wechat",
        "weibo",
        "x",
    ]
    kinds = {ch.kind for ch in settings.channels.values()}
    assert kinds == {"webhook", "website", "rss", "app", "partner", "wechat", "weibo", "x"}
    assert str(settings.channels["app"].options.api_base).startswith("http://127.0.0.1:8765")
    for name, ch in settings.channels.items():
        if ch.kind != "webhook":
            continue
        assert ch.enabled
        assert str(ch.options.url) == f"http://127.0.0.1:8765/webhook/{name}"
        assert ch.options.lookup_url is not None
        assert ch.options.secret == "sandbox-secret"
        assert ch.retry == (0, 0.5, 1, 2, 5)

    settings = load_config(
        REPO / "config" / "syndicate.toml",
        env={"SYNDICATE_SANDBOX_URL": "http://127.0.0.1:9999", "SYNDICATE_WEBHOOK_SECRET": "other"},
    )
    assert str(settings.channels["archive"].options.url) == "http://127.0.0.1:9999/webhook/archive"
    assert settings.channels["archive"].options.secret == "other"


#: Every secret channels.example.toml references.
EXAMPLE_ENV = {
    "MIRROR_WEBHOOK_SECRET": "m1rror",
    "MIRROR_WEBHOOK_TOKEN": "m1rror-bearer",
    "JPUSH_APP_KEY": "jpush-key",
    "JPUSH_MASTER_SECRET": "jpush-master-secret",
    "PEOPLES_ACCOUNT_APP_KEY": "pa-key",
    "PEOPLES_ACCOUNT_SECRET": "pa-secret",
    "SHANGGUAN_APP_KEY": "sg-key",
    "SHANGGUAN_SECRET": "sg-secret",
    "WECHAT_APP_ID": "wx-app",
    "WECHAT_APP_SECRET": "wx-secret",
    "WECHAT_CALLBACK_TOKEN": "wx-token",
    "WEIBO_ACCESS_TOKEN": "wb-token",
    "X_CONSUMER_KEY": "x-ck",
    "X_CONSUMER_SECRET": "x-cs",
    "X_ACCESS_TOKEN": "x-at",
    "X_ACCESS_TOKEN_SECRET": "x-ats",
    "SYNDICATE_HOOK_SECRET": "hook-secret-0123456789",
    "SYNDICATE_API_TOKEN": "api-token-0123456789",
}


def test_shipped_example_config_loads_with_its_secret() -> None:
    path = REPO / "config" / "channels.example.toml"
    settings = load_config(path, env=EXAMPLE_ENV)
    assert settings.server.hook_secret == "hook-secret-0123456789"
    ch = settings.channels["cms-mirror"]
    assert ch.options.secret == "m1rror"
    assert ch.options.headers == {"X-Newsroom": "baoshan", "Authorization": "Bearer m1rror-bearer"}
    assert ch.concurrency == 4 and ch.timeout == 30 and ch.retry == DEFAULT_RETRY
    assert settings.engine.claim_batch == 64 and settings.media.allow_private is False


def test_shipped_example_config_names_its_missing_secret() -> None:
    path = REPO / "config" / "channels.example.toml"
    err = config_error(path, env={k: v for k, v in EXAMPLE_ENV.items() if k != "MIRROR_WEBHOOK_SECRET"})
    assert "MIRROR_WEBHOOK_SECRET" in str(err)
    assert (err.file, err.table, err.key) == (str(path), "channels.cms-mirror", "secret")
