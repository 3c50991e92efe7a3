"""The WaveSpeedAI prediction API for wavespeed-ai/step1x-edit (seeds 000/001)."""

from stepedit.api.flavours import Flavour

from .adapter import webhook_renderer
from .errors import ERRORS
from .protocol import NAME
from .router import router

FLAVOUR = Flavour(name=NAME, router=router, errors=ERRORS, webhook_renderer=webhook_renderer)
