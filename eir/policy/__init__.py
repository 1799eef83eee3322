"""Equipment policy: the rules (pure) and the registry they read.

- `eir.policy.model`: statuses, reasons, decisions, facts, IMEI/IMSI helpers.
- `eir.policy.engine`: `decide(facts, config)`, the POLICY.md rule order.
- `eir.policy.registry`: the storage protocol and the hot-path `Snapshot`.
- `eir.policy.sqlite`: the SQLite backend; `eir.policy.csvio`: CSV import/export.

This package never imports `eir.diameter` or `eir.s13` (DESIGN.md section 3),
and importing it does not import a storage backend.
"""
