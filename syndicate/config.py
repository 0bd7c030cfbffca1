"""config/*.toml + ${ENV} secrets -> typed settings.

Every mistake names the file, the table and the key: an operator editing TOML at 2 a.m. must not have to guess.
Unknown keys, unknown channel kinds and missing environment variables are errors, never silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, adapter_kinds
from syndicate.durations import parse_duration
from syndicate.media import MediaFetcher, MediaSettings, parse_allowed_host

M = TypeVar("M", bound=BaseModel)

DEFAULT_CONFIG_PATH = Path("config/syndicate.toml")
CONFIG_ENV = "SYNDICATE_CONFIG"
DATABASE_URL_ENV = "SYNDICATE_DATABASE_URL"
DEFAULT_STORE_URL = "sqlite:///var/syndicate.db"
#: Svix's schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; the first entry is the first attempt.
DEFAULT_RETRY: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config mistake, located by file, table and key."""

    def __init__(self, file: str, table: str | None, key: str | None, problem: str) -> None:
        where = file
        if table:
            where += f": [{table}]"
        if key:
            where += f" {key}"
        super().__init__(f"{where}: {problem}")
        self.file, self.table, self.key, self.problem = file, table, key, problem


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Table):
    url: str = DEFAULT_STORE_URL


class MediaTable(_Table):
    allow_private: bool = False
    allow_hosts: tuple[str, ...] = ()
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    allowed_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")
    cache_dir: str | None = "var/media-cache"
    timeout: float = Field(default=30.0, gt=0)


class EngineSettings(_Table):
    #: How long a claimed delivery stays ours without a heartbeat before any worker may reclaim it.
    lease_seconds: float = Field(default=60.0, gt=0)
    #: Safety-net poll for work enqueued by other processes (in-process work wakes workers at once).
    poll_interval: float = Field(default=1.0, gt=0)
    #: Most deliveries claimed in one transaction.
    claim_batch: int = Field(default=64, gt=0)
    #: Jitter added to each retry delay, as a fraction of it (0.1 = up to +10 %).
    retry_jitter: float = Field(default=0.1, ge=0, le=1)
    #: On SIGTERM, how long in-flight attempts may finish before they are interrupted and released.
    shutdown_grace: float = Field(default=30.0, ge=0)


#: The post ages at which reach is read by default: an hour, six hours, a day, three days, a week.
DEFAULT_REACH_AGES = ("1h", "6h", "24h", "3d", "7d")


class ReachSettings(_Table):
    """The ``[reach]`` table: whether delivered posts are sampled, and at which ages (durations such as "1h")."""

    enabled: bool = True
    ages: tuple[str, ...] = DEFAULT_REACH_AGES

    @field_validator("ages")
    @classmethod
    def _durations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for age in value:
            if parse_duration(age) <= 0:
                raise ValueError(f"{age!r}: an age must be longer than 0")
        if len(set(value)) != len(value):
            raise ValueError("each age may appear once")
        return value

    @property
    def age_seconds(self) -> tuple[float, ...]:
        """The ages in seconds, shortest first."""
        return tuple(sorted(parse_duration(age) for age in self.ages))


class ServerSettings(_Table):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Shared with the CMS: signs X-Syndicate-Signature on the publish hook. Usually "${ENV_VAR}".
    hook_secret: str | None = Field(default=None, min_length=16)
    #: Bearer token for the status and replay API. Usually "${ENV_VAR}".
    api_token: str | None = Field(default=None, min_length=16)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    #: How old a hook signature may be (seconds).
    signature_tolerance: float = Field(default=300.0, gt=0)
    #: The address people open the dashboard at when it is not host:port, e.g. behind a TLS-terminating proxy
    #: ("https://syndicate.newsroom.example"): the origin login and actions must come from, the cookies' Secure
    #: flag (an https URL) and the base of the redirects.
    public_url: str | None = None
    #: Proxies (addresses or networks) whose X-Forwarded-Proto, -Host and -For are believed; none by default, as
    #: any client can send those headers.
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("public_url")
    @classmethod
    def _origin_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an absolute http(s) URL (e.g. https://syndicate.newsroom.example)")
        try:
            parts.port  # noqa: B018 -- raises on a port out of range or not a number
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry a user name or password")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"{value!r} must be the origin only (scheme, host, optional port): the dashboard is served at the root"
            )
        # The origin as a browser sends it in Origin: lower-case, no trailing slash.
        return f"{parts.scheme}://{parts.netloc.lower()}"

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)") from None
        return value


class _ChannelCommon(_Table):
    kind: str
    enabled: bool = True
    concurrency: int = Field(default=4, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    retry: tuple[float, ...] = DEFAULT_RETRY

    @field_validator("retry")
    @classmethod
    def _retry_not_empty(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("must list at least one delay (the first attempt)")
        if any(d < 0 for d in value):
            raise ValueError("delays must be >= 0 seconds")
        return value


_COMMON_KEYS = frozenset(_ChannelCommon.model_fields)


@dataclass(frozen=True)
class ChannelSettings:
    """One `[channels.NAME]` table: the keys every channel has plus its kind's own options."""

    name: str
    kind: str
    enabled: bool
    concurrency: int
    timeout: float
    retry: tuple[float, ...]
    options: AdapterOptions
    adapter_cls: type[Adapter[Any, Any]]
    #: The [media] table, for adapters that fetch story images to upload them.
    media: MediaSettings = field(default_factory=MediaSettings)

    def create_adapter(
        self, *, clock: Callable[[], float] | None = None, media: MediaFetcher | None = None
    ) -> Adapter[Any, Any]:
        """The channel's adapter. The engine passes its clock and its shared media fetcher; without one the adapter
        makes (and closes) its own fetcher from the [media] table when it first needs an image."""
        deps: AdapterDeps = {"timeout": self.timeout}
        if clock is not None:
            deps["clock"] = clock
        if media is not None:
            deps["media"] = media
        adapter = self.adapter_cls(self.name, self.options, **deps)
        if media is None:
            adapter.media_settings = self.media
        return adapter


@dataclass(frozen=True)
class Settings:
    source: str
    store: StoreSettings = field(default_factory=StoreSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    channels: dict[str, ChannelSettings] = field(default_factory=dict)
    reach: ReachSettings = field(default_factory=ReachSettings)

    @property
    def enabled_channels(self) -> dict[str, ChannelSettings]:
        return {name: ch for name, ch in self.channels.items() if ch.enabled}


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config, else $SYNDICATE_CONFIG, else ./config/syndicate.toml when present, else None (built-in defaults)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the config file found by ``resolve_config_path``."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return Settings(source="(built-in defaults)")
    name = str(resolved)
    try:
        raw = tomllib.loads(resolved.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(name, None, None, "file not found") from None
    except OSError as exc:  # a directory, no permission...
        raise ConfigError(name, None, None, f"cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, None, f"not valid UTF-8 (TOML files must be UTF-8): {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, None, None, f"not valid TOML: {exc}") from None
    return parse_config(raw, source=name, env=os.environ if env is None else env)


def parse_config(raw: Mapping[str, Any], *, source: str, env: Mapping[str, str]) -> Settings:
    known = {"store", "media", "engine", "server", "channels", "reach"}
    for key in raw:
        if key not in known:
            raise ConfigError(source, None, key, f"unknown table or key (expected one of: {', '.join(sorted(known))})")
    store = _model(StoreSettings, raw.get("store", {}), source, "store", env)
    if env.get(DATABASE_URL_ENV):
        # The deployment's environment wins over the file, so one config serves every host.
        store = StoreSettings(url=env[DATABASE_URL_ENV])
    media_table = _model(MediaTable, raw.get("media", {}), source, "media", env)
    engine = _model(EngineSettings, raw.get("engine", {}), source, "engine", env)
    server = _model(ServerSettings, raw.get("server", {}), source, "server", env)
    reach = _model(ReachSettings, raw.get("reach", {}), source, "reach", env)
    try:
        allow_hosts = frozenset(parse_allowed_host(entry) for entry in media_table.allow_hosts)
    except ValueError as exc:
        raise ConfigError(source, "media", "allow_hosts", str(exc)) from None
    media = MediaSettings(
        allow_private=media_table.allow_private,
        allow_hosts=allow_hosts,
        max_bytes=media_table.max_bytes,
        allowed_types=media_table.allowed_types,
        cache_dir=Path(media_table.cache_dir) if media_table.cache_dir else None,
        timeout=media_table.timeout,
    )
    channels_raw = raw.get("channels", {})
    if not isinstance(channels_raw, dict):
        raise ConfigError(source, None, "channels", "must be a table of [channels.NAME] tables")
    channels = {name: replace(_channel(name, table, source, env), media=media) for name, table in channels_raw.items()}
    return Settings(
        source=source, store=store, media=media, engine=engine, server=server, channels=channels, reach=reach
    )


def _channel(name: str, table: Any, source: str, env: Mapping[str, str]) -> ChannelSettings:
    where = f"channels.{name}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
        raise ConfigError(source, where, None, "channel names are lower-case letters, digits, '-' and '_'")
    if not isinstance(table, dict):
        raise ConfigError(source, where, None, "must be a table")
    if "kind" not in table:
        raise ConfigError(source, where, "kind", "missing (every channel needs a kind)")
    kinds = adapter_kinds()
    kind = table["kind"]
    if not isinstance(kind, str) or kind not in kinds:
        raise ConfigError(
            source,
            where,
            "kind",
            f"unknown channel kind {kind!r} (known: {', '.join(sorted(kinds)) or 'none'})",
        )
    adapter_cls = kinds[kind]
    allowed = _COMMON_KEYS | set(adapter_cls.options_model.model_fields)
    for key in table:
        if key not in allowed:
            raise ConfigError(source, where, key, f"unknown key (allowed here: {', '.join(sorted(allowed))})")
    common = _model(_ChannelCommon, {k: v for k, v in table.items() if k in _COMMON_KEYS}, source, where, env)
    options = _model(
        adapter_cls.options_model,
        {k: v for k, v in table.items() if k not in _COMMON_KEYS},
        source,
        where,
        env,
    )
    return ChannelSettings(
        name=name,
        kind=kind,
        enabled=common.enabled,
        concurrency=common.concurrency,
        timeout=common.timeout,
        retry=common.retry,
        options=options,
        adapter_cls=adapter_cls,
    )


def _model(model: type[M], table: Any, source: str, where: str, env: Mapping[str, str]) -> M:
    if not isinstance(table, dict):
        raise ConfigError(source, where, None, "must be a table")
    values = {key: _substitute(value, source, where, key, env) for key, value in table.items()}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields))
            problem = f"unknown key (allowed here: {allowed})"
        elif err["type"] == "missing":
            problem = "missing (required)"
        else:
            problem = err["msg"]
        raise ConfigError(source, where, key, problem) from None


def _substitute(value: Any, source: str, where: str, key: str, env: Mapping[str, str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in strings (recursively); $$ is a literal $."""
    if isinstance(value, list):
        return [_substitute(v, source, where, key, env) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, source, where, f"{key}.{k}", env) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        var, default = match.group(1), match.group(2)
        # As in the shell, ${VAR:-default} also takes the default when VAR is set but empty.
        if var in env and (env[var] or default is None):
            return env[var]
        if default is not None:
            return default
        raise ConfigError(source, where, key, f"environment variable {var} is not set")

    return _ENV_REF.sub(repl, value)
