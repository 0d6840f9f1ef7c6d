"""Hydra's and OmegaConf's composition errors, rewritten as the harness's one-line form."""

from dataclasses import fields

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

COMPOSITION_ERRORS = (ConfigCompositionException, MissingConfigException, OverrideParseException,
                      OmegaConfBaseException)


def one_line(error: Exception) -> str:
    """Hydra's and OmegaConf's composition errors, as one line that names the bad value."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, choice = error.missing_cfg_file.rpartition("/")
        options = [o for o in (error.options or []) if o]
        if options:
            return f"{group}={choice} is not a config choice: use one of {', '.join(sorted(options))}"
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        message = str(cause).splitlines()[0]
        if "is not a valid bool" in message:
            message += ": use true or false (also yes/no, on/off, 1/0)"
        return f"{cause.full_key}: {message}" + _key_hint(cause)
    first = str(error).strip().splitlines()
    text = first[0] if first else type(error).__name__
    if isinstance(error, OverrideParseException):  # the override's syntax: name it, and the grammar
        return (f"{_escaped(error.override)}: {text} "
                "(override grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)")
    append = next((line for line in first if "To append to your" in line), None)
    if append:  # `experiment=x` where `+experiment=x` was meant
        return f"{text} {append.strip()}"
    return text


def _escaped(text: str) -> str:
    """A newline or tab typed into an override, shown as \\n or \\t: the message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _key_hint(cause) -> str:
    if "not in" not in str(cause):
        return ""
    object_type, parent = getattr(cause, "object_type", None), getattr(cause, "parent_node", None)
    if object_type is not None and hasattr(object_type, "__dataclass_fields__"):
        keys = [f.name for f in fields(object_type)]
    elif OmegaConf.is_dict(parent):  # a config file without a schema: the keys it has
        keys = [str(k) for k in parent.keys()]
    else:
        return ""
    return f" (allowed keys: {', '.join(k for k in keys if not k.startswith('_'))})"
