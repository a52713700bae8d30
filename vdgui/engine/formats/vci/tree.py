"""The VCI extent B+-tree: which disk blocks are cached where.

Nodes are 4096 bytes: byte 0 is the type (1 internal, 2 leaf), then packed entries.

* Leaf entry, 38 bytes, 107 per node: previous and next extent of the LRU list,
  flags, reserved, first disk block, block count, data block address.
* Internal entry, 20 bytes, 204 per node: first disk block covered, block count
  covered, child node address.

An entry with count 0 or address 0 is unused; used entries are sorted by disk block
and never overlap.  The whole tree is kept in memory as :class:`Leaf` and
:class:`Internal` objects that mirror the nodes in the file (each remembers the
bytes last written, so a flush writes only the nodes that changed).  Internal nodes
route by the exact first block of each child, so a lookup descends one path.

Loading checks everything that could make a walk misbehave or a lookup lie: depth
and node count are bounded, every node is visited once, entries are sorted and
non-overlapping and lie within the range their parent gives, all leaves sit at one
depth.  Anything else is :class:`~vdgui.engine.errors.Corrupted`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator

import numpy as np

from ...errors import Corrupted, InvalidState
from .header import BLOCK, HEADER_BLOCKS, NODE_BLOCKS

NODE_BYTES = NODE_BLOCKS * BLOCK
NODE_INTERNAL, NODE_LEAF = 1, 2

LEAF_ENTRY = np.dtype([("prev", "<u8"), ("next", "<u8"), ("flags", "u1"),
                       ("reserved", "u1"), ("first", "<u8"), ("count", "<u4"),
                       ("data", "<u8")])
INTERNAL_ENTRY = np.dtype([("first", "<u8"), ("count", "<u4"), ("child", "<u8")])
assert LEAF_ENTRY.itemsize == 38 and INTERNAL_ENTRY.itemsize == 20

LEAF_CAPACITY = (NODE_BYTES - 1) // LEAF_ENTRY.itemsize  # 107
INTERNAL_CAPACITY = (NODE_BYTES - 1) // INTERNAL_ENTRY.itemsize  # 204

#: Deepest tree accepted on open: 204**11 leaves is far beyond any cache.
MAX_DEPTH = 12
#: An internal entry's block count is 32 bits: wider spans are stored as this,
#: meaning "up to the next entry".
SPAN_UNBOUNDED = 0xFFFFFFFF

Extent = tuple[int, int, int]  # (first disk block, block count, data block address)


class Leaf:
    """A leaf node: parallel lists of extents, sorted by first disk block."""

    __slots__ = ("addr", "count", "data", "first", "written")

    def __init__(self, addr: int, first: list[int] | None = None,
                 count: list[int] | None = None, data: list[int] | None = None) -> None:
        self.addr = addr
        self.first = first or []
        self.count = count or []
        self.data = data or []
        self.written: bytes | None = None  # the node's bytes in the file

    def __len__(self) -> int:
        return len(self.first)

    @property
    def min_first(self) -> int:
        return self.first[0]

    @property
    def max_end(self) -> int:
        return self.first[-1] + self.count[-1]


class Internal:
    """An internal node: children sorted by their first disk block (``keys``)."""

    __slots__ = ("addr", "children", "keys", "written")

    def __init__(self, addr: int, keys: list[int], children: list[Node]) -> None:
        self.addr = addr
        self.keys = keys
        self.children = children
        self.written: bytes | None = None

    def __len__(self) -> int:
        return len(self.children)

    @property
    def min_first(self) -> int:
        return self.keys[0]

    @property
    def max_end(self) -> int:
        return self.children[-1].max_end


Node = Leaf | Internal


def _capacity(node: Node) -> int:
    return LEAF_CAPACITY if isinstance(node, Leaf) else INTERNAL_CAPACITY


def _child_index(node: Internal, block: int) -> int:
    """The child whose range holds ``block`` (or would receive an extent there)."""
    return max(bisect_right(node.keys, block) - 1, 0)


class ExtentTree:
    """The extents, with B+-tree insertion (splitting full nodes) and removal
    (dropping empty nodes; under-full ones are left as they are).

    ``allocate()`` returns the block address for a new node; ``release(addr)``
    frees one.  The owner makes sure ``allocate`` can serve :meth:`splits_needed`
    nodes before calling :meth:`insert`.
    """

    def __init__(self, root: Node, allocate: Callable[[], int],
                 release: Callable[[int], None]) -> None:
        self.root = root
        self.allocate = allocate
        self.release = release

    # -- queries --------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return isinstance(self.root, Leaf) and not self.root.first

    def _leaf(self, block: int) -> Leaf:
        node = self.root
        while isinstance(node, Internal):
            node = node.children[_child_index(node, block)]
        return node

    def find(self, block: int) -> Extent | None:
        """The extent holding disk block ``block``, if any."""
        leaf = self._leaf(block)
        i = bisect_right(leaf.first, block) - 1
        if i >= 0 and block < leaf.first[i] + leaf.count[i]:
            return leaf.first[i], leaf.count[i], leaf.data[i]
        return None

    def overlapping(self, start: int, end: int) -> Iterator[Extent]:
        """Extents that hold any block of ``[start, end)``, in disk order."""
        if not self.empty:
            yield from self._overlapping(self.root, start, end)

    def _overlapping(self, node: Node, start: int, end: int) -> Iterator[Extent]:
        if isinstance(node, Leaf):
            for i in range(max(bisect_right(node.first, start) - 1, 0), len(node.first)):
                first = node.first[i]
                if first >= end:
                    return
                if first + node.count[i] > start:
                    yield first, node.count[i], node.data[i]
            return
        for i in range(_child_index(node, start), len(node.children)):
            if node.keys[i] >= end:
                return
            yield from self._overlapping(node.children[i], start, end)

    def extents(self) -> Iterator[Extent]:
        """Every extent, in disk order."""
        for leaf in self.leaves():
            yield from zip(leaf.first, leaf.count, leaf.data)

    def nodes(self) -> Iterator[Node]:
        stack: list[Node] = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, Internal):
                stack.extend(reversed(node.children))

    def leaves(self) -> Iterator[Leaf]:
        return (node for node in self.nodes() if isinstance(node, Leaf))

    def splits_needed(self, first: int) -> int:
        """New nodes an insertion at ``first`` would allocate (full nodes on its
        path from the leaf up, plus a new root when the root is full too)."""
        path: list[Node] = [self.root]
        while isinstance(path[-1], Internal):
            node = path[-1]
            path.append(node.children[_child_index(node, first)])
        needed = 0
        for node in reversed(path):
            if len(node) < _capacity(node):
                return needed
            needed += 1
        return needed + 1

    # -- changes ----------------------------------------------------------------------

    def insert(self, first: int, count: int, data: int) -> None:
        """Add an extent (its blocks must not be cached yet)."""
        extra = self._insert(self.root, first, count, data)
        if extra is not None:
            old = self.root
            self.root = Internal(self.allocate(), [old.min_first, extra.min_first],
                                 [old, extra])

    def _insert(self, node: Node, first: int, count: int, data: int) -> Node | None:
        """Insert below ``node``; returns a new right sibling when ``node`` split."""
        if isinstance(node, Leaf):
            i = bisect_right(node.first, first)
            node.first.insert(i, first)
            node.count.insert(i, count)
            node.data.insert(i, data)
            if len(node.first) <= LEAF_CAPACITY:
                return None
            half = len(node.first) // 2
            right = Leaf(self.allocate(), node.first[half:], node.count[half:],
                         node.data[half:])
            del node.first[half:], node.count[half:], node.data[half:]
            return right
        i = _child_index(node, first)
        child = node.children[i]
        extra = self._insert(child, first, count, data)
        node.keys[i] = child.min_first
        if extra is not None:
            node.keys.insert(i + 1, extra.min_first)
            node.children.insert(i + 1, extra)
        if len(node.children) <= INTERNAL_CAPACITY:
            return None
        half = len(node.children) // 2
        right = Internal(self.allocate(), node.keys[half:], node.children[half:])
        del node.keys[half:], node.children[half:]
        return right

    def remove(self, first: int) -> tuple[int, int]:
        """Remove the extent starting at ``first``; returns its ``(count, data)``."""
        found = self._remove(self.root, first)
        while isinstance(self.root, Internal) and len(self.root.children) == 1:
            self.release(self.root.addr)
            self.root = self.root.children[0]
        if isinstance(self.root, Internal) and not self.root.children:
            self.root = Leaf(self.root.addr)  # the empty root becomes an empty leaf
        return found

    def _remove(self, node: Node, first: int) -> tuple[int, int]:
        if isinstance(node, Leaf):
            i = bisect_left(node.first, first)
            if i == len(node.first) or node.first[i] != first:
                raise InvalidState(f"internal error: no cached extent starts at disk "
                                   f"block {first}")
            found = node.count.pop(i), node.data.pop(i)
            del node.first[i]
            return found
        i = _child_index(node, first)
        child = node.children[i]
        found = self._remove(child, first)
        if len(child):
            node.keys[i] = child.min_first
        else:
            self.release(child.addr)
            del node.keys[i], node.children[i]
        return found

    def set_count(self, first: int, count: int) -> None:
        """Shorten or lengthen the extent starting at ``first`` (same start)."""
        leaf = self._leaf(first)
        i = bisect_left(leaf.first, first)
        if i == len(leaf.first) or leaf.first[i] != first:
            raise InvalidState(f"internal error: no cached extent starts at disk block "
                               f"{first}")
        leaf.count[i] = count


# -- the nodes in the file --------------------------------------------------------------

def node_bytes(node: Node, prev: dict[int, int], next_: dict[int, int]) -> bytes:
    """The 4096 bytes of ``node``; ``prev``/``next_`` give each extent's LRU links
    (by data address)."""
    out = bytearray(NODE_BYTES)
    n = len(node)
    if isinstance(node, Leaf):
        entries = np.zeros(n, dtype=LEAF_ENTRY)
        entries["first"] = node.first
        entries["count"] = node.count
        entries["data"] = node.data
        entries["prev"] = [prev.get(d, 0) for d in node.data]
        entries["next"] = [next_.get(d, 0) for d in node.data]
        out[0] = NODE_LEAF
    else:
        entries = np.zeros(n, dtype=INTERNAL_ENTRY)
        entries["first"] = node.keys
        entries["count"] = [min(child.max_end - key, SPAN_UNBOUNDED)
                            for key, child in zip(node.keys, node.children)]
        entries["child"] = [child.addr for child in node.children]
        out[0] = NODE_INTERNAL
    raw = entries.tobytes()
    out[1:1 + len(raw)] = raw
    return bytes(out)


class TreeLoader:
    """Reads and checks the tree of a cache; collects the LRU links on the way.

    ``read(addr)`` returns the 4096 bytes of the node at block ``addr``.
    """

    def __init__(self, read: Callable[[int], bytes], managed: int, max_nodes: int,
                 path: str) -> None:
        self.read = read
        self.managed = managed
        self.max_nodes = max_nodes
        self.path = path
        self.seen: set[int] = set()
        self.leaf_depth: int | None = None
        #: data address -> (previous, next) LRU links as stored.
        self.links: dict[int, tuple[int, int]] = {}

    def _corrupt(self, message: str) -> Corrupted:
        return Corrupted(f"the VCI extent tree is damaged: {message}", self.path)

    def load(self, root: int) -> Node:
        return self._visit(root, 0, 0, None)

    def _visit(self, addr: int, depth: int, lo: int, hi: int | None) -> Node:
        if depth > MAX_DEPTH:
            raise self._corrupt(f"it is deeper than {MAX_DEPTH} levels")
        if addr in self.seen:
            raise self._corrupt(f"node at block {addr} is referenced twice")
        if len(self.seen) >= self.max_nodes:
            raise self._corrupt(f"it has more nodes than the allocation map's metadata "
                                f"count allows ({self.max_nodes})")
        if not HEADER_BLOCKS <= addr <= self.managed - NODE_BLOCKS:
            raise self._corrupt(f"a node address (block {addr}) lies outside the cache")
        self.seen.add(addr)
        raw = self.read(addr)
        if raw[0] == NODE_LEAF:
            node: Node = self._leaf(addr, raw, depth, lo, hi)
        elif raw[0] == NODE_INTERNAL:
            node = self._internal(addr, raw, depth, lo, hi)
        else:
            raise self._corrupt(f"node at block {addr} has unknown type {raw[0]}")
        node.written = raw
        return node

    def _check_order(self, addr: int, first: list[int], ends: list[int], lo: int,
                     hi: int | None) -> None:
        for i in range(len(first)):
            if first[i] < lo or (hi is not None and ends[i] > hi):
                raise self._corrupt(f"an entry of node {addr} (disk blocks {first[i]}.."
                                    f"{ends[i]}) lies outside the range its parent gives")
            if i and first[i] < ends[i - 1]:
                raise self._corrupt(f"entries of node {addr} are unsorted or overlap "
                                    f"(disk block {first[i]})")

    def _leaf(self, addr: int, raw: bytes, depth: int, lo: int, hi: int | None) -> Leaf:
        if self.leaf_depth is None:
            self.leaf_depth = depth
        elif self.leaf_depth != depth:
            raise self._corrupt(f"leaves sit at depths {self.leaf_depth} and {depth}")
        entries = np.frombuffer(raw, dtype=LEAF_ENTRY, count=LEAF_CAPACITY, offset=1)
        entries = entries[(entries["count"] != 0) & (entries["data"] != 0)]
        if entries.size and entries["flags"].any():
            raise self._corrupt(f"node {addr} has extents with flags set (compressed or "
                                f"encrypted extents are not supported)")
        if depth and not entries.size:
            raise self._corrupt(f"leaf {addr} is empty")
        first = entries["first"].tolist()
        count = entries["count"].tolist()
        data = entries["data"].tolist()
        self._check_order(addr, first, [f + c for f, c in zip(first, count)], lo, hi)
        for d, c in zip(data, count):
            if d < HEADER_BLOCKS or d + c > self.managed:
                raise self._corrupt(f"an extent of node {addr} points at blocks {d}+{c}, "
                                    f"outside the cache")
        for d, p, n in zip(data, entries["prev"].tolist(), entries["next"].tolist()):
            self.links[d] = (p, n)
        return Leaf(addr, first, count, data)

    def _internal(self, addr: int, raw: bytes, depth: int, lo: int,
                  hi: int | None) -> Internal:
        entries = np.frombuffer(raw, dtype=INTERNAL_ENTRY, count=INTERNAL_CAPACITY, offset=1)
        entries = entries[(entries["count"] != 0) & (entries["child"] != 0)]
        if not entries.size:
            raise self._corrupt(f"internal node {addr} is empty")
        first = entries["first"].tolist()
        count = entries["count"].tolist()
        ends = [f + c if c != SPAN_UNBOUNDED else f + 1 for f, c in zip(first, count)]
        self._check_order(addr, first, ends, lo, hi)
        children: list[Node] = []
        for i, child in enumerate(entries["child"].tolist()):
            # A child's extents lie within its own span and before the next child.
            child_hi = first[i + 1] if i + 1 < len(first) else hi
            if count[i] != SPAN_UNBOUNDED:
                child_hi = first[i] + count[i] if child_hi is None else min(
                    child_hi, first[i] + count[i])
            children.append(self._visit(child, depth + 1, first[i], child_hi))
        return Internal(addr, [c.min_first for c in children], children)
