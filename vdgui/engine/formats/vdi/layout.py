"""VDI on-disk layout: constants, header records, and small helpers."""

from __future__ import annotations

import uuid as uuidlib

from ...errors import InvalidHeader
from ...layout import Layout

SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
VERSION_0 = 0x00000002  # the only legacy value VirtualBox accepts

BLOCK_FREE = 0xFFFFFFFF
BLOCK_ZERO = 0xFFFFFFFE

TYPE_NORMAL, TYPE_FIXED, TYPE_UNDO, TYPE_DIFF = 1, 2, 3, 4
TYPE_NAMES = {TYPE_NORMAL: "normal", TYPE_FIXED: "fixed", TYPE_UNDO: "undo",
              TYPE_DIFF: "differencing"}

HEADER_FLAG_ZERO_EXPAND = 0x1

PRE_HEADER_TEXT = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
PRE_HEADER_SIZE = 72
HEADER_V1_SIZE = 384
HEADER_V1PLUS_SIZE = 400
COMMENT_SIZE = 256

DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_ALIGNMENT = 1 << 20
MIN_SIZE = 1 << 20
MAX_SIZE = 4 * (1 << 50) - 3 * (1 << 20)

PRE_HEADER = Layout("VDI pre-header", "<", [
    ("text", "64s"), ("signature", "I"), ("version", "I")])

HEADER_V1 = Layout("VDI header", "<", [
    ("header_size", "I"), ("type", "I"), ("flags", "I"), ("comment", "256s"),
    ("blocks_offset", "I"), ("data_offset", "I"),
    ("legacy_cylinders", "I"), ("legacy_heads", "I"), ("legacy_sectors", "I"),
    ("legacy_sector_size", "I"), ("unused", "I"),
    ("disk_size", "Q"), ("block_size", "I"), ("block_extra", "I"),
    ("blocks", "I"), ("blocks_allocated", "I"),
    ("uuid", "16s"), ("modification_uuid", "16s"), ("parent_uuid", "16s"),
    ("parent_modification_uuid", "16s")])

LCHS = Layout("VDI LCHS geometry", "<", [
    ("cylinders", "I"), ("heads", "I"), ("sectors", "I"), ("sector_size", "I")])

HEADER_V0 = Layout("VDI version 0 header", "<", [
    ("type", "I"), ("flags", "I"), ("comment", "256s"),
    ("legacy_cylinders", "I"), ("legacy_heads", "I"), ("legacy_sectors", "I"),
    ("legacy_sector_size", "I"),
    ("disk_size", "Q"), ("block_size", "I"), ("blocks", "I"), ("blocks_allocated", "I"),
    ("uuid", "16s"), ("modification_uuid", "16s"), ("parent_uuid", "16s")])

assert HEADER_V1.size == HEADER_V1_SIZE
LCHS_OFFSET = PRE_HEADER_SIZE + HEADER_V1_SIZE  # 0x1C8


def invalid_header(message: str, path: str) -> InvalidHeader:
    return InvalidHeader(message, path, status="VERR_VD_VDI_INVALID_HEADER")


def guid(raw: bytes) -> uuidlib.UUID:
    """VDI stores UUIDs in the little-endian GUID layout."""
    return uuidlib.UUID(bytes_le=raw)
