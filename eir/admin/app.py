"""The admin HTTP API (issue 7): routes, their roles, errors as RFC 9457 problems.

Owns the REST surface under ``/api/v1`` over what the command line does
(eir/regime_cli.py, eir/registry_cli.py) — the same functions, never a
second implementation: lifecycle actions (`eir.policy.lifecycle`), reads
and the decision dry run (`eir.policy.queries`), list imports
(`eir.policy.csvio` in `eir.admin.jobs`), the audit trail
(`eir.policy.audit.verify_chain` through `SqliteRegistry.verify_audit`), the
peers (the node's own metrics, as ``eir status`` reads them). The OpenAPI 3
document is served at ``/openapi.json``; there is no docs UI (FastAPI's
loads its scripts from a CDN).

Every route but ``/health``, ``/ready`` and ``/openapi.json`` needs a bearer
token (`eir.admin.auth`): 401 without a valid one (``WWW-Authenticate:
Bearer``), 403 naming what the role may not do. Every change is audited
under the caller (actor ``api:<name>``); every read of personal data goes
to the access log (`eir.admin.access`). Errors are ``application/problem+json``
(`eir.http.problem_body`): bad input 422 naming the parameter in
``invalidParams``, an unknown IMEI 404, an action the IMEI's state forbids
409, the registry busy (an import running, SQLite locked) or unavailable 503
with ``Retry-After``.

Processes: the API runs only in the process that runs the registry jobs
(`eir.app.Role.runs_registry_jobs`: the single process, or worker 0 of
``--workers N``), so that import jobs and the access log live in one place;
with workers it binds with SO_REUSEPORT so that a rolling restart's new
worker 0 can listen before the old one stops.
"""


import asyncio
import contextlib
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from eir import __version__, status
from eir.admin import models as m
from eir.admin.access import AccessLog
from eir.admin.auth import Caller, Perm, Role, TokenError, TokenStore
from eir.admin.jobs import Jobs, row_problem
from eir.clock import Clock
from eir.config import Config, ConfigError, from_mapping
from eir.http import PROBLEM_JSON, Asgi, HttpServer, Message, Receive, Scope, Send, problem_body
from eir.metrics import default_url
from eir.policy import lifecycle, queries, sqlite_backup
from eir.policy.csvio import CsvImportError, import_csv, parse_csv
from eir.policy.model import normalize_imei
from eir.policy.regime import Regime
from eir.policy.registry import RowError
from eir.policy.sqlite import SqliteRegistry, import_options
from eir.policy.sqlite_backup import StoreError
from eir.policy.sqlite_regime import SqliteObservations

log = logging.getLogger("eir.admin")

__all__ = ["AdminServer", "Node", "create_app"]

API = "/api/v1"
# uploads up to this size are parsed whole before the job starts: a bad row is a 422 at
# once; a larger file's header is checked, its rows by the job (its error names the line)
CHECK_INLINE_BYTES = 1 << 20
RETRY_SECONDS = 5
# FastAPI reads a JSON body whole, before the token is checked: bounded, so that nobody
# can make the node hold a body of any size (the bodies here are a few hundred bytes; a
# policy preview's config a few kB). List uploads stream to a file: admin.max_upload_bytes
JSON_BODY_BYTES = 1 << 20
# the keys of an audit record's summary that hold an IMSI (`eir.policy.lifecycle`)
_SUMMARY_IMSI_KEYS = ("imsi", "pair")
_PAGE = Query(100, ge=1, le=1000, description="items per page")
# no "from __future__ import annotations" here: FastAPI reads the annotations of routes
# defined inside create_app, which name its locals (need(...))
ImeiPath = Annotated[str, PathParam(pattern=m.IMEI_PATTERN, description="14 or 15 digits")]
ImsiPath = Annotated[str, PathParam(pattern=m.IMSI_PATTERN, description="5 to 15 digits")]
JobId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")]
FullQ = Annotated[str | None, Query(min_length=1, max_length=64,
                                    description="a full list of this source")]
DeltaQ = Annotated[str | None, Query(min_length=1, max_length=64,
                                     description="a delta of this source's list")]
VersionQ = Annotated[int | None, Query(ge=0, le=2**62, description="the list's version")]
AtQ = Annotated[str | None, Query(max_length=40, description="ISO 8601 (default now)")]


class Node(Protocol):
    """What the API reads of the running node (`eir.app.EirApp`)."""

    @property
    def config(self) -> Config: ...
    @property
    def registry(self) -> SqliteRegistry: ...
    @property
    def observations(self) -> SqliteObservations: ...
    @property
    def regime(self) -> Regime | None: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def fresh_at(self) -> float | None: ...
    @property
    def stale_since(self) -> float | None: ...
    @property
    def workers(self) -> int: ...
    async def metrics_text(self) -> str: ...


class ApiError(Exception):
    """An answer other than 2xx, as a problem document."""

    def __init__(self, status_code: int, detail: str, *, params: Sequence[tuple[str, str]] = (),
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.params = params
        self.headers = headers or {}


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type", 422: "Unprocessable Content",
           500: "Internal Server Error", 503: "Service Unavailable"}


def problem(status_code: int, detail: str | None, params: Sequence[tuple[str, str]] = (),
            headers: dict[str, str] | None = None) -> Response:
    body = problem_body(status_code, _TITLES.get(status_code, "Error"), detail,
                        invalid_params=[{"param": p, "reason": r} for p, r in params])
    return Response(body, status_code, headers=headers, media_type=PROBLEM_JSON)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The problem answers of an operation; 400 (a body that cannot be parsed) on all."""
    ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
    return {c: {"description": _TITLES[c], "content": {PROBLEM_JSON: ref}}
            for c in sorted({400, *codes})}


def _tag(name: str) -> list[str | Enum]:
    return [name]


def _busy(detail: str) -> ApiError:
    return ApiError(503, detail, headers={"Retry-After": str(RETRY_SECONDS)})


def create_app(node: Node, tokens: TokenStore, access: AccessLog, jobs: Jobs) -> FastAPI:
    app = FastAPI(title="EIR admin API", version=__version__, docs_url=None, redoc_url=None,
                  description=__doc__)
    app.add_middleware(_BoundedBody, limit=JSON_BODY_BYTES,
                       streamed=frozenset({f"{API}/imports", f"{API}/preview/list"}))
    bearer = HTTPBearer(auto_error=False, description="a token made by `eir admin token`")
    cfg = node.config.admin

    # -- errors ---------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> Response:
        return problem(exc.status_code, exc.detail, exc.params, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's own 400: a body that is not JSON (or not UTF-8) at all
        params = [("body", str(exc.detail))] if exc.status_code == 400 else []
        return problem(exc.status_code, str(exc.detail), params,
                       headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> Response:
        params = [(".".join(str(p) for p in e.get("loc", ())), str(e.get("msg", "invalid")))
                  for e in exc.errors()]
        named = ", ".join(p for p, _ in params) or "the request"
        return problem(422, f"invalid {named}", params)

    @app.exception_handler(sqlite3.Error)
    async def _locked(_req: Request, exc: sqlite3.Error) -> Response:
        log.warning("admin: registry error: %s", exc)
        return problem(503, f"the registry is busy or unavailable ({exc}); try again",
                       headers={"Retry-After": str(RETRY_SECONDS)})

    @app.exception_handler(Exception)
    async def _bug(_req: Request, exc: Exception) -> Response:
        log.exception("admin: unexpected error")
        return problem(500, "unexpected error (logged by the node)")

    # -- who calls ------------------------------------------------------------------------

    def need(perm: Perm) -> Callable[..., Awaitable[Caller]]:
        async def caller(creds: Annotated[HTTPAuthorizationCredentials | None,
                                          Depends(bearer)]) -> Caller:
            if creds is None:
                raise ApiError(401, "a bearer token is required (Authorization: Bearer ...)",
                               headers={"WWW-Authenticate": "Bearer"})
            who = tokens.caller(creds.credentials)
            if who is None:
                raise ApiError(401, "the token is not valid",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            if not who.may(perm):
                raise ApiError(403, f"{who.name}: the {who.role.value} role may not "
                                    f"{perm.value}")
            return who
        return caller

    def registry() -> SqliteRegistry:
        if node.regime is None:
            raise _busy("the registry is unavailable (see the node's log); retrying")
        return node.registry

    def regime() -> Regime:
        r = node.regime
        if r is None:
            raise _busy("the registry is unavailable (see the node's log); retrying")
        return r

    def writable() -> SqliteRegistry:
        reg = registry()
        job = jobs.running
        if job is not None:
            raise _busy(f"an import is running (job {job.id}); changes wait until it ends")
        return reg

    def own(caller: Caller, imsi: str) -> None:
        if not caller.owns(imsi):
            raise ApiError(403, f"{caller.name}: IMSI {imsi} is not of your networks "
                                f"({', '.join(caller.networks)})")

    def logged(caller: Caller, request: Request, what: str, **fields: Any) -> None:
        try:
            access.record(caller, request.method, request.url.path, what, **fields)
        except OSError as exc:
            log.error("admin: access log %s not written: %s", access.path, exc)
            raise _busy("the access log cannot be written; personal data is not served "
                        "without it") from None

    # -- health ---------------------------------------------------------------------------

    @app.get("/health", response_model=m.Health, tags=_tag("health"))
    async def health() -> m.Health:
        """Live: the process answers."""
        return m.Health()

    @app.get("/ready", response_model=m.Ready, tags=_tag("health"),
             responses={503: {"model": m.Ready, "description": "not ready"}})
    async def ready(response: Response) -> m.Ready:
        """Ready: the registry is loaded and the snapshot was checked current lately."""
        r = node.regime
        if r is None:
            response.status_code = 503
            return m.Ready(ready=False, detail="the registry is not loaded")
        limit = max(10.0, 5 * node.config.registry.reload_seconds)
        age = None if node.fresh_at is None else max(0.0, time.time() - node.fresh_at)
        ok = node.stale_since is None and age is not None and age <= limit
        if not ok:
            response.status_code = 503
        return m.Ready(ready=ok, registry_version=r.snapshot.version,
                       snapshot_age_seconds=None if age is None else round(age, 3),
                       detail=None if ok else "the snapshot is stale (refreshes fail)")

    # -- lists ----------------------------------------------------------------------------

    lists: list[str | Enum] = ["lists"]
    std = _responses(401, 403, 422, 503)

    @app.get(f"{API}/entries", response_model=m.EntryPage, tags=lists, responses=std)
    async def list_entries(
        caller: Annotated[Caller, Depends(need(Perm.READ_LISTS))],
        list_: Annotated[m.ListName | None,
                         Query(alias="list")] = None,
        source: Annotated[str | None, Query(max_length=64)] = None,
        reason: Annotated[str | None, Query(max_length=64)] = None,
        after: Annotated[str, Query(pattern=r"^[0-9]{0,14}$",
                                    description="the last IMEI of the page before")] = "",
        limit: int = _PAGE,
    ) -> m.EntryPage:
        """List entries by IMEI, filtered by list, source or reason (keyset paging)."""
        rows = await queries.entries(registry(), after=after, limit=limit, list_=list_,
                                     source=source, reason=reason)
        return m.EntryPage(items=[m.Entry(**r) for r in rows],
                           next_after=rows[-1]["imei"] if len(rows) == limit else None)

    @app.get(f"{API}/entries/{{imei}}", response_model=m.EntryView, tags=lists,
             responses=_responses(401, 403, 404, 422, 503))
    async def get_entry(caller: Annotated[Caller, Depends(need(Perm.READ_ENTRY))],
                        imei: ImeiPath, request: Request) -> m.EntryView:
        """One IMEI: entry, pairs, decision now, observations, history, grace clocks.

        IMSI-bearing fields are null for roles that may not see them (police: none;
        auditor: the exception pairs only); an operator sees its own subscribers' rows."""
        reg = registry()
        imei14 = normalize_imei(imei)
        assert imei14 is not None  # the pattern
        n = node.config.notifications
        out = await queries.show(reg, node.observations, imei14,
                                 dc=node.config.decision_config(), now=int(node.clock()),
                                 offsets_days=n.offsets_days, at_expiry=n.at_expiry)
        if (out["list"] is None and not out["pairs"] and not out["observations"]
                and not out["history"] and not out["range_entries"]):
            raise ApiError(404, f"IMEI {imei14} is not known to the registry (no entry, "
                                "range, pair, observation or history)")
        sees_all = caller.role is Role.MINISTRY or caller.role is Role.OPERATOR
        if caller.role is Role.POLICE:
            out["pairs"] = None
        else:
            out["pairs"] = [p for p in out["pairs"] if caller.owns(p["imsi"])]
        for key in ("observations", "pending_deadlines", "notifications"):
            out[key] = ([r for r in out[key] if caller.owns(r["imsi"] or None)]
                        if sees_all else None)
        shown = {i for key in ("pairs", "observations", "pending_deadlines", "notifications")
                 for i in (r["imsi"] for r in out[key] or ()) if i}
        # the history's audit summaries name a pair's IMSI (exception-add/-remove, legalise
        # with a pair): hidden as in the pairs above, a police caller sees none
        for rec in out["history"]:
            summary = rec["summary"]
            if not isinstance(summary, dict):
                continue
            for key in _SUMMARY_IMSI_KEYS:
                imsi = summary.get(key)
                if isinstance(imsi, str):
                    if caller.role is Role.POLICE or not caller.owns(imsi):
                        summary[key] = None
                    else:
                        shown.add(imsi)
        if caller.role is not Role.POLICE:
            logged(caller, request, "entry", imei=imei14, imsis=len(shown))
        return m.EntryView(**out)

    @app.get(f"{API}/entries/{{imei}}/observations", response_model=list[m.Observation],
             tags=lists, responses=_responses(401, 403, 422, 503))
    async def get_observations(caller: Annotated[Caller, Depends(need(Perm.OBSERVATIONS))],
                               imei: ImeiPath, request: Request) -> list[m.Observation]:
        """Where the IMEI was seen (IMSI, operator, first and last seen); an operator gets
        its own subscribers' rows only."""
        registry()
        imei14 = normalize_imei(imei)
        assert imei14 is not None
        rows = [r for r in await node.observations.history(imei14) if caller.owns(r["imsi"])]
        logged(caller, request, "observations", imei=imei14,
               imsis=len({r["imsi"] for r in rows if r["imsi"]}))
        return [m.Observation(**r) for r in rows]

    # -- lifecycle ------------------------------------------------------------------------

    changes: list[str | Enum] = ["lifecycle"]
    change_errors = _responses(401, 403, 409, 422, 503)

    async def changed(reg: SqliteRegistry, caller: Caller, action: str, imei: str,
                      run: Callable[[], Awaitable[int]]) -> m.Change:
        try:
            seq = await run()
        except lifecycle.NoSuchPair as exc:
            raise ApiError(404, f"{exc}; nothing changed") from None
        except lifecycle.LifecycleError as exc:
            if exc.field is not None:
                where = "path" if exc.field in ("imei", "imsi") and action != "legalise" \
                    else "body"
                raise ApiError(422, f"{exc}; nothing changed",
                               params=[(f"{where}.{exc.field}", str(exc))]) from None
            raise ApiError(409, f"{exc}; nothing changed") from None
        imei14 = normalize_imei(imei) or imei
        entry = await queries.entry(reg, imei14)
        pairs = (await reg.show(imei14))["pairs"]
        return m.Change(seq=seq, action=action, actor=caller.actor, imei=imei14,
                        entry=m.Entry(**entry) if entry else None,
                        # police sees no IMSI (as in get_entry), an operator its own only
                        pairs=None if caller.role is Role.POLICE else
                        [m.PairBrief(**p) for p in pairs if caller.owns(p["imsi"])])

    @app.post(f"{API}/entries/{{imei}}/legalise", response_model=m.Change, tags=changes,
              responses=change_errors)
    async def legalise(caller: Annotated[Caller, Depends(need(Perm.LEGALISE))],
                       imei: ImeiPath, body: m.LegaliseBody) -> m.Change:
        """Grey (listed or implicit) or illegal-import black -> white ``legalised``."""
        reg = writable()
        return await changed(reg, caller, "legalise", imei, lambda: lifecycle.legalise(
            reg, imei, evidence=body.evidence, actor=caller.actor, imsi=body.imsi,
            note=body.note))

    @app.post(f"{API}/entries/{{imei}}/report", response_model=m.Change, tags=changes,
              responses=change_errors)
    async def report(caller: Annotated[Caller, Depends(need(Perm.REPORT))],
                     imei: ImeiPath, body: m.ReportBody) -> m.Change:
        """Block a stolen or lost device (black)."""
        reg = writable()
        return await changed(reg, caller, f"report-{body.reason}", imei, lambda: lifecycle.report(
            reg, imei, reason=body.reason, evidence=body.evidence, actor=caller.actor,
            source="police" if caller.role is Role.POLICE else caller.role.value,
            note=body.note))

    @app.post(f"{API}/entries/{{imei}}/recovered", response_model=m.Change, tags=changes,
              responses=change_errors)
    async def recovered(caller: Annotated[Caller, Depends(need(Perm.REPORT))],
                        imei: ImeiPath, body: m.RecoveredBody) -> m.Change:
        """Lift a stolen or lost block: the entry it replaced comes back."""
        reg = writable()
        return await changed(reg, caller, "recovered", imei, lambda: lifecycle.recovered(
            reg, imei, evidence=body.evidence, actor=caller.actor))

    @app.get(f"{API}/exceptions", response_model=m.PairPage, tags=lists, responses=std)
    async def list_pairs(
        caller: Annotated[Caller, Depends(need(Perm.READ_LISTS))], request: Request,
        imei: Annotated[str | None, Query(pattern=m.IMEI_PATTERN)] = None,
        after: Annotated[str, Query(pattern=r"^([0-9]{14}:[0-9]{5,15})?$",
                                    description="IMEI:IMSI, the last pair of the page before"
                                    )] = "",
        limit: int = _PAGE,
    ) -> m.PairPage:
        """Exception pairs by (IMEI, IMSI); an operator sees its own networks' only."""
        a, _, b = after.partition(":")
        rows = await queries.pairs(registry(), after=(a, b), limit=limit,
                                   imei14=normalize_imei(imei) if imei else None,
                                   networks=caller.networks if caller.bound else None)
        logged(caller, request, "exceptions", imei=normalize_imei(imei) if imei else None,
               imsis=len({r["imsi"] for r in rows}))
        return m.PairPage(items=[m.Pair(**r) for r in rows],
                          next_after=f"{rows[-1]['imei']}:{rows[-1]['imsi']}"
                          if len(rows) == limit else None)

    @app.put(f"{API}/exceptions/{{imei}}/{{imsi}}", response_model=m.Change, tags=changes,
             responses=change_errors)
    async def add_pair(caller: Annotated[Caller, Depends(need(Perm.EXCEPTIONS))],
                       imei: ImeiPath, imsi: ImsiPath, body: m.PairBody) -> m.Change:
        """Allow (IMEI, IMSI) despite a block, within the per-IMEI cap."""
        own(caller, imsi)
        reg = writable()
        return await changed(reg, caller, "exception-add", imei, lambda: lifecycle.add_exception(
            reg, imei, imsi, evidence=body.evidence, actor=caller.actor,
            source=caller.role.value))

    @app.delete(f"{API}/exceptions/{{imei}}/{{imsi}}", response_model=m.Change, tags=changes,
                responses=_responses(401, 403, 404, 409, 422, 503))
    async def remove_pair(caller: Annotated[Caller, Depends(need(Perm.EXCEPTIONS))],
                          imei: ImeiPath, imsi: ImsiPath,
                          evidence: Annotated[str | None, Query(max_length=128)] = None
                          ) -> m.Change:
        """Remove an exception pair."""
        own(caller, imsi)
        reg = writable()
        return await changed(reg, caller, "exception-remove", imei,
                             lambda: lifecycle.remove_exception(
                                 reg, imei, imsi, actor=caller.actor, evidence=evidence or None))

    # -- imports --------------------------------------------------------------------------

    imports: list[str | Enum] = ["imports"]
    csv_body = {"requestBody": {"required": True, "description": "the list CSV, as "
                                "`eir registry import` reads it",
                                "content": {"text/csv": {"schema": {"type": "string"}}}}}

    async def spooled(request: Request, actor: str, full: str | None, delta: str | None,
                      list_version: int | None) -> tuple[Path, dict[str, Any]]:
        """An uploaded list CSV in a file of its own, checked (`_check_csv`), and the
        import options of its query (`import_options`, as ``eir registry import``)."""
        registry()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("text/csv", "application/csv"):
            raise ApiError(415, f"the body must be text/csv, not {ctype or 'untyped'}")
        try:
            options = import_options(actor, full=full, delta=delta, list_version=list_version)
        except ValueError as exc:
            raise ApiError(422, str(exc), params=[("query.full", str(exc))]) from None
        path = jobs.spool_path()
        try:
            await _receive(request, path, cfg.max_upload_bytes)
            # up to 1 MiB parsed (tens of ms): not on the loop that answers S13
            await asyncio.to_thread(_check_csv, path)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return path, options

    @app.post(f"{API}/imports", response_model=m.ImportJob, status_code=202, tags=imports,
              openapi_extra=csv_body,
              responses=_responses(401, 403, 413, 415, 422, 503))
    async def upload(caller: Annotated[Caller, Depends(need(Perm.IMPORT))], request: Request,
                     response: Response, full: FullQ = None, delta: DeltaQ = None,
                     list_version: VersionQ = None) -> m.ImportJob:
        """Upload a list CSV; it is imported by a background job (poll its URL)."""
        running = jobs.running
        if running is not None:
            raise _busy(f"an import is running (job {running.id}); one at a time")
        path, options = await spooled(request, caller.actor, full, delta, list_version)
        running = jobs.running  # again: another upload may have started while this one came
        if running is not None:
            path.unlink()
            raise _busy(f"an import is running (job {running.id}); one at a time")
        try:
            job = jobs.start(path, caller.actor, options)
        except BaseException:
            path.unlink()
            raise
        response.headers["Location"] = f"{API}/imports/{job.id}"
        return m.ImportJob(**job.view())

    @app.post(f"{API}/preview/list", response_model=m.PreviewOut, tags=_tag("decisions"),
              openapi_extra=csv_body, responses=_responses(401, 403, 413, 415, 422, 503))
    async def preview_list(caller: Annotated[Caller, Depends(need(Perm.PREVIEW))],
                           request: Request, full: FullQ = None, delta: DeltaQ = None,
                           at: AtQ = None) -> m.PreviewOut:
        """How many observed devices per operator would change status if this list CSV
        were imported (as `POST /imports` would): imported into a copy of the registry,
        in a thread, and compared device by device; the registry does not change."""
        path, options = await spooled(request, caller.actor, full, delta, None)
        when = _at(at, node)
        try:
            out = await asyncio.to_thread(_list_preview_apart, node.registry.path, path,
                                          options, node.config.decision_config(), when)
        except RowError as exc:
            p = row_problem(exc)
            raise ApiError(422, p["detail"], params=[(i["param"], i["reason"])
                                                     for i in p["invalidParams"]]) from None
        except StoreError as exc:
            raise _busy(str(exc)) from None
        finally:
            path.unlink()
        return m.PreviewOut(**out)

    @app.get(f"{API}/imports", response_model=list[m.ImportJob], tags=imports,
             responses=_responses(401, 403))
    async def list_jobs(caller: Annotated[Caller, Depends(need(Perm.IMPORT))]
                        ) -> list[m.ImportJob]:
        """The import jobs this node ran since it started (the last 100)."""
        return [m.ImportJob(**j.view()) for j in reversed(jobs.jobs.values())]

    @app.get(f"{API}/imports/{{job_id}}", response_model=m.ImportJob, tags=imports,
             responses=_responses(401, 403, 404, 422))
    async def get_job(caller: Annotated[Caller, Depends(need(Perm.IMPORT))],
                      job_id: JobId
                      ) -> m.ImportJob:
        """An import's state: rows and bytes done, then its result or its error."""
        job = jobs.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no import job {job_id} (jobs are kept until a restart)")
        return m.ImportJob(**job.view())

    # -- audit ----------------------------------------------------------------------------

    audit: list[str | Enum] = ["audit"]

    @app.get(f"{API}/audit", response_model=m.AuditPage, tags=audit, responses=std)
    async def audit_log(caller: Annotated[Caller, Depends(need(Perm.AUDIT))],
                        request: Request,
                        after: Annotated[int, Query(ge=0, le=2**62,
                                                    description="the last seq seen")] = 0,
                        limit: int = _PAGE) -> m.AuditPage:
        """Audit records (every list change: who, when, why, evidence), oldest first."""
        rows = await queries.audit_page(registry(), after=after, limit=limit)
        # the summaries of pair changes name IMSIs: a page showing any is logged
        shown = {i for r in rows if isinstance(r["summary"], dict)
                 for i in (r["summary"].get(k) for k in _SUMMARY_IMSI_KEYS)
                 if isinstance(i, str)}
        if shown:
            logged(caller, request, "audit", imsis=len(shown))
        return m.AuditPage(items=[m.AuditRecord(**r) for r in rows],
                           next_after=rows[-1]["seq"] if len(rows) == limit else None)

    @app.get(f"{API}/audit/verify", response_model=m.AuditVerify, tags=audit, responses=std)
    async def audit_verify(
        caller: Annotated[Caller, Depends(need(Perm.AUDIT))],
        expect_head: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$",
                                                 description="the head hash recorded earlier"
                                                 )] = None,
    ) -> m.AuditVerify:
        """Check every link of the hash chain (``ok`` false names the first broken record);
        with ``expect_head``, also that the head is the one recorded elsewhere."""
        result = await registry().verify_audit()
        ok = result.ok and (expect_head is None or expect_head == result.head)
        problem_text = result.problem
        if result.ok and not ok:
            problem_text = (f"the head is {result.head}, not the expected {expect_head}: "
                            "records were rewritten or the trail is not the one recorded")
        return m.AuditVerify(ok=ok, records=result.records, head=result.head,
                             broken_seq=result.broken_seq, problem=problem_text,
                             expected_head=expect_head)

    # -- decisions, previews, peers -------------------------------------------------------

    @app.get(f"{API}/decision", response_model=m.DecisionOut, tags=_tag("decisions"),
             responses=std)
    async def decision(
        caller: Annotated[Caller, Depends(need(Perm.DECIDE))], request: Request,
        imei: Annotated[str, Query(pattern=m.IMEI_PATTERN)],
        imsi: Annotated[str | None, Query(pattern=m.IMSI_PATTERN)] = None,
        sv: Annotated[str | None, Query(pattern=m.SV_PATTERN)] = None,
        at: AtQ = None,
    ) -> m.DecisionOut:
        """The decision a check would get (``eir decide``): status, reason, rule, facts.
        Observes nothing, counts nothing."""
        if imsi is not None:
            own(caller, imsi)
        r = regime()
        when = _at(at, node)
        out = queries.explain(r, imei, imsi, sv, when)
        if caller.bound:
            out["facts"]["imsis_seen"] = None
        if imsi is not None:
            logged(caller, request, "decision", imei=normalize_imei(imei), imsis=1)
        return m.DecisionOut(**out)

    @app.post(f"{API}/preview/policy", response_model=m.PreviewOut, tags=_tag("decisions"),
              responses=std)
    async def preview(caller: Annotated[Caller, Depends(need(Perm.PREVIEW))],
                      body: m.PreviewBody) -> m.PreviewOut:
        """How many observed devices per operator would change status under these settings
        (``eir policy preview``), read in a thread with its own registry connections."""
        registry()
        try:
            new = from_mapping(body.config, node.config).validate()
        except ConfigError as exc:
            raise ApiError(422, f"config: {exc}", params=[("body.config", str(exc))]
                           ) from None
        when = _at(body.at, node, "body.at")
        old_dc, new_dc = node.config.decision_config(), new.decision_config()
        out = await asyncio.to_thread(_preview_apart, node.registry.path, old_dc, new_dc, when)
        return m.PreviewOut(**out)

    @app.get(f"{API}/peers", response_model=m.PeerList, tags=_tag("node"),
             responses=_responses(401, 403, 503))
    async def peers(caller: Annotated[Caller, Depends(need(Perm.PEERS))]) -> m.PeerList:
        """The Diameter peers the node reports (its metrics, as ``eir status`` reads them)."""
        try:
            if node.workers == 1:
                scrape = status.parse(await node.metrics_text(), "the node's metrics")
            elif node.config.metrics.enabled:
                url = default_url(node.config.metrics.listen)
                scrape = await asyncio.to_thread(status.scrape, url)
            else:
                raise _busy("with several workers the peers come from the supervisor's "
                            "metrics: set metrics.enabled = true")
        except status.StatusError as exc:
            raise _busy(str(exc)) from None
        return m.PeerList(items=[m.Peer(origin_host=p, connected=up)
                                 for p, up in sorted(status.peers(scrape).items())])

    return app


def _at(value: str | None, node: Node, where: str = "query.at") -> int:
    if value is None:
        return int(node.clock())
    try:
        return queries.parse_at(value)
    except ValueError as exc:
        raise ApiError(422, f"at: {exc}", params=[(where, str(exc))]) from None


def _preview_apart(db: Path, old: Any, new: Any, at: int) -> dict[str, Any]:
    """`queries.preview` on a registry connection of its own, in this thread: the node's
    shared reader is not held for the whole scan (its refresh loop polls through it)."""

    async def run() -> dict[str, Any]:
        reg = SqliteRegistry(db)
        await reg.open()
        try:
            return await queries.preview(reg, old, new, at)
        finally:
            await reg.close()

    return asyncio.run(run())


def _list_preview_apart(db: Path, csv: Path, options: dict[str, Any], dc: Any,
                        at: int) -> dict[str, Any]:
    """`queries.preview` of the lists as ``csv`` would make them: the registry copied
    (`sqlite_backup.backup`), the file imported into the copy (`import_csv`), and each
    observed device decided from both; the copy is removed."""

    async def run(copy: Path) -> dict[str, Any]:
        await asyncio.to_thread(sqlite_backup.backup, db, copy)
        async with SqliteRegistry(copy) as changed:
            await import_csv(changed, csv, **options)
            new = await changed.load_snapshot()
        async with SqliteRegistry(db) as reg:
            return await queries.preview(reg, dc, dc, at, new_snapshot=new)

    with tempfile.TemporaryDirectory(prefix=".preview.", dir=db.parent) as tmp:
        return asyncio.run(run(Path(tmp) / "preview.db"))


async def _receive(request: Request, path: Path, limit: int) -> None:
    """The body into ``path`` (0600), at most ``limit`` bytes (else 413)."""
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the upload is larger than admin.max_upload_bytes "
                                    f"({limit:,} bytes): import it with `eir registry import`")
            out.write(chunk)


class _BoundedBody:
    """At most ``limit`` bytes of a request body reach the app (`JSON_BODY_BYTES`): a
    Content-Length past it is answered 413 at once, unread; a chunked body that grows past
    it ends in a 413 where it is read. The ``streamed`` paths (list uploads) stream to a
    file and keep their own limit."""

    def __init__(self, app: Asgi, limit: int, streamed: frozenset[str]) -> None:
        self.app, self.limit, self.streamed = app, limit, streamed

    def _detail(self) -> str:
        return f"the body is larger than {self.limit:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.streamed:
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if length.isdigit() and int(length) > self.limit:
            await problem(413, self._detail())(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # FastAPI passes an HTTPException on: a problem
                    raise StarletteHTTPException(413, self._detail())
            return message

        await self.app(scope, bounded, send)


def _check_csv(path: Path) -> None:
    """A small file parsed whole, a large one's header: 422 naming the line and field."""
    try:
        with path.open("rb") as f:
            head = f.read(CHECK_INLINE_BYTES + 1)
        whole = len(head) <= CHECK_INLINE_BYTES
        text = head.decode("utf-8-sig") if whole else \
            head.split(b"\n", 1)[0].decode("utf-8-sig") + "\n"
        for _row in parse_csv(text.splitlines(keepends=True)):
            pass
    except CsvImportError as exc:
        p = row_problem(exc)
        raise ApiError(422, p["detail"], params=[(i["param"], i["reason"])
                                                 for i in p["invalidParams"]]) from None
    except UnicodeDecodeError as exc:
        raise ApiError(422, f"the file is not valid UTF-8 ({exc.reason}); nothing was "
                            "imported", params=[("body", "not UTF-8")]) from None


class AdminServer:
    """The API on its listener: tokens, access log and jobs, started and stopped with the
    node (`eir.app.EirApp`)."""

    def __init__(self, node: Node) -> None:
        c = node.config.admin
        self.tokens = TokenStore(c.tokens_file)
        try:
            self.tokens.load()
        except (OSError, TokenError) as exc:
            raise ConfigError(f"admin.tokens_file: {exc}") from None
        self.access = AccessLog(c.access_log or f"{node.config.registry.db}.access.log")
        try:
            self.access.open()
        except OSError as exc:
            raise ConfigError(f"admin.access_log: {exc}") from None
        self.jobs = Jobs(node.registry)
        self.app = create_app(node, self.tokens, self.access, self.jobs)
        try:
            self.http = HttpServer.listen("admin", c, self.app, reuse_port=node.workers > 1)
        except BaseException:
            self.access.close()
            raise

    @property
    def url(self) -> str:
        return self.http.url

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()
        await self.jobs.close()
        self.access.close()

