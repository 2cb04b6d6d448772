"""What a monitoring centre's scope covers, for the live stream's filter and the API's history queries alike.

A province sees placements landed in it and the hubs, clusters and nodes that lie in it; an industry
sees its clusters, their nodes and the hubs that hold them; national sees everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from suanwang.dispatcher.tiers import NATIONAL, Scope
from suanwang.topology import Network


@dataclass(frozen=True)
class ScopeView:
    """The keys (province, hubs, clusters) a scope covers; node ids start with their cluster's id."""

    scope: Scope
    keys: frozenset[str]
    clusters: frozenset[str]
    hubs: frozenset[str]

    @classmethod
    def of(cls, scope: Scope, network: Network) -> ScopeView:
        where = {c: (h, cl.province) for h, hub in network.hubs.items() for c, cl in hub.clusters.items()}
        if scope.kind == NATIONAL:
            clusters = set(where)
        elif scope.kind == "province":
            clusters = {c for c, (_, province) in where.items() if province == scope.name}
        else:
            clusters = set(network.industries[scope.name].clusters)
        hubs = {where[c][0] for c in clusters}
        keys = hubs | clusters | ({scope.name} if scope.kind == "province" else set())
        return cls(scope, frozenset(keys), frozenset(clusters), frozenset(hubs))

    @property
    def national(self) -> bool:
        return self.scope.kind == NATIONAL

    def accepts(self, kind: str, record: dict[str, Any]) -> bool:
        """Whether a placement, alert or rollup event belongs to this scope."""
        if self.national:
            return True
        if kind == "placement":
            return record["cluster"] in self.clusters
        key = record["scope_key"]
        return key in self.keys or key.split("-", 1)[0] in self.clusters

    def where(self, kind: str) -> tuple[str, dict[str, Any]]:
        """The same test as `accepts`, as a ClickHouse condition and its parameters.

        kind: `cluster` (rows with a cluster column: placements, nodes), `hub` (rows with a hub column),
        `pair` (hub-pair keys such as `gansu>yangtze`: either end) or `key` (alerts' and rollups' scope keys).
        """
        if self.national:
            return "1", {}
        params = {
            "scope_clusters": sorted(self.clusters),
            "scope_keys": sorted(self.keys),
            "scope_hubs": sorted(self.hubs),
        }
        conditions = {
            "cluster": "cluster IN {scope_clusters:Array(String)}",
            "hub": "hub IN {scope_hubs:Array(String)}",
            "pair": "hasAny(splitByChar('>', scope_key), {scope_hubs:Array(String)})",
            "key": "(scope_key IN {scope_keys:Array(String)} "
            "OR splitByChar('-', scope_key)[1] IN {scope_clusters:Array(String)})",
        }
        return conditions[kind], params
