"""`lpla audit`: an audit's config and its cached run from images to a report."""

from lpla.audit.config import (
    AUDIT_RECIPE,
    KNOWLEDGE,
    AuditConfig,
    EncoderSpec,
    config_from_dict,
    load_config,
    shadow_spec,
)
from lpla.audit.run import encoder_dir, run_audit, target_split

__all__ = [
    "AUDIT_RECIPE",
    "KNOWLEDGE",
    "AuditConfig",
    "EncoderSpec",
    "config_from_dict",
    "encoder_dir",
    "load_config",
    "run_audit",
    "shadow_spec",
    "target_split",
]
