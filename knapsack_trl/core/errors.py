"""Errors about settings, worded so that each layer names the settings its own way.

The core knows its settings as ``n_min``, ``window``, ``budget``; a trainer config calls them
``knapsack_n_min``, ``knapsack_tracker_window``, ``generation_batch_size``. A message marks each setting
name as ``<n_min>``: printed by the core as ``n_min``, renamed by the layer that owns the field names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = re.compile(r"<([a-z_]+)>")


class SettingError(ValueError):
    """A setting that can never work (or an input that breaks one), naming the setting and the fix."""

    def __init__(self, message: str) -> None:
        self.template = message
        super().__init__(_NAME.sub(r"\1", message))

    def renamed(self, names: Mapping[str, str]) -> SettingError:
        """The same error with each ``<name>`` spelled as ``names[name]`` (unlisted names stay as they are)."""
        return SettingError(_NAME.sub(lambda m: f"<{names.get(m[1], m[1])}>", self.template))
