"""StepFun's OpenAI-style image edits API, `POST /v1/images/edits` (seed 002)."""

from stepedit.api.flavours import Flavour

from .errors import ERRORS
from .protocol import NAME
from .router import router

FLAVOUR = Flavour(name=NAME, router=router, errors=ERRORS)
