"""The OpenAI-compatible generations-with-an-image API for stepfun-ai/step1x-edit (seed 003)."""

from stepedit.api.flavours import Flavour

from .errors import ERRORS
from .protocol import NAME
from .router import router

FLAVOUR = Flavour(name=NAME, router=router, errors=ERRORS)
