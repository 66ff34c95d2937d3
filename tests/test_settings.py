"""Settings: environment, TOML file, defaults, and clear errors at start."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailcarrier.addresses import domain_to_ascii
from mailcarrier.settings import (
    HostPort,
    SettingsError,
    StaticRoute,
    load_settings,
    parse_host_port,
)


@pytest.fixture
def config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "custom.toml"
    monkeypatch.setenv("MAILCARRIER_CONFIG", str(path))
    return path


def test_defaults_without_environment_or_file() -> None:
    settings = load_settings()

    assert settings.data_dir == Path("./data")
    assert settings.smtp_address == HostPort("127.0.0.1", 2587)
    assert settings.smtps_address == HostPort("127.0.0.1", 2465)
    assert settings.api_address == HostPort("127.0.0.1", 8443)
    assert settings.managed_zone == "mailcarrier.localhost"
    assert settings.delivery_port == 25
    assert (settings.static_routes, settings.trusted, settings.nameservers) == (
        [], [], [])


def test_environment_variables_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAILCARRIER_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("MAILCARRIER_HOSTNAME", "Mail.Example.TEST.")
    monkeypatch.setenv("MAILCARRIER_SMTP_LISTEN", "0.0.0.0:587")
    monkeypatch.setenv("MAILCARRIER_DELIVERY_PORT", "2525")
    monkeypatch.setenv("MAILCARRIER_ROUTES", "example.com=127.0.0.1:2526")
    monkeypatch.setenv("MAILCARRIER_TRUSTED_NETWORKS", "10.0.0.0/8=default")
    monkeypatch.setenv("MAILCARRIER_RESOLVER", "127.0.0.1:5300")

    settings = load_settings()

    assert settings.data_dir == tmp_path / "d"
    assert settings.hostname == "mail.example.test"
    assert settings.smtp_address == HostPort("0.0.0.0", 587)
    assert settings.delivery_port == 2525
    assert settings.static_routes == [
        StaticRoute("example.com", HostPort("127.0.0.1", 2526))]
    assert [(t.network, t.resource) for t in settings.trusted] == [
        (ipaddress.ip_network("10.0.0.0/8"), "default")]
    assert settings.nameservers == [HostPort("127.0.0.1", 5300)]


def test_the_default_database_is_a_sqlite_file_in_the_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAILCARRIER_DATA_DIR", str(tmp_path))

    settings = load_settings()

    assert settings.database_url_resolved == (
        f"sqlite+aiosqlite:///{(tmp_path / 'mailcarrier.db').resolve()}")


def test_the_database_url_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+asyncpg://mc@db.example/mc"
    monkeypatch.setenv("MAILCARRIER_DATABASE_URL", url)

    assert load_settings().database_url_resolved == url


def test_the_toml_file_named_by_mailcarrier_config_is_read(config_file: Path) -> None:
    config_file.write_text(
        'hostname = "from-file.example"\n'
        "delivery_port = 2600\n"
        'routes = "*=relay.example:587"\n'
    )

    settings = load_settings()

    assert settings.hostname == "from-file.example"
    assert settings.delivery_port == 2600
    assert settings.static_routes == [StaticRoute("*", HostPort("relay.example", 587))]


def test_the_environment_wins_over_the_toml_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text('hostname = "from-file.example"\ndelivery_port = 2600\n')
    monkeypatch.setenv("MAILCARRIER_HOSTNAME", "from-env.example")

    settings = load_settings()

    assert settings.hostname == "from-env.example"
    assert settings.delivery_port == 2600


def test_mailcarrier_toml_in_the_working_directory_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MAILCARRIER_CONFIG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mailcarrier.toml").write_text('managed_zone = "Zone.Example."\n')

    assert load_settings().managed_zone == "zone.example"


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ("Bücher.Example=mx.example:25", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example.=mx.example:25", "xn--bcher-kva.example"),
        ("faß.de=mx.example:25", "xn--fa-hia.de"),
    ],
)
def test_route_domains_are_lower_case_a_labels_as_addresses_compare_them(
    routes: str, expected: str
) -> None:
    [route] = load_settings(routes=routes).static_routes

    assert route.domain == expected
    assert route.domain == domain_to_ascii(routes.partition("=")[0])


def test_a_route_without_a_port_goes_to_port_25() -> None:
    [route] = load_settings(routes="example.com=mx.example").static_routes

    assert route.target == HostPort("mx.example", 25)


def test_several_routes_are_read_in_order() -> None:
    routes = load_settings(
        routes="a.example=[::1]:2525, *=relay.example:587"
    ).static_routes

    assert routes == [
        StaticRoute("a.example", HostPort("::1", 2525)),
        StaticRoute("*", HostPort("relay.example", 587)),
    ]


@pytest.mark.parametrize(
    ("routes", "named"),
    [
        ("example.com", "example.com"),
        ("=mx.example:25", "=mx.example:25"),
        ("example.com=mx.example:99999", "mx.example:99999"),
        ("example.com=mx.example:smtp", "mx.example:smtp"),
        ("example.com=[::1:25", "[::1:25"),
        ("exa mple..com=mx.example:25", "exa mple..com"),
    ],
)
def test_a_bad_route_is_a_settings_error_naming_it(routes: str, named: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(routes=routes)

    assert "MAILCARRIER_ROUTES" in str(error.value)
    assert named in str(error.value)


@pytest.mark.parametrize(
    ("networks", "named"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.0.0.0/8=", "10.0.0.0/8="),
        ("300.0.0.0/8=default", "300.0.0.0/8"),
        ("10.0.0.0/33=default", "10.0.0.0/33"),
        ("not-a-network=default", "not-a-network"),
    ],
)
def test_a_bad_trusted_network_is_a_settings_error_naming_it(
    networks: str, named: str
) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(trusted_networks=networks)

    assert "MAILCARRIER_TRUSTED_NETWORKS" in str(error.value)
    assert named in str(error.value)


def test_trusted_networks_with_host_bits_are_widened_to_the_network() -> None:
    [entry] = load_settings(trusted_networks="192.0.2.7/24=app").trusted

    assert (entry.network, entry.resource) == (
        ipaddress.ip_network("192.0.2.0/24"), "app")


def test_an_ipv6_trusted_network_is_read() -> None:
    [entry] = load_settings(trusted_networks="2001:db8::/32=default").trusted

    assert entry.network == ipaddress.ip_network("2001:db8::/32")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("smtp_listen", "127.0.0.1:70000", "127.0.0.1:70000"),
        ("smtps_listen", "127.0.0.1", "127.0.0.1"),
        ("api_listen", "127.0.0.1:https", "127.0.0.1:https"),
        ("dns_listen", "::1:53", "::1:53"),
        ("bounce_listen", "127.0.0.1:-1", "127.0.0.1:-1"),
        ("resolver", "127.0.0.1:99999", "127.0.0.1:99999"),
    ],
)
def test_a_bad_listen_address_is_a_settings_error_naming_it(
    field: str, value: str, named: str
) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(**{field: value})

    assert f"MAILCARRIER_{field.upper()}" in str(error.value)
    assert named in str(error.value)


@pytest.mark.parametrize("value", ["0", "65536", "many"])
def test_a_bad_delivery_port_is_a_settings_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MAILCARRIER_DELIVERY_PORT", value)

    with pytest.raises(SettingsError, match="MAILCARRIER_DELIVERY_PORT"):
        load_settings()


def test_an_empty_smtp_listen_turns_the_listener_off() -> None:
    settings = load_settings(smtp_listen="")

    assert settings.smtp_address is None


def test_an_ipv6_listen_address_keeps_its_brackets_when_shown() -> None:
    address = load_settings(api_listen="[::1]:8443").api_address

    assert address == HostPort("::1", 8443)
    assert str(address) == "[::1]:8443"


def test_a_resolver_without_a_port_uses_53() -> None:
    assert load_settings(resolver="192.0.2.53, [2001:db8::53]").nameservers == [
        HostPort("192.0.2.53", 53), HostPort("2001:db8::53", 53)]


def test_parse_host_port_refuses_unbalanced_brackets() -> None:
    with pytest.raises(SettingsError, match="unbalanced"):
        parse_host_port("[::1:25")


def test_the_node_name_defaults_to_the_hostname() -> None:
    assert load_settings(hostname="mx1.example").node == "mx1.example"
    assert load_settings(hostname="mx1.example", node_name="n7").node == "n7"


def test_a_port_of_zero_in_a_route_is_refused() -> None:
    with pytest.raises(SettingsError, match="MAILCARRIER_ROUTES: bad port"):
        load_settings(routes="*=127.0.0.1:0")


def test_two_listeners_on_one_address_are_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="smtps_listen and smtp_listen"):
        load_settings(smtp_listen="127.0.0.1:2525", smtps_listen="127.0.0.1:2525",
                      bounce_listen="127.0.0.1:2526")


def test_a_hostname_with_spaces_is_refused() -> None:
    with pytest.raises(SettingsError, match="MAILCARRIER_HOSTNAME"):
        load_settings(hostname="bad host name!")


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgresql://mc@db.internal/mail", "postgresql+asyncpg://mc@db.internal/mail"),
        ("postgres://mc@db.internal/mail", "postgresql+asyncpg://mc@db.internal/mail"),
        ("sqlite:////var/lib/mc.db", "sqlite+aiosqlite:////var/lib/mc.db"),
        ("postgresql+asyncpg://mc@db/mail", "postgresql+asyncpg://mc@db/mail"),
    ],
)
def test_database_urls_get_the_async_driver_filled_in(given: str, resolved: str) -> None:
    assert load_settings(database_url=given).database_url_resolved == resolved


def test_an_unsupported_database_is_named_without_its_password() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(database_url="mysql://mc:hunter2@db/mail")
    assert "MAILCARRIER_DATABASE_URL: unsupported database URL scheme 'mysql'" in str(
        error.value
    )
    assert "hunter2" not in str(error.value)
