"""Safety checkers: a plug-in protocol and a NudeNet implementation (CPU, model shipped in the
wheel, no download). Used only when the optional `nudenet` package is installed and enabled."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# NudeNet 3.x detector classes that make an image "nsfw" (covered/face classes do not).
EXPOSED_CLASSES = frozenset(
    {
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)


class SafetyChecker(Protocol):
    def check(self, images: list[Image.Image]) -> list[bool]:
        """One flag per image: True when it shows nsfw content."""
        ...


class NudeNetChecker:
    def __init__(self, threshold: float = 0.5) -> None:
        from nudenet import NudeDetector

        self._detector: Any = NudeDetector()
        self.threshold = threshold

    def check(self, images: list[Image.Image]) -> list[bool]:
        return [self._is_nsfw(image) for image in images]

    def _is_nsfw(self, image: Image.Image) -> bool:
        # NudeNet converts arrays with COLOR_RGBA2BGR, so an RGBA array is what it expects.
        rgba = np.ascontiguousarray(np.asarray(image.convert("RGBA")))
        detections = self._detector.detect(rgba)
        return any(
            d.get("class") in EXPOSED_CLASSES and float(d.get("score", 0.0)) >= self.threshold
            for d in detections
        )


def load_safety_checker(enabled: bool) -> SafetyChecker | None:
    """NudeNet when enabled and installed; None otherwise (outputs are then not checked)."""
    if not enabled:
        return None
    try:
        return NudeNetChecker()
    except ImportError:
        logger.warning("safety checker enabled but `nudenet` is not installed; outputs unchecked")
        return None
