"""The OpenAI-compatible generations-with-an-image API for stepfun-ai/step1x-edit (seed 003)."""
