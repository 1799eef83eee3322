"""The admin HTTP API of a running EIR (issue 7): lists, lifecycle actions, imports, audit.

`eir.admin.app` has the routes and `AdminServer`; `eir.admin.auth` the tokens
and roles; `eir.admin.models` the bodies (and so the OpenAPI document);
`eir.admin.jobs` the import jobs; `eir.admin.access` the log of personal-data
reads; `eir.admin.cli` ``eir admin token``. It calls `eir.policy` (the same
functions as the command line) and is never imported by it.
"""
