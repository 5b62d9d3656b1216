"""The `csv-drop` adapter: order files written into a folder or over SFTP, status files read back; its simulator."""

from adapters.csv_drop.adapter import CsvDropAdapter
from adapters.csv_drop.settings import CsvDropSettings

__all__ = ["CsvDropAdapter", "CsvDropSettings"]
