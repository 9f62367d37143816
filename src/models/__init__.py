"""Networks by registry: every module of this package but ``registry`` and ``geometry`` declares one family
and registers it on import; importing the package imports them all, so adding a family is adding a file."""
import importlib
import pkgutil

from src.models.registry import (Family, ModelOption, architecture, architecture_fields, build_model, check_model, create_network,
                                 ctc_steps, family_names, foreign_options, get_family, model_options, register_model)

# The original first: its name leads every list of families (--network's help, error messages).
for _name in sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda name: name != "warpctc"):
    if _name not in ("registry", "geometry"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Family", "ModelOption", "architecture", "architecture_fields", "build_model", "check_model", "create_network", "ctc_steps",
           "family_names", "foreign_options", "get_family", "model_options", "register_model"]
