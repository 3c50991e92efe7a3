"""The engine: owns the model on a device and runs queued jobs. Torch is imported lazily
(only `stepedit.engine.pipeline_editor` imports it)."""

from stepedit.engine.editor import Editor, EditorResult, FakeEditor, ProgressCallback
from stepedit.engine.loading import load_editor
from stepedit.engine.safety import SafetyChecker, load_safety_checker
from stepedit.engine.worker import InProcessWorker, run_job

__all__ = [
    "Editor",
    "EditorResult",
    "FakeEditor",
    "InProcessWorker",
    "ProgressCallback",
    "SafetyChecker",
    "load_editor",
    "load_safety_checker",
    "run_job",
]
