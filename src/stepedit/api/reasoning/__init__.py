"""The reasoning edit endpoint `POST /v1/image/edit/` (seed 004, Step1X-Edit v1.2)."""

from stepedit.api.flavours import Flavour

from .errors import ERRORS
from .protocol import NAME
from .router import router

FLAVOUR = Flavour(name=NAME, router=router, errors=ERRORS)
