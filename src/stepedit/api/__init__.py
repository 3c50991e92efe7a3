"""The HTTP layer: FastAPI only, never imports torch. `create_app` lives in `stepedit.api.app`.

    app.py        create_app: the flavours registered (one line each), ops, files, playground
    flavours.py   the Flavour record, the registry (by path prefix), errors in a flavour's shape
    errors.py     exception -> status, and the generic error record
    serving.py    the steps of an edit: convert, validate for the release, inputs, submit, wait,
                  outputs, respond
    protocol.py   WireModel, the base of every request model (unknown fields logged once)
    bodies.py     JSON-or-multipart bodies read by hand (seed 004, native)
    limits.py     the request-body size limit (413 in the flavour's shape, chunked bodies too)
    access.py     request ids (X-Request-Id, sanitised, on every response) and the access log
    playground.py the static playground at `/`, behind the API routes (405s and 404s first)

Each flavour is a folder: `protocol.py` (wire models), `adapter.py` (to and from EditRequest
and JobView), `router.py` (fetch the handler, call it), `errors.py` (its error body, schema and
statuses), and `FLAVOUR` in its `__init__.py`.
"""
