"""Reading optional fields of a config section, whether a ConfigDict, a dict or any object.

The one accessor for a bare config section (models, encoder and input_pipeline take a section
that may be a ConfigDict or a plain dict), always spelled `config_util.field(section, key,
default)`: a missing field and a field left at None (an unset `config_dict.placeholder`) both
give the default. Code that holds the whole ml_collections config reads it with `.get`.
"""

from typing import Any


def field(config: Any, key: str, default: Any = None) -> Any:
  """config.key (or config[key] for a dict); `default` when it is missing or None."""
  if isinstance(config, dict):
    value = config.get(key, default)
  else:
    value = getattr(config, key, default)
  return default if value is None else value
