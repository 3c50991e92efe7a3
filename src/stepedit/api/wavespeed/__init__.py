"""The WaveSpeedAI prediction API for wavespeed-ai/step1x-edit (seeds 000/001)."""
