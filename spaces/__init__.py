"""The search-space language: YAML spaces, validated once, sampled through Optuna.

Usage::

    space = load_space("default")   # a preset name, or a path to a .yaml file
    config = space.suggest(trial)   # inside an Optuna objective: a complete TrialConfig
"""

from spaces.errors import SpaceError
from spaces.loader import list_presets, load_space, parse_space, preset_names
from spaces.space import Param, Space

__all__ = ["Param", "Space", "SpaceError", "list_presets", "load_space", "parse_space", "preset_names"]
