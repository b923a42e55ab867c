"""Address strings of the dumps: IP version, global unicast or not, canonical text (ingest.parse's rule).

Global unicast follows the IANA special-purpose registries. Classified once per distinct string and cached per
process; both the fast and the generic parser ask here.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import socket


def _ranges(cidrs: str) -> tuple[list[int], list[int]]:
    """Sorted (starts, ends) of CIDR blocks, for bisect lookups."""
    nets = sorted(ipaddress.ip_network(c) for c in cidrs.split())
    return [int(n.network_address) for n in nets], [int(n.broadcast_address) for n in nets]


# Not global unicast (IANA special-purpose registries): private, shared, loopback, link-local, documentation,
# benchmarking, 6to4 relay, multicast and reserved. IPv6 global unicast is 2000::/3 minus these.
_V4_SPECIAL = _ranges(
    "0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24 192.0.2.0/24 "
    "192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24 224.0.0.0/3"
)
_V6_SPECIAL = _ranges("::/3 2001::/23 2001:db8::/32 2002::/16 3fff::/20 4000::/2 8000::/1")


def _classify_slow(text: str) -> tuple[int | None, bool, str | None]:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, False, None
    starts, ends = _V4_SPECIAL if ip.version == 4 else _V6_SPECIAL
    n = int(ip)
    i = bisect.bisect_right(starts, n) - 1
    return ip.version, not (i >= 0 and n <= ends[i]), str(ip)


@functools.lru_cache(maxsize=1 << 20)
def classify_address(text: str) -> tuple[int | None, bool, str | None]:
    """(IP version or None, is global unicast, canonical text) for an address string; cached per process."""
    try:  # fast path: an IPv4 address already in canonical dotted-quad form (the common case)
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return _classify_v6(text)
    if socket.inet_ntop(socket.AF_INET, packed) != text:  # leading zeros and the like: ipaddress decides
        return _classify_slow(text)
    n = int.from_bytes(packed, "big")
    i = bisect.bisect_right(_V4_SPECIAL[0], n) - 1
    return 4, not (i >= 0 and n <= _V4_SPECIAL[1][i]), text


def _classify_v6(text: str) -> tuple[int | None, bool, str | None]:
    """IPv6 through the C parser (ipaddress costs ~10 us an address, which adds up on a cold cache). For an
    address outside ::/80, inet_ntop's text is RFC 5952 form, the same as ipaddress's str(); the IPv4-mapped
    and -compatible forms print differently, so those (and anything inet_pton rejects) go to ipaddress."""
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return _classify_slow(text)
    if not any(packed[:10]):
        return _classify_slow(text)
    n = int.from_bytes(packed, "big")
    i = bisect.bisect_right(_V6_SPECIAL[0], n) - 1
    return 6, not (i >= 0 and n <= _V6_SPECIAL[1][i]), socket.inet_ntop(socket.AF_INET6, packed)
