"""The reference network: 8 hubs, 10 clusters, a symmetric latency matrix within the tiers, scaling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from suanwang.topology import load_network, scaled_nodes


def test_eight_hubs_and_ten_clusters() -> None:
    net = load_network()
    assert len(net.hubs) == 8
    assert sum(len(h.clusters) for h in net.hubs.values()) == 10
    assert {h.role for h in net.hubs.values()} == {"east", "west", "central"}


def test_latency_matrix_is_symmetric_and_within_the_tiers() -> None:
    rtt = load_network().rtt_matrix()
    assert np.allclose(rtt, rtt.T)
    assert np.all(np.diag(rtt) <= 1.0)  # city network, 1 ms
    assert rtt.max() <= 20.0  # between hubs, 20 ms


def test_transfer_is_free_inside_a_hub_and_grows_with_distance() -> None:
    net = load_network()
    price = net.transfer_price_matrix()
    assert np.all(np.diag(price) == 0)
    ids = net.hub_ids
    near = price[ids.index("jingjinji"), ids.index("inner_mongolia")]
    far = price[ids.index("jingjinji"), ids.index("gba")]
    assert 0 < near < far


@pytest.mark.parametrize("total", [100, 1000, 100_000])
def test_scaling_keeps_the_count_and_the_proportions(total: int) -> None:
    net = load_network()
    nodes = scaled_nodes(net, total)
    assert len(nodes) == total
    assert len({n.node_id for n in nodes}) == total
    by_hub = Counter(n.hub for n in nodes)
    for hub_id, hub in net.hubs.items():
        assert abs(by_hub[hub_id] - hub.share * total) <= max(1, 0.01 * total)
    for n in nodes:
        assert n.cluster in net.hubs[n.hub].clusters


def test_time_of_use_prices() -> None:
    net = load_network()
    assert net.price_multiplier(3) < net.price_multiplier(13) < net.price_multiplier(19)
