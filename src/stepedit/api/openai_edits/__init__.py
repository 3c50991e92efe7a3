"""StepFun's OpenAI-style image edits API, `POST /v1/images/edits` (seed 002)."""
