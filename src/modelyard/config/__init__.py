"""The config file: its schema, loading with located errors, and cross-checks (pure).

``schema`` says every key; ``loader`` reads YAML, expands ``${ENV}`` and locates every
error by file, line and key; ``checks`` finds what each part allows alone but not together.
"""

from modelyard.config.checks import cross_check
from modelyard.config.loader import ConfigError, ConfigIssue, load_config, parse_config
from modelyard.config.node_spec import is_loopback
from modelyard.config.schema import (
    LOCAL_NODE,
    NAME_PATTERN,
    Access,
    ApiKey,
    Condition,
    Config,
    Engines,
    GpuSpec,
    Model,
    ModelBase,
    ModeSpec,
    Node,
    Persona,
    PersonaVoice,
    Placement,
    Rule,
    Scheduler,
    Timeouts,
    Wyoming,
    split_listen,
)

__all__ = [
    "LOCAL_NODE",
    "NAME_PATTERN",
    "Access",
    "ApiKey",
    "Condition",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Engines",
    "GpuSpec",
    "ModeSpec",
    "Model",
    "ModelBase",
    "Node",
    "Persona",
    "PersonaVoice",
    "Placement",
    "Rule",
    "Scheduler",
    "Timeouts",
    "Wyoming",
    "cross_check",
    "is_loopback",
    "load_config",
    "parse_config",
    "split_listen",
]
