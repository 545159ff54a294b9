"""vtrain: config-driven training of the 2020 vision-transformer papers."""

from vtrain.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models"]
