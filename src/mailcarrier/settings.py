"""Runtime settings: one object, each setting declared once.

Values come from (highest first) environment variables named
``MAILCARRIER_<NAME>``, then ``mailcarrier.toml`` in the working
directory (or the file named by ``MAILCARRIER_CONFIG``), then the
defaults below. The environment variable names are part of mailcarrier's
interface and do not change.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mailcarrier.addresses import AddressError, domain_to_ascii


class SettingsError(ValueError):
    """A setting has a value mailcarrier cannot use; the text says which."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TrustedNetwork:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    resource: str


@dataclass(frozen=True)
class StaticRoute:
    domain: str  # lower-case A-label, or "*" for every domain
    target: HostPort


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """Parse ``host:port``, ``[v6]:port`` or (with a default) a bare host."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise SettingsError(f"unbalanced brackets in address {text!r}")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif default_port is not None and text:
        host, port_text = text, ""
    else:
        raise SettingsError(f"expected host:port, got {text!r}")
    if not port_text:
        if default_port is None:
            raise SettingsError(f"missing port in {text!r}")
        return HostPort(host, default_port)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise SettingsError(f"bad port in {text!r}: use a number from 1 to 65535")
    return HostPort(host, int(port_text))


_ASYNC_DRIVERS = {
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
    "sqlite://": "sqlite+aiosqlite://",
}
_SUPPORTED_DATABASES = (*_ASYNC_DRIVERS, "postgresql+asyncpg://", "sqlite+aiosqlite://")


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _default_hostname() -> str:
    name = socket.getfqdn()
    return name if name and name != "localhost" else "localhost"


class Settings(BaseSettings):
    """Every setting of mailcarrier, with its type and default."""

    model_config = SettingsConfigDict(
        env_prefix="MAILCARRIER_",
        extra="ignore",
        case_sensitive=False,
    )

    # Database, certificates, keys and spool live here.
    data_dir: Path = Path("./data")
    # SQLAlchemy URL; empty means a SQLite file in the data folder.
    database_url: str = ""
    # Shared rate-limit counters; empty means kept by the service itself.
    redis_url: str = ""
    # EHLO name, Message-ID domain, API host name.
    hostname: str = Field(default_factory=_default_hostname)
    # Submission with STARTTLS.
    smtp_listen: str = "127.0.0.1:2587"
    # Submission with implicit TLS.
    smtps_listen: str = "127.0.0.1:2465"
    # HTTPS API and console.
    api_listen: str = "127.0.0.1:8443"
    # Authoritative DNS server for the managed zone.
    dns_listen: str = "127.0.0.1:5353"
    # Inbound SMTP for bounces of our own mail.
    bounce_listen: str = "127.0.0.1:2525"
    # Parent zone of managed domains.
    managed_zone: str = "mailcarrier.localhost"
    # Nameservers for outbound lookups, host:port,...; empty = the system's.
    resolver: str = ""
    # Port of recipients' MX hosts.
    delivery_port: int = Field(default=25, ge=1, le=65535)
    # Static routes, domain=host:port,... ("*" matches every domain).
    routes: str = ""
    # Networks that relay without AUTH, bound to a resource: CIDR=RESOURCE,...
    trusted_networks: str = ""
    # Server certificate and key (PEM); empty = a self-signed CA in data_dir.
    tls_cert: str = ""
    tls_key: str = ""
    # Worker processes for `serve`; 0 = one per CPU.
    workers: int = Field(default=0, ge=0, le=256)
    # Largest message accepted, in bytes.
    max_message_size: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Most recipients one message may have.
    max_recipients: int = Field(default=50, ge=1, le=1000)
    # Seconds an implicit-TLS client has to finish its handshake.
    tls_handshake_timeout: float = Field(default=10.0, gt=0)
    # Seconds an idle SMTP session is kept open.
    smtp_idle_timeout: float = Field(default=300.0, gt=0)
    # How long a message may stay queued before it fails, in seconds.
    max_queue_lifetime: float = Field(default=24 * 3600.0, gt=0)
    # Retry schedule: first delay and growth factor (seconds), and its cap.
    retry_initial_delay: float = Field(default=60.0, gt=0)
    retry_backoff_factor: float = Field(default=2.0, ge=1.0)
    retry_max_delay: float = Field(default=3600.0, gt=0)
    # Connections a worker opens to one destination host at the same time.
    per_destination_concurrency: int = Field(default=20, ge=1, le=1000)
    # Seconds a claimed queue entry belongs to its worker before others
    # may take it over; leases are renewed while delivery is under way.
    lease_seconds: float = Field(default=300.0, ge=5)
    # Seconds to wait for a connection, a command reply, and the reply to
    # the final dot of DATA (RFC 5321 4.5.3.2 suggests 10 minutes).
    connect_timeout: float = Field(default=30.0, gt=0)
    command_timeout: float = Field(default=120.0, gt=0)
    data_timeout: float = Field(default=600.0, gt=0)
    # Idle outbound connections are closed after this many seconds.
    connection_idle_timeout: float = Field(default=30.0, gt=0)
    # Name of this machine in leases; empty = hostname.
    node_name: str = ""
    # Log level of the service.
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("MAILCARRIER_CONFIG", "mailcarrier.toml")
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
        return (init_settings, env_settings, toml)

    @field_validator("managed_zone", "hostname")
    @classmethod
    def _lower_name(cls, value: str) -> str:
        name = value.strip().rstrip(".").lower()
        if not _HOSTNAME.fullmatch(name):
            raise SettingsError(
                f"{value!r} is not a host name (letters, digits, hyphens, dots)"
            )
        return name

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Settings:
        seen: dict[str, str] = {}
        for name in ("smtp_listen", "smtps_listen", "api_listen", "dns_listen",
                     "bounce_listen"):
            value = getattr(self, name)
            if value and value in seen:
                raise SettingsError(
                    f"{name} and {seen[value]} are both {value}; give each its own "
                    "address or port"
                )
            seen[value] = name
        return self

    @field_validator(
        "smtp_listen", "smtps_listen", "api_listen", "dns_listen", "bounce_listen"
    )
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value.strip():
            parse_host_port(value)
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(_SUPPORTED_DATABASES):
            scheme = value.split(":", 1)[0] if ":" in value else value[:20]
            raise SettingsError(
                f"unsupported database URL scheme {scheme!r}; use "
                "postgresql://user@host/db (asyncpg) or sqlite:///path/to/file.db"
            )
        return value

    @field_validator("routes", "trusted_networks", "resolver")
    @classmethod
    def _check_lists(cls, value: str, info: Any) -> str:
        # Parse once here so a mistake is reported at start, not at use.
        parser = {
            "routes": _parse_routes,
            "trusted_networks": _parse_trusted,
            "resolver": _parse_resolver,
        }[info.field_name]
        parser(value)
        return value

    # Derived values -------------------------------------------------------

    @cached_property
    def database_url_resolved(self) -> str:
        """The URL with mailcarrier's async driver filled in where left out."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'mailcarrier.db').resolve()}"
        for plain, driver in _ASYNC_DRIVERS.items():
            if url.startswith(plain):
                return driver + url[len(plain):]
        return url

    @cached_property
    def static_routes(self) -> list[StaticRoute]:
        return _parse_routes(self.routes)

    @cached_property
    def trusted(self) -> list[TrustedNetwork]:
        return _parse_trusted(self.trusted_networks)

    @cached_property
    def nameservers(self) -> list[HostPort]:
        return _parse_resolver(self.resolver)

    @cached_property
    def smtp_address(self) -> HostPort | None:
        return parse_host_port(self.smtp_listen) if self.smtp_listen else None

    @cached_property
    def smtps_address(self) -> HostPort | None:
        return parse_host_port(self.smtps_listen) if self.smtps_listen else None

    @cached_property
    def api_address(self) -> HostPort:
        return parse_host_port(self.api_listen)

    @cached_property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @cached_property
    def node(self) -> str:
        return self.node_name or self.hostname


def _parse_routes(text: str) -> list[StaticRoute]:
    routes = []
    for item in _split_list(text):
        domain, sep, target = item.partition("=")
        if not sep or not domain.strip():
            raise SettingsError(f"route {item!r} is not domain=host:port")
        name = domain.strip().rstrip(".").lower()
        if name != "*":
            # The same IDNA 2008 + UTS 46 form recipients' domains take, so
            # a route for faß.de matches mail to faß.de (IDNA 2003: fass.de).
            try:
                name = domain_to_ascii(name)
            except AddressError as exc:
                raise SettingsError(f"route {item!r}: {exc}") from exc
        routes.append(StaticRoute(name, parse_host_port(target, default_port=25)))
    return routes


def _parse_trusted(text: str) -> list[TrustedNetwork]:
    networks = []
    for item in _split_list(text):
        cidr, sep, resource = item.partition("=")
        if not sep or not resource.strip():
            raise SettingsError(
                f"trusted network {item!r} is not CIDR=RESOURCE "
                "(for example 10.0.0.0/8=default)"
            )
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise SettingsError(f"trusted network {cidr!r}: {exc}") from exc
        networks.append(TrustedNetwork(network, resource.strip()))
    return networks


def _parse_resolver(text: str) -> list[HostPort]:
    return [parse_host_port(item, default_port=53) for item in _split_list(text)]


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation errors into one clear message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
    except SettingsError:
        raise
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def _describe(error: ValidationError) -> str:
    """One line per problem, naming the environment variable."""
    lines = []
    for item in error.errors():
        names = [str(part) for part in item.get("loc", ()) if part != "__root__"]
        where = ", ".join(f"MAILCARRIER_{name.upper()}" for name in names)
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)
