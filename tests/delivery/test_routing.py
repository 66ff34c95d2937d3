"""Routing against a real (test) DNS server: MX order, fallbacks, failures."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

from mailcarrier.delivery.routing import (
    MAX_HOSTS,
    Host,
    PermanentRouteError,
    Router,
    TemporaryRouteError,
)
from mailcarrier.settings import Settings
from tests.peers.dns import DnsServer

PORT = 2525


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def router_for(dns: DnsServer, *, routes: str = "", lifetime: float = 2.0) -> Router:
    settings = Settings(
        resolver=f"127.0.0.1:{dns.port}", routes=routes, delivery_port=PORT
    )
    return Router(settings, lifetime=lifetime)


def queried(dns: DnsServer, rtype: str | None = None) -> list[str]:
    return [q.name for q in dns.queries() if rtype is None or q.rtype == rtype]


# -- MX records -------------------------------------------------------------------


async def test_mx_hosts_come_in_preference_order_with_their_addresses(
    dns_server: DnsServer,
) -> None:
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")
    dns_server.add("mx1.example.test", "AAAA", "2001:db8::1")
    dns_server.add("mx2.example.test", "A", "192.0.2.2")

    route = await router_for(dns_server).resolve("example.test")

    assert route.domain == "example.test"
    assert route.hosts == [
        Host("mx1.example.test", "192.0.2.1", PORT, 10),
        Host("mx1.example.test", "2001:db8::1", PORT, 10),
        Host("mx2.example.test", "192.0.2.2", PORT, 20),
    ]


async def test_equal_preferences_are_tried_in_random_order(
    dns_server: DnsServer,
) -> None:
    for n in (1, 2, 3):
        dns_server.add("example.test", "MX", f"10 mx{n}.example.test.")
        dns_server.add(f"mx{n}.example.test", "A", f"192.0.2.{n}")
    dns_server.add("example.test", "MX", "5 best.example.test.")
    dns_server.add("best.example.test", "A", "192.0.2.9")
    router = router_for(dns_server)

    firsts: Counter[str] = Counter()
    for _ in range(60):
        hosts = (await router.resolve("example.test")).hosts
        assert hosts[0].name == "best.example.test"
        assert sorted(h.name for h in hosts[1:]) == [
            "mx1.example.test",
            "mx2.example.test",
            "mx3.example.test",
        ]
        firsts[hosts[1].name] += 1

    assert len(firsts) == 3


async def test_domain_without_mx_falls_back_to_its_own_addresses(
    dns_server: DnsServer,
) -> None:
    dns_server.add("plain.test", "A", "192.0.2.7")
    dns_server.add("plain.test", "AAAA", "2001:db8::7")

    route = await router_for(dns_server).resolve("plain.test")

    assert route.hosts == [
        Host("plain.test", "192.0.2.7", PORT, 0),
        Host("plain.test", "2001:db8::7", PORT, 0),
    ]


async def test_mx_host_behind_a_cname_is_resolved(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 alias.example.test.")
    dns_server.add("alias.example.test", "CNAME", "real.example.test.")
    dns_server.add("real.example.test", "A", "192.0.2.3")

    route = await router_for(dns_server).resolve("example.test")

    assert [(h.name, h.address) for h in route.hosts] == [
        ("alias.example.test", "192.0.2.3")
    ]


async def test_mx_host_names_are_resolved_by_the_configured_server(
    dns_server: DnsServer,
) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")

    await router_for(dns_server).resolve("example.test")

    assert set(queried(dns_server)) == {"example.test.", "mx1.example.test."}
    assert "mx1.example.test." in queried(dns_server, "A")
    assert "mx1.example.test." in queried(dns_server, "AAAA")


async def test_domain_is_normalised(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")

    route = await router_for(dns_server).resolve("Example.TEST.")

    assert route.domain == "example.test"
    assert route.hosts[0].address == "192.0.2.1"


async def test_hosts_are_capped(dns_server: DnsServer) -> None:
    for n in range(1, 9):
        dns_server.add("big.test", "MX", f"{n} mx{n}.big.test.")
        dns_server.add(f"mx{n}.big.test", "A", f"192.0.2.{n}")

    hosts = (await router_for(dns_server).resolve("big.test")).hosts

    assert [h.preference for h in hosts] == list(range(1, MAX_HOSTS + 1))


async def test_unresolvable_mx_host_is_skipped(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("mx2.example.test", "A", "192.0.2.2")

    hosts = (await router_for(dns_server).resolve("example.test")).hosts

    assert [h.name for h in hosts] == ["mx2.example.test"]


async def test_address_literal_needs_no_dns(dns_server: DnsServer) -> None:
    route = await router_for(dns_server).resolve("[192.0.2.5]")
    route6 = await router_for(dns_server).resolve("[IPv6:2001:db8::5]")

    assert route.hosts == [Host("192.0.2.5", "192.0.2.5", PORT, 0)]
    assert route6.hosts[0].address == "2001:db8::5"
    assert dns_server.queries() == []


# -- permanent failures -----------------------------------------------------------


async def test_null_mx_is_a_permanent_failure(dns_server: DnsServer) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    dns_server.add("nomail.test", "A", "192.0.2.1")

    with pytest.raises(PermanentRouteError) as caught:
        await router_for(dns_server).resolve("nomail.test")

    assert str(caught.value) == "nomail.test does not accept mail (null MX)"
    assert caught.value.enhanced == "5.1.10"


async def test_null_mx_among_real_ones_is_skipped(dns_server: DnsServer) -> None:
    dns_server.add("mixed.test", "MX", "0 .")
    dns_server.add("mixed.test", "MX", "10 mx1.mixed.test.")
    dns_server.add("mx1.mixed.test", "A", "192.0.2.1")

    route = await router_for(dns_server).resolve("mixed.test")

    assert [h.name for h in route.hosts] == ["mx1.mixed.test"]


async def test_nxdomain_is_a_permanent_failure(dns_server: DnsServer) -> None:
    dns_server.add("other.test", "A", "192.0.2.1")

    with pytest.raises(PermanentRouteError, match="NXDOMAIN") as caught:
        await router_for(dns_server).resolve("missing.test")

    assert caught.value.enhanced == "5.1.2"


async def test_domain_with_no_mx_and_no_address_is_permanent(
    dns_server: DnsServer,
) -> None:
    dns_server.add("empty.test", "TXT", "v=spf1 -all")

    with pytest.raises(PermanentRouteError, match="no MX and no address"):
        await router_for(dns_server).resolve("empty.test")


async def test_mx_hosts_without_addresses_are_permanent(
    dns_server: DnsServer,
) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.")

    with pytest.raises(PermanentRouteError, match="none of its MX hosts") as caught:
        await router_for(dns_server).resolve("example.test")

    assert caught.value.enhanced == "5.4.4"


async def test_malformed_domain_is_permanent(dns_server: DnsServer) -> None:
    with pytest.raises(PermanentRouteError, match="not a domain name"):
        await router_for(dns_server).resolve("a" * 70 + ".test")


# -- temporary failures -----------------------------------------------------------


async def test_servfail_is_a_temporary_failure(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.fail("example.test", "SERVFAIL")

    with pytest.raises(TemporaryRouteError) as caught:
        await router_for(dns_server).resolve("example.test")

    assert caught.value.enhanced == "4.4.3"


async def test_timeout_is_a_temporary_failure(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.fail("example.test", "TIMEOUT")

    with pytest.raises(TemporaryRouteError, match="timeout"):
        await router_for(dns_server, lifetime=0.3).resolve("example.test")


async def test_mx_host_servfail_with_no_other_host_is_temporary(
    dns_server: DnsServer,
) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")
    dns_server.fail("mx1.example.test", "SERVFAIL")

    with pytest.raises(TemporaryRouteError, match=r"mx1\.example\.test"):
        await router_for(dns_server).resolve("example.test")


async def test_partial_answer_is_used_but_not_cached(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")
    dns_server.add("mx2.example.test", "A", "192.0.2.2")
    dns_server.fail("mx1.example.test", "SERVFAIL")
    router = router_for(dns_server)

    first = await router.resolve("example.test")
    dns_server.unfail("mx1.example.test")
    second = await router.resolve("example.test")

    assert [h.name for h in first.hosts] == ["mx2.example.test"]
    assert [h.name for h in second.hosts] == ["mx1.example.test", "mx2.example.test"]


# -- static routes ----------------------------------------------------------------


async def test_static_route_wins_over_dns(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    router = router_for(dns_server, routes="example.test=127.0.0.1:2600")

    route = await router.resolve("example.test")

    assert route.hosts == [Host("127.0.0.1", "127.0.0.1", 2600, 0)]
    assert dns_server.queries() == []


async def test_exact_static_route_beats_the_wildcard(dns_server: DnsServer) -> None:
    routes = "*=127.0.0.1:2700,special.test=127.0.0.2:2701"
    router = router_for(dns_server, routes=routes)

    special = await router.resolve("special.test")
    other = await router.resolve("anything.test")

    assert (special.hosts[0].address, special.hosts[0].port) == ("127.0.0.2", 2701)
    assert (other.hosts[0].address, other.hosts[0].port) == ("127.0.0.1", 2700)
    assert other.domain == "anything.test"


async def test_static_route_to_localhost_needs_no_dns(dns_server: DnsServer) -> None:
    router = router_for(dns_server, routes="*=localhost:2800")

    route = await router.resolve("example.test")

    assert route.hosts == [Host("localhost", "127.0.0.1", 2800, 0)]
    assert dns_server.queries() == []


async def test_static_route_host_name_is_resolved_by_the_configured_server(
    dns_server: DnsServer,
) -> None:
    dns_server.add("relay.corp.test", "A", "192.0.2.40")
    router = router_for(dns_server, routes="*=relay.corp.test:587")

    route = await router.resolve("example.test")

    assert route.hosts == [Host("relay.corp.test", "192.0.2.40", 587, 0)]


async def test_unresolvable_static_route_is_temporary_not_a_bounce(
    dns_server: DnsServer,
) -> None:
    dns_server.add("corp.test", "A", "192.0.2.1")
    router = router_for(dns_server, routes="*=typo.corp.test:25")

    with pytest.raises(TemporaryRouteError, match="static route"):
        await router.resolve("example.test")


# -- caching and configuration ----------------------------------------------------


async def test_answers_are_cached(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")
    router = router_for(dns_server)

    await router.resolve("example.test")
    count = len(dns_server.queries())
    for _ in range(5):
        await router.resolve("example.test")

    assert len(dns_server.queries()) == count


async def test_cached_answer_expires_with_its_ttl(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.", ttl=1)
    dns_server.add("mx1.example.test", "A", "192.0.2.1", ttl=1)
    router = router_for(dns_server)

    await router.resolve("example.test")
    dns_server.replace("mx1.example.test", "A", "192.0.2.99", ttl=1)
    await asyncio.sleep(1.2)
    route = await router.resolve("example.test")

    assert route.hosts[0].address == "192.0.2.99"


async def test_concurrent_lookups_of_one_domain_share_the_query(
    dns_server: DnsServer,
) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")
    router = router_for(dns_server)

    routes = await asyncio.gather(*(router.resolve("example.test") for _ in range(20)))

    assert all(r.hosts == routes[0].hosts for r in routes)
    assert queried(dns_server, "MX") == ["example.test."]


async def test_each_nameserver_may_have_its_own_port(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.1")
    with DnsServer() as refusing:
        refusing.fail("example.test", "REFUSED")
        refusing.fail("mx1.example.test", "REFUSED")
        servers = f"127.0.0.1:{refusing.port},127.0.0.1:{dns_server.port}"
        router = Router(Settings(resolver=servers), lifetime=3.0)

        route = await router.resolve("example.test")

        assert refusing.port != dns_server.port
        assert "example.test." in queried(refusing, "MX")
    assert "example.test." in queried(dns_server, "MX")
    assert route.hosts[0].address == "192.0.2.1"
    assert route.hosts[0].port == 25
