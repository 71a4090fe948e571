"""Newest-first reads whose cost follows the page, not the history.

The embedded MongoDB-protocol server (docs/design.md §9) reads every document of an
index range before it sorts and limits, walks a whole index for a sort or a hint,
scans the collection for a top-level ``$and``, and narrows a compound index by its
later fields only when a query names nothing else. So "the newest 24 with this
label" is read here as consecutive time ranges on an indexed time field, each sized
to hold about what is still needed (:func:`walk`, guided by ``imgflow.rates.History``),
the server gets only what one index serves (:func:`split`) and the rest is checked
client-side (:func:`matches`). Used by the dashboard, the CLI and the web views.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (a client without ``tz_aware`` returns naive ones)."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


#: A cursor: the (time, _id) of the last document of the previous page.
Cursor = tuple[datetime, str]

#: The first time range a page reads, in seconds; each next one is ``WIDEN`` times wider.
FIRST_SPAN = 4.0
WIDEN = 4.0
#: Ranges read before the rest is read at once (~4 s x 4^14: eight years back).
MAX_STEPS = 14


#: Which of two bounds of the same kind is the tighter one.
_TIGHTER = {"$gte": max, "$gt": max, "$lte": min, "$lt": min}


def merge(*clauses: dict[str, Any]) -> dict[str, Any]:
    """All ``clauses`` in one flat filter, bounds on the same field combined into the tighter.

    The embedded server scans the whole collection for a top-level ``$and`` (measured: 10x
    a flat filter at 6,000 images, growing with them) but serves a flat one from an index,
    so conditions are merged field by field; ``$and`` is left only for two equalities on
    one field that cannot merge.
    """
    flat: dict[str, Any] = {}
    rest: list[dict[str, Any]] = []
    for clause in clauses:
        for field, cond in clause.items():
            if field not in flat:
                flat[field] = dict(cond) if _operators(cond) else cond
            elif _operators(cond) and _operators(flat[field]):
                ops = flat[field]
                for op, value in cond.items():
                    if op in ops and op in _TIGHTER:
                        ops[op] = _TIGHTER[op](ops[op], value)
                    elif op in ops and ops[op] != value:
                        rest.append({field: {op: value}})
                    else:
                        ops[op] = value
            elif flat[field] != cond:
                rest.append({field: cond})
    return {**flat, "$and": rest} if rest else flat


def _operators(cond: Any) -> bool:
    return isinstance(cond, dict) and bool(cond) and all(str(k).startswith("$") for k in cond)


#: Back in time from "now", in epoch seconds, to where about n results lie (``rates.History.back``).
Guide = Callable[[float, float], float | None]


def utc_now() -> datetime:
    return datetime.now(UTC)


def walk(
    query: dict[str, Any],
    need: int,
    read: Callable[[dict[str, Any]], int],
    *,
    field: str,
    top: datetime,
    open_above: bool = False,
    floor: datetime | None = None,
    guide: Guide | None = None,
) -> None:
    """Call ``read`` on consecutive time ranges of ``field`` back from ``top`` until it has
    returned ``need`` matches in all or the ranges pass ``floor`` (the oldest stored time).

    The server reads a whole index range whatever the limit (docs/design.md §9), so each
    range is sized to hold about what is still needed: ``guide`` says where that many
    results (of any filter) lie; after a range with matches, the share of results that
    matched sizes the next one. Without a guide (or past the intervals it keeps) the
    ranges grow by time, ``FIRST_SPAN`` then ``WIDEN`` times wider each.
    """
    since = (query.get(field) or {}).get("$gte") if isinstance(query.get(field), dict) else None
    if since is not None and (floor is None or since > floor):
        floor = since  # a time filter: nothing older matches
    got, seen, want, span, start = 0, 0.0, float(need), FIRST_SPAN, top
    upper: dict[str, Any] = {} if open_above else {"$lt": top}
    for step in range(MAX_STEPS + 1):
        if got >= need:
            return
        guided = guide(top.timestamp(), want) if guide is not None else None
        if guided is None:  # by time: at least as far again as the ranges read so far
            span = max(span, (start - top).total_seconds())
        low = datetime.fromtimestamp(guided, UTC) if guided is not None else top - timedelta(seconds=span)
        low = min(low, top - timedelta(milliseconds=1))
        last = (floor is not None and low <= floor) or step == MAX_STEPS
        bounds = dict(upper) if last else {**upper, "$gte": low}
        matched = read(merge(query, {field: bounds}) if bounds else query)
        got += matched
        if last:
            return
        upper, top = {"$lt": low}, low
        if guided is not None:
            seen += want
            # Sized by the matches per result so far, at most WIDEN times the last range;
            # a range without matches says nothing: WIDEN times (results come in batches).
            estimate = 1.25 * (need - got) * seen / got if matched else want * WIDEN
            want = max(1.0, min(want * WIDEN, estimate))
        else:
            span *= WIDEN


def newest(
    collection,
    query: dict[str, Any],
    limit: int,
    *,
    field: str,
    after: Cursor | None = None,
    floor: datetime | None = None,
    now: datetime | None = None,
    projection: dict[str, Any] | None = None,
    guide: Guide | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` documents matching ``query``, newest by ``field`` first, then by ``_id``.

    Keyset pagination: ``after`` is the previous page's last (time, _id). A sort with
    a limit costs the server the whole index (docs/design.md §9), so this reads time
    ranges on the indexed ``field`` instead, each sized by :func:`walk` to hold about
    what the page still needs; the server gets only what one index serves
    (:func:`split`), the rest is checked here. The cost follows the page, not the history.
    """
    lead, rest = split(query, field)
    if projection is not None and rest:
        projection = {**projection, **dict.fromkeys(rest, 1)}
    found: list[dict[str, Any]] = []
    order = [(field, -1), ("_id", 1)]

    def keep(docs: Any) -> list[dict[str, Any]]:
        return [d for d in docs if matches(d, rest)]

    if after is not None:  # the rest of the previous page's time (a batch shares one time)
        ties = collection.find({field: after[0]}, projection)
        found.extend(sorted((d for d in keep(ties) if d["_id"] > after[1] and matches(d, lead)), key=_id_of))
        del found[limit:]
        top = after[0]
    else:
        top = (now or utc_now()) + timedelta(seconds=FIRST_SPAN)

    def read(q: dict[str, Any]) -> int:
        if rest:  # what the server cannot check decides, so the range is read whole
            docs = sorted(
                keep(collection.find(q, projection)), key=lambda d: (-_ms_of(_get(d, field)), d["_id"])
            )
            docs = docs[: limit - len(found)]
        else:
            docs = list(collection.find(q, projection).sort(order).limit(limit - len(found)))
        found.extend(docs)
        return len(docs)

    # Open above on the first page: a result stored by a worker whose clock runs ahead counts.
    walk(lead, limit - len(found), read, field=field, top=top, open_above=after is None, floor=floor,
         guide=guide)  # fmt: skip
    return found[:limit]


def _id_of(doc: dict[str, Any]) -> Any:
    return doc["_id"]


def _ms_of(at: datetime) -> float:
    return as_utc(at).timestamp()  # type: ignore[union-attr]


#: Equality fields that lead an index ending in the time field (``imgflow.storage.INDEXES``).
LEADS = (("elabel",), ("model", "model_version"), ("source",))


def split(query: dict[str, Any], field: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``query`` as (what one index serves, the rest): the first of ``LEADS`` present with
    the range on ``field``, and every other condition.

    The server narrows a compound index by its later fields only when the query names
    nothing else: with a third condition it reads every document of the label instead of
    the label's last seconds (measured: 7x at 6,000 images, growing with history). So the
    server gets the index's fields and the rest is checked by :func:`matches`.
    """
    lead_fields: tuple[str, ...] = ()
    for fields in LEADS:
        if all(f in query and not _operators(query[f]) for f in fields):
            lead_fields = fields
            break
    lead = {f: query[f] for f in lead_fields}
    if field in query:
        lead[field] = query[field]
    return lead, {k: v for k, v in query.items() if k not in lead}


_COMPARE = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    """Whether ``doc`` meets ``query``: flat fields with equality, comparisons, ``$in``,
    ``$nin`` and ``$exists`` (what :func:`image_filter` writes); a missing field is None."""
    for key, cond in query.items():
        if key == "$and":
            if not all(matches(doc, c) for c in cond):
                return False
            continue
        value = _get(doc, key)
        if not _operators(cond):
            if value != cond:
                return False
            continue
        for op, arg in cond.items():
            if op == "$exists":
                if (_get(doc, key, _MISSING) is not _MISSING) != bool(arg):
                    return False
            elif op in _COMPARE:
                if not _COMPARE[op](_norm(value), _norm(arg)):
                    return False
            else:
                raise ValueError(f"cannot check {op} outside the server: {key}: {cond}")
    return True


_MISSING = object()


def _get(doc: dict[str, Any], path: str, default: Any = None) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def _norm(value: Any) -> Any:
    """Times compare as aware UTC (a client without ``tz_aware`` reads naive ones)."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


def cursor_of(doc: dict[str, Any], field: str = "updated_at") -> Cursor:
    return (_get(doc, field), doc["_id"])
