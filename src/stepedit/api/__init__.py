"""The HTTP layer: FastAPI only, never imports torch. `create_app` lives in `stepedit.api.app`."""
