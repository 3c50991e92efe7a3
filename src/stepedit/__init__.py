"""stepedit: self-hosted instruction-based image editing with Step1X-Edit."""

__version__ = "0.1.0"
