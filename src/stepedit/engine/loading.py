"""Build the editor a settings object asks for, importing torch only when a real model is used."""

from __future__ import annotations

import importlib

from stepedit.engine.editor import Editor, FakeEditor
from stepedit.settings import Settings


def load_editor(settings: Settings) -> Editor:
    source = settings.model or ""
    if source == "fake" or source.startswith("fake:"):
        return FakeEditor.from_source(source)
    module = importlib.import_module("stepedit.engine.pipeline_editor")
    editor: Editor = module.PipelineEditor.from_settings(settings)
    return editor
