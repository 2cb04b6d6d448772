"""Dispatch tiers: national, provincial and industry dispatchers that never promise the same capacity twice.

Every node belongs to exactly one tier. A delegated province owns every node registered in it; a
delegated industry owns the nodes of the clusters `network.yaml` gives it; the national tier owns the
rest. Each dispatcher keeps only its own nodes in its table, so two dispatchers can never reserve the
same capacity, whatever the timing. Every dispatcher reads the same `SUANWANG_DISPATCH_TIERS`, and a
tier whose nodes would overlap another's is refused at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from suanwang.errors import SuanwangError
from suanwang.schemas.topics import Topics
from suanwang.topology import Network, load_network

NATIONAL = "national"


@dataclass(frozen=True)
class Scope:
    """`national`, `province:<name>` or `industry:<name>`."""

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == NATIONAL else f"{self.kind}:{self.name}"

    @property
    def topic_suffix(self) -> str:
        """Suffix of this tier's request topic after `tasks.request` (none for the national tier)."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return "" if self.kind == NATIONAL else f".{self.kind}.{slug}"

    def owns(self, reg: dict[str, Any], network: Network) -> bool:
        if self.kind == "province":
            return reg["province"] == self.name
        if self.kind == "industry":
            return reg["cluster"] in network.industries[self.name].clusters
        return False


def parse_scope(text: str, network: Network) -> Scope:
    """A scope from its text; SuanwangError naming the value and what is allowed."""
    kind, _, name = text.strip().partition(":")
    if kind == NATIONAL and not name:
        return Scope(NATIONAL)
    choices = {"province": sorted(network.provinces), "industry": sorted(network.industries)}
    if kind not in choices:
        raise SuanwangError(f"scope {text!r} is not national, province:<name> or industry:<name>")
    if name not in choices[kind]:
        raise SuanwangError(f"scope {text!r}: no {kind} {name!r}; known: {', '.join(choices[kind])}")
    return Scope(kind, name)


class Tiers:
    """The delegated tiers of a deployment, and which of them owns a node."""

    def __init__(self, delegated: str, network: Network) -> None:
        self.network = network
        self.delegated = [parse_scope(t, network) for t in delegated.split(",") if t.strip()]
        self._check_disjoint()

    def _check_disjoint(self) -> None:
        if len(set(self.delegated)) != len(self.delegated):
            raise SuanwangError(f"SUANWANG_DISPATCH_TIERS lists a tier twice: {', '.join(map(str, self.delegated))}")
        provinces = {s.name for s in self.delegated if s.kind == "province"}
        where = {c: cl.province for hub in self.network.hubs.values() for c, cl in hub.clusters.items()}
        for scope in (s for s in self.delegated if s.kind == "industry"):
            for cluster in self.network.industries[scope.name].clusters:
                if where[cluster] in provinces:
                    raise SuanwangError(
                        f"{scope} owns cluster {cluster}, which lies in delegated province:{where[cluster]}: "
                        "a node may belong to one tier only"
                    )

    def owner(self, reg: dict[str, Any]) -> Scope:
        """The tier whose dispatcher alone may promise this node's capacity."""
        return next((s for s in self.delegated if s.owns(reg, self.network)), Scope(NATIONAL))

    def check_runs(self, scope: Scope) -> None:
        """A tier may run only when every dispatcher knows it is delegated (else the national one uses its nodes)."""
        if scope.kind != NATIONAL and scope not in self.delegated:
            raise SuanwangError(
                f"{scope} is not in SUANWANG_DISPATCH_TIERS; list it there for every dispatcher, so the national "
                "one leaves its nodes alone"
            )


def tier_request_topics(settings: Any) -> list[str]:
    """Full names of the delegated tiers' request topics (the national one is a contract topic)."""
    topics = Topics(settings.topic_prefix)
    return [topics.requests(s.topic_suffix) for s in Tiers(settings.dispatch_tiers, load_network()).delegated]


def dispatcher_group(scope: Scope) -> str:
    """The consumer group of a tier's dispatcher (one active member: it owns the tier's capacity)."""
    return f"suanwang-dispatcher{scope.topic_suffix.replace('.', '-') or '-national'}"
