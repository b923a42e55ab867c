"""The synthetic internet: the embedded default data source, writing RIPE Atlas daily-dump files.

A `SyntheticInternet` is a static world (`synth_geo.World`: probes in real cities, ASes with address
plans, fixed measurement series) plus a stateless RTT model. Every random quantity that must be
recomputed for the ground truth (path inflation, route changes, outages) is a hash of the seed and
its keys, so `true_median_rtt` and `sample_live` answer for any pair and time without stored state;
per-packet noise in the dump files comes from a generator seeded by (seed, day, hour), so one hour can
be rewritten on its own and is byte-identical.

RTT (ms) of one packet from source s to destination d at time t:
    dist_km / 100 * inflation(AS pair, family, route epoch)       # fibre: ~100 km of distance per ms of RTT
  + access(s) + access(d)                                         # by AS kind: dc ~0.4, home ~3, mobile ~30
  + diurnal(s) * evening_bump(local hour of s)                    # congestion peaks ~20:30 local time
  + jitter_scale * exp(0.7 N(0, 1))                               # heavy-ish tail; its median is 1
and it fails when either end is in an outage or with a per-packet loss probability.
"""

from __future__ import annotations

import bz2
import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pingllm_core.ingest.synth_geo import (
    ROLE_ANCHOR,
    ROLE_POPULAR,
    World,
    build_world,
    great_circle_km,
    hash_u01,
    kind_name,
)

# RIPE compresses at level 9. Measured on one synthetic hour (4.4 MB of JSON): level 9 takes 0.51 s to
# compress and 0.24 s to decompress, level 1 0.34 s and 0.08 s, for files 1.6x larger. The files are
# regenerable from the seed, so speed (here and in the parser, which reads them every run) beats size.
BZ2_LEVEL = 1
FIBRE_KM_PER_MS = 100.0  # great-circle km per ms of RTT at light speed in fibre (2/3 c, there and back)
_JITTER_SIGMA = 0.7  # log-normal shape of per-packet jitter; median exp(0) = 1 keeps the true median exact
_OUTAGE_BLOCK_S = 3600  # outage draws are made per node per hour-long block (per-node phase)
# Salts that keep the hashed streams independent of each other.
_S_INFL, _S_V6, _S_RLEN, _S_RPH, _S_RALT, _S_RMUL, _S_OPH, _S_OHIT, _S_OST, _S_ODUR = range(101, 111)
_ERROR_TEXT = "sendto failed: Network is unreachable"


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Size and behaviour of the synthetic internet; the same config writes byte-identical files."""

    seed: int = 0  # everything (world, truth, packets) derives from it
    n_probes: int = 120  # ordinary probes (home, mobile, university, hosting networks)
    n_anchors: int = 12  # anchors: datacenter, always dual-stack, stable, pinged by many probes
    n_popular: int = 4  # popular targets (root-server-like built-in targets): destinations only
    n_ases: int = 32  # autonomous systems (at least 4: one of each kind)
    dual_stack_share: float = 0.4  # share of ordinary probes that also have IPv6
    start_day: str = "2024-03-04"  # first day of the window, YYYY-MM-DD (UTC)
    days: int = 7  # length of the window in days
    interval_s: int = 240  # seconds between results of one series (built-in ping interval)
    targets_per_probe: int = 4  # targets per source: popular ones, anchors, then other probes
    loss_rate: float = 0.01  # base per-packet loss probability (scaled by kind, time of day, IPv6)
    outage_rate: float = 0.01  # probability that a node has an outage (6-30 min) in a given hour block
    nat_share: float = 0.7  # share of home and mobile probes behind NAT (private src_addr)
    route_change_rate: float = 0.15  # share of route epochs (2-24 h each, per pair) on an inflated detour
    error_rate: float = 0.002  # share of IPv6 results that are a send error instead of packets
    # Share of series to anchors and probes that begin somewhere inside the window instead of at its start:
    # pairs that appear late (after the train cutoff, they are the future split's unseen pairs).
    late_series_share: float = 0.25
    min_city_population: int = 300_000  # probes live in real cities at least this big (geonames)

    def __post_init__(self) -> None:
        dt.date.fromisoformat(self.start_day)  # raises ValueError on a bad date
        checks = {
            "seed >= 0": self.seed >= 0,
            "n_probes >= 2": self.n_probes >= 2,
            "n_anchors >= 1": self.n_anchors >= 1,
            "n_popular >= 0": self.n_popular >= 0,
            "n_ases >= 4": self.n_ases >= 4,
            "0 <= dual_stack_share <= 1": 0.0 <= self.dual_stack_share <= 1.0,
            "days >= 1": self.days >= 1,
            "1 <= interval_s <= 86400": 1 <= self.interval_s <= 86400,
            "1 <= targets_per_probe < nodes": 1 <= self.targets_per_probe < self.n_probes + self.n_anchors,
            "0 <= loss_rate < 0.5": 0.0 <= self.loss_rate < 0.5,
            "0 <= outage_rate <= 1": 0.0 <= self.outage_rate <= 1.0,
            "0 <= nat_share <= 1": 0.0 <= self.nat_share <= 1.0,
            "0 <= route_change_rate <= 1": 0.0 <= self.route_change_rate <= 1.0,
            "0 <= error_rate < 1": 0.0 <= self.error_rate < 1.0,
            "0 <= late_series_share <= 1": 0.0 <= self.late_series_share <= 1.0,
            "min_city_population >= 15000": self.min_city_population >= 15000,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SynthConfig: {', '.join(bad)}")


def _unix(day: dt.date, hour: int = 0) -> int:
    """Unix seconds of `day` at `hour`:00 UTC."""
    return int(dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC).timestamp())


class SyntheticInternet:
    """A seeded synthetic internet: writes RIPE-format ping dumps and answers ground-truth queries."""

    def __init__(self, cfg: SynthConfig, world: World) -> None:
        self.cfg = cfg
        self.world = world
        self._ip_index: dict[str, tuple[int, int]] = {}
        for i, (a4, a6) in enumerate(zip(world.ip4.tolist(), world.ip6.tolist(), strict=True)):
            self._ip_index[a4] = (i, 4)
            if a6:
                self._ip_index[a6] = (i, 6)

    @classmethod
    def build(cls, cfg: SynthConfig) -> SyntheticInternet:
        """Draw the world from the config's seed."""
        return cls(cfg, build_world(cfg))

    # ----- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ground truth (config and every world array) to an npz file, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            cfg_json = np.array(json.dumps(dataclasses.asdict(self.cfg), sort_keys=True))
            np.savez_compressed(f, cfg_json=cfg_json, **self.world.to_arrays())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SyntheticInternet:
        """Restore a saved synthetic internet (no geonames or tzdata needed)."""
        with np.load(path, allow_pickle=False) as z:
            cfg = SynthConfig(**json.loads(str(z["cfg_json"])))
            return cls(cfg, World.from_arrays(z))

    # ----- the RTT model (vectorised over arrays of source node, destination node, family, time) --------
    def _inflation(self, src: np.ndarray, dst: np.ndarray, af: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Path inflation over the great circle: per AS pair and family, with per-pair route epochs."""
        seed, w = self.cfg.seed, self.world
        a, b = w.as_idx[src], w.as_idx[dst]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        base = 1.3 + 1.7 * hash_u01(seed, _S_INFL, lo, hi) ** 1.5  # 1.3x..3x, most paths mildly inflated
        v6 = np.maximum(1.3, base * (0.9 + 0.35 * hash_u01(seed, _S_V6, lo, hi)))  # IPv6 own path
        infl = np.where(af == 6, v6, base)
        # Route changes: per (src, dst, family), epochs of 2-24 h with a random phase; some epochs take a
        # detour 1.1x-1.7x longer, so the route state is piecewise constant and changes at random times.
        length = np.floor(3600 * (2 + 22 * hash_u01(seed, _S_RLEN, src, dst, af)))
        epoch = np.floor((t + hash_u01(seed, _S_RPH, src, dst, af) * length) / length).astype(np.int64)
        detour = hash_u01(seed, _S_RALT, src, dst, af, epoch) < self.cfg.route_change_rate
        return np.where(detour, infl * (1.1 + 0.6 * hash_u01(seed, _S_RMUL, src, dst, af, epoch)), infl)

    def _in_outage(self, nodes: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Whether each node is down at time t (every packet to or from it fails)."""
        seed, g = self.cfg.seed, _OUTAGE_BLOCK_S
        pos = t + np.floor(hash_u01(seed, _S_OPH, nodes) * g).astype(np.int64)
        block = pos // g
        off = pos - block * g
        hit = hash_u01(seed, _S_OHIT, nodes, block) < self.cfg.outage_rate
        start = hash_u01(seed, _S_OST, nodes, block) * g * 0.5
        dur = g * (0.1 + 0.4 * hash_u01(seed, _S_ODUR, nodes, block))
        return hit & (off >= start) & (off < start + dur)

    def _evening(self, nodes: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Congestion level in [0, 1] by the node's local hour: 1 at 20:30, ~0 from 04:00 to 13:00."""
        local_h = (t / 3600.0 + self.world.tz_h[nodes]) % 24.0
        return ((1.0 + np.cos(2 * np.pi * (local_h - 20.5) / 24.0)) / 2.0) ** 3

    def _parts(self, src, dst, af, t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(noise-free RTT floor ms, jitter scale ms, per-packet loss probability) per query."""
        w = self.world
        dist = great_circle_km(w.lat[src], w.lon[src], w.lat[dst], w.lon[dst])
        prop = dist / FIBRE_KM_PER_MS * self._inflation(src, dst, af, t)
        eve = self._evening(src, t)
        diurnal = w.diurnal_ms[src] * eve
        floor = prop + w.access_ms[src] + w.access_ms[dst] + diurnal
        scale = w.jitter_ms[src] + w.jitter_ms[dst] + 0.01 * prop + 0.3 * diurnal
        p_loss = self.cfg.loss_rate * w.loss_factor[src] * w.loss_factor[dst] * (1 + 2 * eve)
        return floor, scale, np.clip(np.where(af == 6, 1.3, 1.0) * p_loss, 0.0, 0.5)

    def _packets(self, src, dst, af, t, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Packet RTTs (ms, rounded to µs; -1.0 failed) for queries x packets from normals z and uniforms u."""
        floor, scale, p_loss = self._parts(src, dst, af, t)
        rtt = floor[:, None] + scale[:, None] * np.exp(_JITTER_SIGMA * z)
        down = self._in_outage(src, t) | self._in_outage(dst, t)
        failed = (u < p_loss[:, None]) | down[:, None]
        return np.where(failed, -1.0, np.round(rtt, 3))

    def _resolve(self, ips: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Addresses -> (node index, family); node -1 for unknown addresses."""
        node, af = np.full(len(ips), -1, np.int64), np.zeros(len(ips), np.int8)
        for i, ip in enumerate(ips):
            hit = self._ip_index.get(ip)
            if hit is None:
                try:
                    hit = self._ip_index.get(str(ipaddress.ip_address(ip)))
                except ValueError:
                    hit = None
            if hit is not None:
                node[i], af[i] = hit
        return node, af

    # ----- ground-truth queries ------------------------------------------------------------------------
    def _query(self, src_ips, dst_ips, times) -> tuple[np.ndarray, ...]:
        """Resolve a batch of (src, dst, time) queries; `ok` marks known same-family pairs."""
        if len(src_ips) != len(dst_ips):
            raise ValueError("src_ips and dst_ips differ in length")
        s, af_s = self._resolve(src_ips)
        d, af_d = self._resolve(dst_ips)
        t = np.broadcast_to(np.asarray(times, dtype=np.int64), (len(s),))
        ok = (s >= 0) & (d >= 0) & (af_s == af_d)
        return ok, s[ok], d[ok], af_s[ok], t[ok]

    def true_median_rtt(self, src_ips: Sequence[str], dst_ips: Sequence[str], times: Any) -> np.ndarray:
        """Median RTT (ms) of a successful packet at each time, route and diurnal state included; NaN unknown."""
        ok, s, d, af, t = self._query(src_ips, dst_ips, times)
        out = np.full(len(ok), np.nan)
        floor, scale, _ = self._parts(s, d, af, t)
        out[ok] = floor + scale  # the jitter factor exp(sigma Z) has median exactly 1
        return out

    def true_failure_prob(self, src_ips: Sequence[str], dst_ips: Sequence[str], times: Any) -> np.ndarray:
        """Probability that one packet fails (1 in an outage, else the loss rate); NaN for unknown pairs."""
        ok, s, d, af, t = self._query(src_ips, dst_ips, times)
        out = np.full(len(ok), np.nan)
        _, _, p_loss = self._parts(s, d, af, t)
        out[ok] = np.where(self._in_outage(s, t) | self._in_outage(d, t), 1.0, p_loss)
        return out

    def sample_live(self, src_ip: str, dst_ip: str, t: int, n: int, seed: int) -> np.ndarray:
        """Fresh packets (ms; -1.0 failed) between any two known same-family addresses at unix time t."""
        (s,), (af_s,) = self._resolve([src_ip])
        (d,), (af_d,) = self._resolve([dst_ip])
        if s < 0 or d < 0:
            raise KeyError(f"unknown address: {src_ip if s < 0 else dst_ip}")
        if af_s != af_d:
            raise ValueError(f"address families differ: {src_ip} vs {dst_ip}")
        rng = np.random.default_rng([self.cfg.seed, 0x11FE, seed, int(s), int(d), int(af_s), int(t)])
        z, u = rng.standard_normal((1, n)), rng.random((1, n))
        one = np.array([0])
        return self._packets(s + one, d + one, af_s + one, int(t) + one, z, u)[0]

    def node_table(self) -> dict[str, np.ndarray]:
        """One row per address (IPv4 and IPv6 rows for dual-stack nodes) with location, AS and role."""
        w = self.world
        node = np.concatenate([np.arange(len(w.ip4)), np.flatnonzero(w.ip6 != "")])
        is_v6 = np.arange(len(node)) >= len(w.ip4)
        return {
            "ip": np.where(is_v6, w.ip6[node], w.ip4[node]),
            "node": node,
            "is_v6": is_v6,
            "prb_id": w.prb_id[node],
            "city": w.city[node],
            "country": w.country[node],
            "lat": w.lat[node],
            "lon": w.lon[node],
            "asn": w.as_asn[w.as_idx[node]],
            "kind": kind_name(w.as_kind[w.as_idx[node]]),
            "is_anchor": w.role[node] == ROLE_ANCHOR,
            "is_popular": w.role[node] == ROLE_POPULAR,
        }

    # ----- dump files ----------------------------------------------------------------------------------
    def days(self) -> list[dt.date]:
        """The configured window of days."""
        start = dt.date.fromisoformat(self.cfg.start_day)
        return [start + dt.timedelta(days=i) for i in range(self.cfg.days)]

    @functools.cached_property
    def _series_fields(self) -> list[dict[str, Any]]:
        """Result fields fixed per series, built once; key order follows the real dumps loosely."""
        w, step = self.world, self.cfg.interval_s
        fam = w.s_af == 4
        return [
            {"fw": f, "af": a, "dst_addr": da, "dst_name": dn, "src_addr": sa, "from": fr, "msm_id": m,
             "prb_id": p, "proto": "ICMP", "type": "ping", "step": step, "size": sz}
            for f, a, da, dn, sa, fr, m, p, sz in zip(
                w.fw[w.s_src].tolist(), w.s_af.tolist(), np.where(fam, w.ip4[w.s_dst], w.ip6[w.s_dst]).tolist(),
                w.s_dst_name.tolist(), np.where(fam, w.src4[w.s_src], w.ip6[w.s_src]).tolist(),
                np.where(fam, w.ip4[w.s_src], w.ip6[w.s_src]).tolist(), w.s_msm.tolist(),
                w.prb_id[w.s_src].tolist(), w.s_size.tolist(), strict=True)
        ]  # fmt: skip

    def hour_results(self, day: dt.date, hour: int) -> list[bytes]:
        """All results of one UTC hour as JSON lines (RIPE ping result objects), sorted by timestamp."""
        w, cfg, step = self.world, self.cfg, self.cfg.interval_s
        start = _unix(day, hour)
        # Per series, the results k with phase + k * step in [start, start + 3600).
        k0 = -((w.s_phase - start) // step)
        count = -((w.s_phase - start - 3600) // step) - k0
        ser = np.repeat(np.arange(len(w.s_src)), count)
        first = np.cumsum(count) - count
        t = w.s_phase[ser] + (k0[ser] + np.arange(len(ser)) - first[ser]) * step
        live = t >= w.s_start[ser]  # series that have not begun yet send nothing
        ser, t = ser[live], t[live]
        order = np.lexsort((ser, t))
        ser, t = ser[order], t[order]
        src, dst, af = w.s_src[ser], w.s_dst[ser], w.s_af[ser]
        rng = np.random.default_rng([cfg.seed, 0xF11E, day.toordinal(), hour])
        n = len(ser)
        rtt = self._packets(src, dst, af, t, rng.standard_normal((n, 3)), rng.random((n, 3)))
        error = (rng.random(n) < cfg.error_rate) & (af == 6)
        lts = rng.integers(0, 400, n)  # seconds since the probe's last time sync
        ok = rtt >= 0
        rcvd = ok.sum(axis=1)
        # Summary fields over the received packets only, -1 when none came back (as RIPE writes them).
        mn = np.where(rcvd > 0, np.where(ok, rtt, np.inf).min(axis=1), -1.0)
        mx = np.where(rcvd > 0, rtt.max(axis=1), -1.0)
        avg = np.where(rcvd > 0, np.round(np.where(ok, rtt, 0.0).sum(axis=1) / np.maximum(rcvd, 1), 3), -1.0)
        bases = self._series_fields
        ttl, star = w.s_ttl.tolist(), {"x": "*"}
        lines = []
        cols = zip(ser.tolist(), t.tolist(), rtt.tolist(), rcvd.tolist(), mn.tolist(), mx.tolist(),
                   avg.tolist(), error.tolist(), lts.tolist(), strict=True)  # fmt: skip
        for i, ti, r, nr, lo, hi, av, err, lt in cols:
            if err:  # a send error: no packets, no usable src_addr (as in real IPv6 results)
                res = {**bases[i], "src_addr": "", "size": 0, "lts": lt, "timestamp": ti,
                       "result": [{"error": _ERROR_TEXT}], "dup": 0, "rcvd": 0, "sent": 0,
                       "min": -1, "max": -1, "avg": -1}  # fmt: skip
            else:
                res = {**bases[i], "lts": lt, "timestamp": ti, "result": [{"rtt": x} if x >= 0 else star for x in r],
                       "dup": 0, "rcvd": nr, "sent": 3, "min": lo, "max": hi, "avg": av}  # fmt: skip
                if nr:  # the reply TTL is only known when a reply came back
                    res["ttl"] = ttl[i]
            lines.append(orjson.dumps(res))
        return lines

    def write_hour(self, raw_dir: str | os.PathLike[str], day: dt.date, hour: int) -> Path:
        """Write raw_dir/<day>/ping-<day>T<HH>00.bz2 (temp name, then atomic rename)."""
        if not 0 <= hour < 24:
            raise ValueError(f"hour {hour} not in 0..23")
        out = Path(raw_dir) / day.isoformat() / f"ping-{day.isoformat()}T{hour:02d}00.bz2"
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = self.hour_results(day, hour)
        data = bz2.compress(b"\n".join(lines) + b"\n" if lines else b"", compresslevel=BZ2_LEVEL)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, out)
        return out

    def write_day(
        self,
        raw_dir: str | os.PathLike[str],
        day: dt.date,
        progress: Callable[[str], None] | None = None,
        workers: int = 2,
    ) -> list[Path]:
        """Write the 24 hourly dump files of one day (hours in parallel threads; bz2 releases the GIL)."""
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            paths = list(pool.map(lambda h: self.write_hour(raw_dir, day, h), range(24)))
        if progress is not None:
            progress(
                f"synth {day.isoformat()}: 24 hourly files written under {Path(raw_dir) / day.isoformat()}"
            )
        return paths
