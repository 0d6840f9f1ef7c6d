"""What a config may say, and the objects it builds, one job per module:

- schema: a dataclass per config group, registered in Hydra's ConfigStore (types are checked
  while Hydra composes); a model family's schema lives in its module (harness.models);
- rules: `validate(cfg)`, what types cannot say (ranges, sizes against the images), each once;
- factories: the dataset, model, optimiser and schedule, built from their `_target_`;
- messages: `one_line(error)`, Hydra's and OmegaConf's composition errors in one line.
"""

from harness.config.factories import load_data, make_model, make_schedule, model_labels, optimizer_factory
from harness.config.messages import COMPOSITION_ERRORS, one_line
from harness.config.rules import check_store, validate
from harness.config.schema import plain, register

register()
import harness.models  # noqa: F401  every model family registers its schema there (register_model)

__all__ = ["COMPOSITION_ERRORS", "check_store", "load_data", "make_model", "make_schedule", "model_labels",
           "one_line", "optimizer_factory", "plain", "validate"]
