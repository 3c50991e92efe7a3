"""`WireModel`: the base of every flavour's request models (as vLLM's `OpenAIBaseModel`).

The providers we imitate accept fields they do not know (the `openai` client sends
`extra_body` entries as more fields), so ours do too: unknown fields are ignored, and logged
once, here, with the flavour's name, whether they came as JSON or as multipart form fields.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, model_validator

logger = logging.getLogger(__name__)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    flavour: ClassVar[str]  # the flavour the model belongs to, named in the log
    # Keys that are no field but not unknown either (a multipart file read apart, e.g. "image").
    known_keys: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="wrap")
    @classmethod
    def _log_unknown_fields(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        model = handler(data)
        if isinstance(data, Mapping):
            unknown = sorted(str(key) for key in data if key not in cls.field_keys())
            if unknown:
                logger.info("%s: ignoring unknown fields %s", cls.flavour, unknown)
        return model

    @classmethod
    def field_keys(cls) -> frozenset[str]:
        names = {name for name in cls.model_fields}
        aliases = {f.alias for f in cls.model_fields.values() if f.alias}
        return frozenset(names | aliases | cls.known_keys)
