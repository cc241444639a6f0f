"""Schema versions of the records stages hand on, and the one check every reader applies.

Each record a stage writes carries ``"schema": "edgehydra.<kind>/<version>"``; every reader validates the
record it opens with :func:`validate`, which refuses, in one line naming the file, a record of another kind
or version, or one missing a key the readers use. Records written before versions were stamped (no
``schema`` key) are read as version 1 of their kind: their keys are the same.
"""
from __future__ import annotations

from edgehydra.errors import BadInputError

# kind -> (current version, the keys every reader of it relies on)
KINDS = {
    "program": (1, ("config", "recipe", "size")),
    "artifact": (1, ("artifact", "target", "precision", "size", "sha256", "outputs", "model_config")),
    "export": (1, ("artifacts", "data")),
    "measurement": (1, ("device", "runner", "sha256", "size", "precision")),
    "op_profile": (1, ("profile", "sha256", "size", "precision", "by_class")),
    "verdict": (1, ("device", "verdict")),
}


def schema(kind: str) -> str:
    return f"edgehydra.{kind}/{KINDS[kind][0]}"


def stamp(kind: str, rec: dict) -> dict:
    """``rec`` with its schema as the first key (what the writer of that kind writes)."""
    return {"schema": schema(kind), **{k: v for k, v in rec.items() if k != "schema"}}


def validate(kind: str, rec, where) -> dict:
    """``rec`` if it is a current ``kind`` record with the keys its readers use, else a one-line BadInputError
    naming ``where`` (the file). Never rewrites the record."""
    if not isinstance(rec, dict):
        raise BadInputError(f"{where}: not an edgehydra {kind} record (a JSON object expected)")
    got = rec.get("schema", schema(kind))  # unstamped: written before versions, read as v1
    if got != schema(kind):
        raise BadInputError(f"{where}: schema {got!r}, this edgehydra reads {schema(kind)!r}; re-create it with this "
                            f"version")
    missing = [k for k in KINDS[kind][1] if k not in rec]
    if missing:
        raise BadInputError(f"{where}: {kind} record lacks {', '.join(missing)}; re-create it")
    return rec
