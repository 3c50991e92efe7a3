"""The native job API (list, get, cancel, SSE progress), used by the playground."""
