"""Persistence: the LMDB store (tables, key encoding, group commit) and the blob directory."""

from tesserad.store.blobs import BlobRef, BlobStore, BlobWriter, NotAsDeclared, check_sha256, checked_digest
from tesserad.store.database import ReadOnlyStore, ReadTxn, Store, StoreUsage, WriteTxn, store_errors
from tesserad.store.keys import Key, pack, pack_int, prefix_range, trailing_int, unpack
from tesserad.store.lockfile import DataDirLock
from tesserad.store.passes import each_row_once
from tesserad.store.records import decode_metric_point, decode_record, encode_metric_point, encode_record

__all__ = [
    "BlobRef",
    "BlobStore",
    "BlobWriter",
    "DataDirLock",
    "Key",
    "NotAsDeclared",
    "ReadOnlyStore",
    "ReadTxn",
    "Store",
    "StoreUsage",
    "WriteTxn",
    "check_sha256",
    "checked_digest",
    "decode_metric_point",
    "decode_record",
    "each_row_once",
    "encode_metric_point",
    "encode_record",
    "pack",
    "pack_int",
    "prefix_range",
    "store_errors",
    "trailing_int",
    "unpack",
]
