"""Model families: one module each, holding the family's schema (registered with
harness.config.schema.register_model), its builder (the schema's `_target_`), its rules
(`check(cfg_model)`, optional) and its LABELS (the words for its axes, as
harness.contract.RESNET_LABELS). A new family is a module here and a YAML in conf/model/."""

import importlib
import pkgutil

for _family in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_family.name}")
