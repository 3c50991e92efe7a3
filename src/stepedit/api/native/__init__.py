"""The native job API (create, list, get, cancel, SSE progress, the prompt enhancer), used by
the playground. Errors on paths outside every flavour (/health, /files) take its shape too."""

from stepedit.api.flavours import Flavour

from .errors import ERRORS
from .protocol import NAME
from .router import router

FLAVOUR = Flavour(name=NAME, router=router, errors=ERRORS)
