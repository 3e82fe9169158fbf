"""The CLI's settings: named profiles in a TOML config file, the API keys in a credentials file beside it.

    ~/.cloudimg/config (or $CLOUDIMG_CONFIG_FILE)         ~/.cloudimg/credentials (or $CLOUDIMG_CREDENTIALS_FILE)
    [default]                                             [default]
    endpoint = "gw.example.com:443"                       api_key = "ak-..."
    region = "ap-guangzhou"
    ca_cert = "/home/alice/.cloudimg/ca.pem"
    tls = true
    output = "table"
    timeout = 10

Each setting is taken from the first of: its flag, its environment variable, the profile (--profile, env
CLOUDIMG_PROFILE, default "default"), the built-in default. The API key is looked for in the credentials file
first, then in the config file; `cloudimg configure` writes it to the credentials file (mode 0600) so that the
config file can be shared.
"""

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PROFILE = "default"
OUTPUTS = ("table", "json", "yaml", "text")
# In the order `configure list` shows them.
DEFAULTS: dict[str, Any] = {"endpoint": "127.0.0.1:50050", "api_key": None, "region": None, "ca_cert": None,
                            "tls": False, "output": "table", "timeout": 10.0}
ENV = {name: f"CLOUDIMG_{name.upper()}" for name in DEFAULTS}
SECRET = "api_key"  # kept in the credentials file
_PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a TOML bare key
# The host a name, an IPv4 address or a bracketed IPv6 address; gRPC finds out whether it exists.
_ENDPOINT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(Exception):
    """A setting, profile or file that cannot be used: one line, exit 2, nothing sent."""


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "--region", "env CLOUDIMG_REGION", 'profile "default" (/root/.cloudimg/config)', "default"


@dataclass(frozen=True)
class Settings:
    profile: Setting
    config_file: Path
    credentials_file: Path
    values: dict[str, Setting]

    def __getitem__(self, name: str) -> Any:
        return self.values[name].value


# Parsers of a setting's text (a flag or a variable) or TOML value; ValueError says what is wrong.

def endpoint(text: str) -> str:
    match = _ENDPOINT.fullmatch(text)
    if match is None or not 1 <= int(match[1]) <= 65535:
        raise ValueError(f"must be HOST:PORT with a port from 1 to 65535 (got {text[:80]!r})")
    return text


def timeout(text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(text, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a number of seconds greater than 0 (got {str(text)[:80]!r})")
    return value


def output(text: str) -> str:
    if text not in OUTPUTS:
        raise ValueError(f"must be one of {', '.join(OUTPUTS)} (got {str(text)[:80]!r})")
    return text


def boolean(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    raise ValueError(f"must be true or false (got {text[:80]!r})")


def profile_name(text: str) -> str:
    if not _PROFILE_NAME.fullmatch(text):
        raise ValueError(f"must be 1 to 64 letters, digits, '-' or '_' (got {text[:80]!r})")
    return text


def text_value(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string (got {value!r})")
    return value


PARSERS = {"endpoint": endpoint, "api_key": text_value, "region": text_value, "ca_cert": text_value,
           "tls": boolean, "output": output, "timeout": timeout}


def config_file(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("CLOUDIMG_CONFIG_FILE") or Path.home() / ".cloudimg" / "config").expanduser()


def credentials_file(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("CLOUDIMG_CREDENTIALS_FILE") or Path.home() / ".cloudimg" / "credentials").expanduser()


def read(path: Path) -> dict[str, dict[str, Any]]:
    """A config or credentials file: its profiles (TOML tables); {} when there is no file."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for name, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name!r} is not a profile: every setting belongs under a [profile] header")
    return document


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str], profile_flag: str | None = None,
            new_profile: bool = False) -> Settings:
    """Every setting with where it came from. ``flags`` holds the settings given as flags (None: not given); a
    profile asked for by name must exist, unless it is a ``new_profile`` (configure creates it)."""
    if profile_flag:
        profile = Setting(profile_flag, "--profile")
    elif environ.get("CLOUDIMG_PROFILE"):
        try:
            profile = Setting(profile_name(environ["CLOUDIMG_PROFILE"]), "env CLOUDIMG_PROFILE")
        except ValueError as exc:
            raise ConfigError(f"CLOUDIMG_PROFILE {exc}") from None
    else:
        profile = Setting(DEFAULT_PROFILE, "default")
    config_path, credentials_path = config_file(environ), credentials_file(environ)
    configured = read(config_path)
    credentials = read(credentials_path)
    name = profile.value
    if profile.source != "default" and not new_profile and name not in configured and name not in credentials:
        raise ConfigError(f"profile {name!r} (from {profile.source}) is not in {config_path} nor in "
                          f"{credentials_path}: create it with: cloudimg configure --profile {name} ...")
    stored = _checked(configured.get(name, {}), name, config_path, set(DEFAULTS))
    secrets = _checked(credentials.get(name, {}), name, credentials_path, {SECRET})
    values = {}
    for key, default in DEFAULTS.items():
        if flags.get(key) is not None:
            values[key] = Setting(flags[key], f"--{key.replace('_', '-')}")
        elif environ.get(ENV[key]) is not None and (environ[ENV[key]] or key == "endpoint"):
            # Set but empty is unset, except for the endpoint: an empty one is a mistake, not the default.
            if not environ[ENV[key]]:
                raise ConfigError(f"{ENV[key]} is set but empty: set it to HOST:PORT or unset it (default {default})")
            try:
                values[key] = Setting(PARSERS[key](environ[ENV[key]]), f"env {ENV[key]}")
            except ValueError as exc:
                raise ConfigError(f"{ENV[key]} {exc}") from None
        elif key in secrets:
            values[key] = Setting(secrets[key], f"profile {name!r} ({credentials_path})")
        elif key in stored:
            values[key] = Setting(stored[key], f"profile {name!r} ({config_path})")
        else:
            values[key] = Setting(default, "default")
    return Settings(profile, config_path, credentials_path, values)


def _checked(table: dict[str, Any], name: str, path: Path, allowed: set[str]) -> dict[str, Any]:
    """A profile's settings, each parsed; an unknown key (a typo) or a bad value is refused."""
    checked = {}
    for key, value in table.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"{path}: profile {name!r}: unknown setting {key!r} (known: {known})")
        try:
            checked[key] = PARSERS[key](value)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: profile {name!r}: {key} {exc}") from None
    return checked


def write_profile(settings: Settings, changes: Mapping[str, Any]) -> None:
    """Sets (a value) or removes (None) settings of the chosen profile: the API key in the credentials file,
    the rest in the config file; every other profile and setting stays as it was (comments do not)."""
    name = settings.profile.value
    for path, keys in ((settings.credentials_file, {SECRET}), (settings.config_file, set(DEFAULTS) - {SECRET})):
        mine = {key: value for key, value in changes.items() if key in keys}
        if not mine:
            continue
        document = read(path)
        table = document.setdefault(name, {})
        for key, value in mine.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        _save(path, document)


def _save(path: Path, document: dict[str, dict[str, Any]]) -> None:
    text = dump(document)
    if tomllib.loads(text) != document:  # a value this writer cannot spell: leave the file alone
        raise ConfigError(f"{path}: holds values cloudimg configure cannot rewrite; edit the file by hand")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(draft, path)
    except OSError as exc:
        draft.unlink(missing_ok=True)
        raise ConfigError(f"{path}: {exc.strerror}") from None


def dump(document: dict[str, dict[str, Any]]) -> str:
    """TOML for profiles of strings, booleans and numbers."""
    lines = []
    for name, table in document.items():
        lines.append(f"[{_key(name)}]")
        lines += [f"{_key(key)} = {_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def _key(name: str) -> str:
    return name if _PROFILE_NAME.fullmatch(name) else _value(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def masked(key: str | None) -> str:
    """An API key as `configure list` shows it: its last four characters, if it is long enough to spare them."""
    if not key:
        return "-"
    return "*" * 12 + key[-4:] if len(key) >= 12 else "*" * 12
