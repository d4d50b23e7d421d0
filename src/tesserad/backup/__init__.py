"""Backups of a running daemon (`Backups`) and their restore into a new data directory."""

from tesserad.backup.snapshot import Backup, Backups

__all__ = ["Backup", "Backups"]
