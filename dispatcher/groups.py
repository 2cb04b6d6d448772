"""Nodes grouped by equal figures, so the compiled pass scores a group once instead of each of its nodes.

Nodes of one model and hub with the same free capacity cost the same and lose the same to fragmentation:
at 10,000 nodes of the network model there are 56 groups before any work and about 660 after 2,000
placements. Each group keeps its rows in ascending order (a linked list in `NodeTable.links`): the pass
offers the lowest as the group's pick and the next as runner-up, so ties still go to the lowest row.

Groups are found through an open-addressing table keyed by a hash of the figures and checked exactly
against the group's lowest row. A group that empties stays in the table, unused, until the rows run out;
then `rebuild` starts afresh from the node table.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from suanwang.dispatcher.stages import Group, Link, Tally, mix

GROUP_FIELDS, LINK_FIELDS, TALLY_FIELDS = len(Group), len(Link), len(Tally)


@njit(cache=True)
def figures_key(i, ints, floats):
    """A hash of node i's figures (floats to a millionth: a hit is checked exactly, so it may be coarse)."""
    h = np.uint64(14695981039346656037)
    for c in range(ints.shape[1]):
        h = mix(h, ints[i, c])
    for c in range(floats.shape[1]):
        h = mix(h, np.int64(floats[i, c] * 1e6))
    return h


@njit(cache=True)
def same_figures(i, ints, floats, j, other_ints, other_floats):
    """Whether row i of `ints` and `floats` equals row j of the others (a node's, or a group's copy)."""
    for c in range(ints.shape[1]):
        if ints[i, c] != other_ints[j, c]:
            return False
    for c in range(floats.shape[1]):
        if floats[i, c] != other_floats[j, c]:
            return False
    return True


@njit(cache=True)
def leave(i, links, groups, tally, live_ints, live_floats):
    """Takes node i out of its group; a group left empty leaves the list of groups with nodes (the last of
    the list, and its figures, take its place)."""
    g = links[i, Link.GROUP]
    if g < 0:
        return
    before, after = links[i, Link.PREV], links[i, Link.NEXT]
    if before >= 0:
        links[before, Link.NEXT] = after
    else:
        groups[g, Group.HEAD] = after
    if after >= 0:
        links[after, Link.PREV] = before
    else:
        groups[g, Group.TAIL] = before
    groups[g, Group.SIZE] -= 1
    links[i, Link.GROUP] = links[i, Link.NEXT] = links[i, Link.PREV] = -1
    if groups[g, Group.SIZE] == 0:
        pos, last = groups[g, Group.POS], tally[Tally.LIVE] - 1
        moved = groups[last, Group.LIVE]
        groups[pos, Group.LIVE] = moved
        groups[moved, Group.POS] = pos
        live_ints[pos] = live_ints[last]
        live_floats[pos] = live_floats[last]
        groups[g, Group.POS] = -1
        tally[Tally.LIVE] = last


@njit(cache=True)
def join(i, ints, floats, links, groups, slots, tally, live_ints, live_floats):
    """Puts node i, in no group, into the group of its figures (a new one if none has nodes); False when
    every group row is used: the caller rebuilds. A group that gains its first node joins the list of groups
    with nodes, its figures copied beside it, so the pass reads them in order."""
    h = figures_key(i, ints, floats)
    mask = slots.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    g = slots[slot]
    while g >= 0:
        same_key = groups[g, Group.KEY] == np.int64(h) and groups[g, Group.SIZE] > 0
        if same_key and same_figures(i, ints, floats, groups[g, Group.HEAD], ints, floats):
            break
        slot = (slot + 1) & mask
        g = slots[slot]
    if g < 0:
        if tally[Tally.ALLOCATED] == groups.shape[0]:
            return False
        g = tally[Tally.ALLOCATED]
        tally[Tally.ALLOCATED] += 1
        slots[slot] = g
        groups[g, Group.HEAD] = groups[g, Group.TAIL] = -1
        groups[g, Group.SIZE] = 0
        groups[g, Group.KEY] = np.int64(h)
    if groups[g, Group.SIZE] == 0:
        pos = tally[Tally.LIVE]
        groups[pos, Group.LIVE] = g
        groups[g, Group.POS] = pos
        live_ints[pos] = ints[i]
        live_floats[pos] = floats[i]
        tally[Tally.LIVE] = pos + 1
    _insert(i, g, links, groups)
    return True


@njit(cache=True)
def _insert(i, g, links, groups):
    """Links row i into group g in ascending order (from the end when it is the highest, as in a rebuild)."""
    links[i, Link.GROUP] = g
    groups[g, Group.SIZE] += 1
    head, tail = groups[g, Group.HEAD], groups[g, Group.TAIL]
    if head < 0:
        links[i, Link.PREV] = links[i, Link.NEXT] = -1
        groups[g, Group.HEAD] = groups[g, Group.TAIL] = i
        return
    if i > tail:
        links[tail, Link.NEXT], links[i, Link.PREV], links[i, Link.NEXT] = i, tail, -1
        groups[g, Group.TAIL] = i
        return
    after = head
    while after < i:
        after = links[after, Link.NEXT]
    before = links[after, Link.PREV]
    links[i, Link.PREV], links[i, Link.NEXT], links[after, Link.PREV] = before, after, i
    if before >= 0:
        links[before, Link.NEXT] = i
    else:
        groups[g, Group.HEAD] = i


@njit(cache=True)
def regroup(i, ints, floats, links, groups, slots, tally, live_ints, live_floats):
    """Moves node i to the group of its figures after they changed; False when the caller must rebuild."""
    g = links[i, Link.GROUP]
    if g >= 0 and same_figures(i, ints, floats, groups[g, Group.POS], live_ints, live_floats):
        return True  # still equal to its group's figures
    leave(i, links, groups, tally, live_ints, live_floats)
    return join(i, ints, floats, links, groups, slots, tally, live_ints, live_floats)


@njit(cache=True)
def rebuild(n, ints, floats, links, groups, slots, tally, live_ints, live_floats):
    """Groups the first `n` nodes afresh; False if the group rows are too few even so."""
    slots[:] = -1
    tally[:] = 0
    for i in range(n):
        links[i, Link.GROUP] = links[i, Link.NEXT] = links[i, Link.PREV] = -1
    for i in range(n):
        if not join(i, ints, floats, links, groups, slots, tally, live_ints, live_floats):
            return False
    return True
