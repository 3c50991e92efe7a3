"""The reasoning edit endpoint `POST /v1/image/edit/` (seed 004, Step1X-Edit v1.2)."""
